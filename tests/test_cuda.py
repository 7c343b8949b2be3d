"""The CUDA backend against float64 references (the CPU's semantics) and PyTorch, in float32, float16 and
bfloat16, over odd shapes and every mask kind; outputs poisoned with NaN to catch unwritten elements.
Skips without a GPU (tests/test_tensor.py covers the device handle's CPU side and the no-GPU errors)."""
import threading

import numpy as np
import pytest

import coreformer as cf
from coreformer import ops

import reference as ref
from conftest import assert_close, randn

pytestmark = pytest.mark.skipif(cf.info()["cuda_devices"] == 0, reason="no CUDA device")

DTYPES = ["float32", "float16", "bfloat16"]
# float32: the 1e-5 against float64; 16-bit types: their rounding of inputs and output (2e-2)
TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 2e-2}


def gpu(a, dtype="float32"):
    return cf.tensor(a, device="cuda", dtype=dtype)


def seen(a, dtype):
    """The values the GPU computes with: a rounded to dtype, back in float32."""
    return cf.tensor(np.asarray(a, np.float32), dtype=dtype).numpy().astype(np.float32)


def poison(shape, dtype):
    return gpu(np.full(shape, np.nan, np.float32), dtype)


def close(got, want, dtype, scale=1.0):
    t = TOL[dtype] * scale
    assert_close(got.numpy().astype(np.float64), want, rtol=t, atol_scale=t)


@pytest.fixture(params=["cublas", "kernels"])
def gemm_backend(request):
    """Runs a test with linear on cuBLAS (where it loads) and on coreformer's own GEMM kernels."""
    want = request.param == "cublas"
    if want and not cf.info()["cuda_gemm"].startswith("cublas"):
        pytest.skip(f"cuBLAS not in use: {cf.info()['cuda_gemm']}")
    before = cf._core._set_cublas(want)
    yield request.param
    cf._core._set_cublas(before)


def test_info_names_the_gemm():
    assert cf.info()["cuda_gemm"].startswith(("cublas: ", "coreformer kernels ("))


def test_freed_gpu_memory_is_reused_and_can_be_emptied():
    torch = pytest.importorskip("torch")
    a = gpu(np.ones(1000, np.float32))
    ta = torch.from_dlpack(a)
    pa = ta.data_ptr()
    del ta, a  # the block goes to coreformer's cache, not to cudaFree
    b = gpu(np.arange(1000, dtype=np.float32))  # same size class: the same block, every element written
    tb = torch.from_dlpack(b)
    assert tb.data_ptr() == pa
    np.testing.assert_array_equal(b.numpy(), np.arange(1000))
    del tb, b
    assert cf.empty_cache() >= 4000
    assert cf.empty_cache() == 0


def test_roundtrip_and_to():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    for dt in DTYPES + ["int32", "int64", "bool"]:
        t = gpu(a > 1 if dt == "bool" else a, dt)
        assert t.device == "cuda:0" and t.dtype == dt
        want = cf.tensor(a > 1 if dt == "bool" else a, dtype=dt).numpy()
        np.testing.assert_array_equal(t.numpy(), want)
        np.testing.assert_array_equal(t.to("cpu").numpy(), want)
    t = gpu(a)
    assert t.to("cuda") is t
    np.testing.assert_array_equal(t.to(dtype="float16").numpy(), a.astype(np.float16))
    np.testing.assert_array_equal(t.to("cpu", "float16").numpy(), a.astype(np.float16))
    np.testing.assert_array_equal(t.reshape(6, 4).numpy(), a.reshape(6, 4))
    assert t.__dlpack_device__() == (2, 0)


def test_dlpack_with_torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    t = gpu(np.arange(6, dtype=np.float32))
    tt = torch.from_dlpack(t)
    assert tt.is_cuda and tt.tolist() == list(range(6))
    src = torch.arange(12, dtype=torch.bfloat16, device="cuda").reshape(3, 4)
    c = cf.from_dlpack(src)
    assert c.device == "cuda:0" and c.dtype == "bfloat16"
    src.mul_(2)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(c.numpy(), (np.arange(12) * 2).reshape(3, 4))
    np.testing.assert_array_equal(cf.from_dlpack(src.T).numpy(), (np.arange(12) * 2).reshape(3, 4).T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (7, 63, 65), (64, 64, 64), (65, 1000, 7), (130, 300, 513), (1, 768, 1000)])
@pytest.mark.parametrize("act", [None, "relu", "gelu", "gelu_tanh"])
def test_linear(dtype, M, K, N, act, rng, gemm_backend):
    x, w, b, r = randn(rng, M, K), randn(rng, N, K, scale=K ** -0.5), randn(rng, N), randn(rng, M, N)
    out = poison((M, N), dtype)
    got = ops.linear(gpu(x, dtype), gpu(w, dtype), gpu(b, dtype), act, residual=gpu(r, dtype), out=out)
    assert got is out and got.dtype == dtype
    close(got, ref.linear(seen(x, dtype), seen(w, dtype), seen(b, dtype), act, seen(r, dtype)), dtype)
    plain = ops.linear(gpu(x, dtype), gpu(w, dtype))
    close(plain, ref.linear(seen(x, dtype), seen(w, dtype)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H,Sq,Sk,D,Dv", [(1, 1, 1, 1, 1, 1), (2, 3, 7, 63, 65, 7), (1, 2, 65, 65, 64, 64),
                                            (2, 1, 100, 1000, 128, 128), (1, 1, 33, 40, 200, 256), (1, 12, 128, 128, 64, 64),
                                            (2, 2, 130, 70, 64, 64), (1, 3, 1, 77, 128, 128), (2, 3, 50, 77, 32, 32)])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa(dtype, B, H, Sq, Sk, D, Dv, mask, causal, rng):
    q, k, v = randn(rng, B, H, Sq, D), randn(rng, B, H, Sk, D), randn(rng, B, H, Sk, Dv)
    m = None
    if mask == "bool":
        m = rng.random((Sq, Sk)) > 0.3
        m[0] = False  # a row with no key: zeros
    elif mask == "float":
        m = randn(rng, B, 1, Sq, Sk)
        m[..., Sq // 2, :] = -np.inf  # a row with no key: zeros
    out = poison((B, H, Sq, Dv), dtype)
    got = ops.scaled_dot_product_attention(gpu(q, dtype), gpu(k, dtype), gpu(v, dtype),
                                           None if m is None else gpu(m, "bool" if mask == "bool" else "float32"),
                                           is_causal=causal, scale=0.3 if mask == "float" else None, out=out)
    want = ref.sdpa(seen(q, dtype), seen(k, dtype), seen(v, dtype), m, causal, 0.3 if mask == "float" else None)
    close(got, want, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("kind", ["self", "self causal", "cross"])
def test_sdpa_tensor_cores_on_heads_split_from_a_packed_qkv(dtype, D, kind, rng):
    """multi_head_attention without masks hands the tensor-core kernel q, k and v as strided views of one
    packed projection (row stride 3E) and merges the heads in place: lengths not a multiple of 64."""
    B, Sq, Sk, H = 2, 150, 150 if kind != "cross" else 77, 2
    E = H * D
    x = randn(rng, B, Sq, E)
    kv = x if kind != "cross" else randn(rng, B, Sk, E)
    iw, ib, ow, ob = randn(rng, 3 * E, E, scale=E ** -0.5), randn(rng, 3 * E), randn(rng, E, E, scale=E ** -0.5), randn(rng, E)
    tx = gpu(x, dtype)
    tk = tx if kind != "cross" else gpu(kv, dtype)
    causal = kind == "self causal"
    got = ops.multi_head_attention(tx, tk, tk, H, gpu(iw, dtype), gpu(ib, dtype), gpu(ow, dtype), gpu(ob, dtype),
                                   is_causal=causal)
    s = lambda a: seen(a, dtype)
    want = ref.mha(s(x), s(kv), s(kv), H, s(iw), s(ib), s(ow), s(ob), None, None, is_causal=causal)
    close(got, want, dtype, scale=2.0)


def test_sdpa_matches_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    import torch.nn.functional as F
    g = torch.Generator(device="cuda").manual_seed(0)
    for dt, tdt in (("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        q, k, v = (torch.randn(2, 4, 96, 64, device="cuda", dtype=tdt, generator=g) for _ in range(3))
        for causal in (False, True):
            want = F.scaled_dot_product_attention(q, k, v, is_causal=causal).float().cpu().numpy()
            got = ops.scaled_dot_product_attention(cf.from_dlpack(q), cf.from_dlpack(k), cf.from_dlpack(v),
                                                   is_causal=causal)
            close(got, want.astype(np.float64), dt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((1,), -1), ((7, 63), -1), ((3, 1000), -1), ((65, 5), 0), ((2, 7, 3), 1),
                                        ((5, 8), -1), ((9, 128), -1), ((6, 768), -1), ((4, 2048), -1)])
def test_softmax(dtype, shape, axis, rng):
    x = randn(rng, *shape, scale=3.0)
    x.reshape(-1)[:1] = -np.inf
    got = ops.softmax(gpu(x, dtype), axis=axis, out=poison(shape, dtype))
    close(got, ref.softmax(seen(x, dtype), axis=axis), dtype)
    for n in (5, 64):  # rows of -inf only, in the block kernel and in the warp kernel
        neg = np.full((2, n), -np.inf, np.float32)
        np.testing.assert_array_equal(ops.softmax(gpu(neg, dtype)).numpy(), 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", [(1, 1), (7, 7), (63, 768), (2, 1000), (3, 4097), (5, 16), (9, 64), (4, 2048)])
def test_layer_norm(dtype, rows, n, rng):
    x, r, w, b = randn(rng, rows, n, scale=2.0), randn(rng, rows, n), randn(rng, n), randn(rng, n)
    y, s = ops.layer_norm(gpu(x, dtype), gpu(w, dtype), gpu(b, dtype), 1e-5, gpu(r, dtype), return_sum=True,
                          out=poison((rows, n), dtype))
    want_y, want_s = ref.layer_norm(seen(x, dtype), seen(w, dtype), seen(b, dtype), 1e-5, seen(r, dtype))
    close(y, want_y, dtype, scale=2.0)
    close(s, want_s, dtype)
    close(ops.layer_norm(gpu(x, dtype)), ref.layer_norm(seen(x, dtype))[0], dtype, scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_and_elementwise_kernels_on_unaligned_views(dtype, rng):
    """Views that start 2 or 4 bytes past a 16-byte boundary take the one-element-at-a-time kernels."""
    torch = pytest.importorskip("torch")
    tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    base = torch.randn(1 + 6 * 64, device="cuda", dtype=tdt)
    x = cf.from_dlpack(base[1:]).reshape(6, 64)
    xs = x.numpy().astype(np.float32)
    close(ops.gelu(x), ref.gelu(xs), dtype)
    close(ops.softmax(x), ref.softmax(xs, axis=-1), dtype)
    close(ops.layer_norm(x), ref.layer_norm(xs)[0], dtype, scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activations(dtype, rng):
    x = np.concatenate([randn(rng, 1000, scale=4.0), [0.0, -30.0, 30.0]]).astype(np.float32)
    for fn, want in ((lambda t: ops.gelu(t, out=poison(x.shape, dtype)), ref.gelu),
                     (lambda t: ops.gelu(t, "tanh"), ref.gelu_tanh),
                     (ops.relu, lambda a: np.maximum(ref.f64(a), 0))):
        close(fn(gpu(x, dtype)), want(seen(x, dtype)), dtype)
    inf = gpu(np.array([np.inf, -np.inf], np.float32), dtype)
    for approximate in ("none", "tanh"):
        np.testing.assert_array_equal(ops.gelu(inf, approximate).numpy(), [np.inf, 0.0])
    assert np.isnan(ops.relu(gpu(np.array([np.nan], np.float32), dtype)).numpy()).all()
    assert np.isnan(ops.gelu(gpu(np.array([np.nan], np.float32), dtype)).numpy()).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7, 65), (3, 50257), (2, 3, 1000)])
def test_argmax(dtype, shape, rng):
    x = seen(randn(rng, *shape), dtype)
    x.reshape(-1)[::7] = x.reshape(-1)[0]  # ties: the first wins
    got = ops.argmax(gpu(x, dtype))
    assert got.device == "cuda:0" and got.dtype == "int64"
    np.testing.assert_array_equal(got.numpy(), np.argmax(x, axis=-1))
    y = np.array([[np.nan, 1, np.nan], [1, 2, 2]], np.float32)
    np.testing.assert_array_equal(ops.argmax(gpu(y, dtype)).numpy(), [0, 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("id_dtype", ["int32", "int64"])
def test_embedding(dtype, id_dtype, rng):
    table = randn(rng, 1000, 65)
    ids = rng.integers(0, 1000, (7, 63))
    got = ops.embedding(gpu(ids, id_dtype), gpu(table, dtype))
    np.testing.assert_array_equal(got.numpy(), seen(table, dtype)[ids])
    for bad in (-1, 1000):
        ids2 = ids.copy()
        ids2[3, 5] = bad
        with pytest.raises(IndexError, match=f"ids\\[194\\] \\(flat index\\) is {bad}"):
            ops.embedding(gpu(ids2, id_dtype), gpu(table, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_kind", [None, "2d", "3d"])
def test_additive_attention(dtype, mask_kind, rng):
    B, Sq, Sk, Dq, Dk, Dv, A = 2, 7, 65, 16, 12, 9, 33
    q, k, v = randn(rng, B, Sq, Dq), randn(rng, B, Sk, Dk), randn(rng, B, Sk, Dv)
    wq, wk, vv = randn(rng, A, Dq, scale=0.3), randn(rng, A, Dk, scale=0.3), randn(rng, A)
    m = None
    if mask_kind == "2d":
        m = rng.random((B, Sk)) > 0.3
    elif mask_kind == "3d":
        m = rng.random((B, Sq, Sk)) > 0.3
        m[0, 0] = False
    gq, gk, gv, gwq, gwk, gvv = (gpu(a, dtype) for a in (q, k, v, wq, wk, vv))
    o, w = ops.additive_attention(gq, gk, gv, gwq, gwk, gvv, mask=None if m is None else gpu(m, "bool"),
                                  return_weights=True)
    sq_, sk_, sv_, swq, swk, svv = (seen(a, dtype) for a in (q, k, v, wq, wk, vv))
    ro, rw = ref.additive(sq_, sk_, sv_, swq, swk, svv, m)
    close(o, ro, dtype, scale=2.0)
    close(w, rw, dtype, scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["self", "cross", "kv"])
def test_multi_head_attention(dtype, kind, rng, gemm_backend):
    B, Sq, Sk, E, H = 2, 7, 65 if kind != "self" else 7, 64, 4
    x = randn(rng, B, Sq, E)
    kv = randn(rng, B, Sk, E) if kind != "self" else x
    val = randn(rng, B, Sk, E) if kind == "cross" else kv
    iw, ib, ow, ob = randn(rng, 3 * E, E, scale=E ** -0.5), randn(rng, 3 * E), randn(rng, E, E, scale=E ** -0.5), randn(rng, E)
    kpm = rng.random((B, Sk)) < 0.2
    am = rng.random((Sq, Sk)) < 0.2
    tx = gpu(x, dtype)
    tk = tx if kind == "self" else gpu(kv, dtype)
    tv = tk if kind != "cross" else gpu(val, dtype)
    got = ops.multi_head_attention(tx, tk, tv, H, gpu(iw, dtype), gpu(ib, dtype), gpu(ow, dtype), gpu(ob, dtype),
                                   attn_mask=gpu(am, "bool"), key_padding_mask=gpu(kpm, "bool"),
                                   is_causal=kind == "self")
    s = lambda a: seen(a, dtype)
    want = ref.mha(s(x), s(kv), s(val), H, s(iw), s(ib), s(ow), s(ob), am, kpm, is_causal=kind == "self")
    close(got, want, dtype, scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("mode", ["plain", "masks", "cu_seqlens", "cache"])
def test_transformer_encoder_layer(dtype, norm_first, mode, rng, gemm_backend):
    # the GPU's fused layer against the CPU's (itself tested against float64 and torch) on the same
    # rounded values: post- and pre-LN, masks, packed sequences, a KV cache written in place
    E, H, F, B, S = 64, 4, 96, 2, 7
    shapes = [(3 * E, E), (3 * E,), (E, E), (E,), (F, E), (F,), (E, F), (E,), (E,), (E,), (E,), (E,)]
    params = [seen(randn(rng, *sh, scale=sh[-1] ** -0.5 if len(sh) == 2 else 0.3) + (1.0 if i in (8, 10) else 0.0),
                   dtype) for i, sh in enumerate(shapes)]
    x = seen(randn(rng, B, S, E), dtype)
    kw = {"activation": "gelu", "norm_first": norm_first, "eps": (1e-5, 1e-6)}
    cpu_kw, gpu_kw = dict(kw), dict(kw)
    if mode == "masks":
        kpm = rng.random((B, S)) < 0.3
        am = rng.random((S, S)) < 0.2
        cpu_kw.update(key_padding_mask=kpm, attn_mask=am, is_causal=True)
        gpu_kw.update(key_padding_mask=gpu(kpm, "bool"), attn_mask=gpu(am, "bool"), is_causal=True)
    elif mode == "cu_seqlens":
        x = x.reshape(B * S, E)
        cu = np.array([0, 3, 3, 10, 14])
        cpu_kw.update(cu_seqlens=cu)
        gpu_kw.update(cu_seqlens=cu)  # host metadata on either device
    elif mode == "cache":
        Dh, cap, past = E // H, 16, 5
        kc, vc = (seen(randn(rng, B, H, cap, Dh), dtype) for _ in range(2))
        gk, gv = gpu(kc, dtype), gpu(vc, dtype)
        cpu_kw.update(k_cache=kc, v_cache=vc, cache_length=past, is_causal=True)
        gpu_kw.update(k_cache=gk, v_cache=gv, cache_length=past, is_causal=True)
    want = ops.transformer_encoder_layer(x, H, *params, **cpu_kw)
    got = ops.transformer_encoder_layer(gpu(x, dtype), H, *(gpu(p, dtype) for p in params), **gpu_kw)
    close(got, want.astype(np.float64), dtype, scale=4.0)
    if mode == "cache":
        close(gk, kc.astype(np.float64), dtype)
        close(gv, vc.astype(np.float64), dtype)
    # in place: out=x
    gx = gpu(x, dtype)
    same = ops.transformer_encoder_layer(gx, H, *(gpu(p, dtype) for p in params),
                                         **{k: v for k, v in gpu_kw.items() if k not in ("k_cache", "v_cache",
                                                                                         "cache_length")},
                                         out=gx)
    assert same is gx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("cached", [False, True])
def test_transformer_decoder_layer(dtype, norm_first, cached, rng, gemm_backend):
    # the GPU's fused decoder layer against the CPU's (tested against torch) on the same rounded values
    E, H, F, B, T, Sm = 64, 4, 96, 2, 5, 9
    shapes = [(3 * E, E), (3 * E,), (E, E), (E,)] * 2 + [(F, E), (F,), (E, F), (E,)] + [(E,)] * 6
    params = [seen(randn(rng, *sh, scale=sh[-1] ** -0.5 if len(sh) == 2 else 0.3) + (1.0 if i in (12, 14, 16) else 0.0),
                   dtype) for i, sh in enumerate(shapes)]
    x, mem = seen(randn(rng, B, T, E), dtype), seen(randn(rng, B, Sm, E), dtype)
    mkp = rng.random((B, Sm)) < 0.3
    kw = {"activation": "gelu", "norm_first": norm_first, "tgt_is_causal": True}
    cpu_kw, gpu_kw = dict(kw, memory_key_padding_mask=mkp), dict(kw, memory_key_padding_mask=gpu(mkp, "bool"))
    if cached:
        Dh, cap, past = E // H, 12, 3
        kc, vc = (seen(randn(rng, B, H, cap, Dh), dtype) for _ in range(2))
        mk, mv = np.zeros((2, B, H, Sm, Dh), np.float32)
        g = [gpu(a, dtype) for a in (kc, vc, mk, mv)]
        cpu_kw.update(k_cache=kc, v_cache=vc, cache_length=past, memory_k=mk, memory_v=mv)
        gpu_kw.update(k_cache=g[0], v_cache=g[1], cache_length=past, memory_k=g[2], memory_v=g[3])
    want = ops.transformer_decoder_layer(x, mem, H, *params, **cpu_kw)
    got = ops.transformer_decoder_layer(gpu(x, dtype), gpu(mem, dtype), H, *(gpu(p, dtype) for p in params), **gpu_kw)
    close(got, want.astype(np.float64), dtype, scale=4.0)
    if cached:
        for gt, ct in zip(g, (kc, vc, mk, mv)):
            close(gt, ct.astype(np.float64), dtype)
        # the next step reads memory's keys/values from the cache (memory not passed)
        x2 = seen(randn(rng, B, 1, E), dtype)
        cpu_kw.update(cache_length=past + T, memory_length=Sm)
        gpu_kw.update(cache_length=past + T, memory_length=Sm)
        want = ops.transformer_decoder_layer(x2, None, H, *params, **cpu_kw)
        got = ops.transformer_decoder_layer(gpu(x2, dtype), None, H, *(gpu(p, dtype) for p in params), **gpu_kw)
        close(got, want.astype(np.float64), dtype, scale=4.0)


def test_mixing_devices_and_dtypes_are_clear_errors(rng):
    x, w = randn(rng, 4, 8), randn(rng, 5, 8)
    with pytest.raises(ValueError, match="different devices"):
        ops.linear(gpu(x), w)
    with pytest.raises(ValueError, match="different devices"):
        ops.linear(x, gpu(w))
    with pytest.raises(TypeError, match="weight is float16"):
        ops.linear(gpu(x), gpu(w, "float16"))
    with pytest.raises(ValueError, match="PackedWeight"):
        ops.linear(gpu(x), ops.pack_weight(w))
    with pytest.raises(ValueError, match="PackedWeight"):
        e = gpu(randn(rng, 1, 3, 8))
        z = gpu(np.zeros((8, 8), np.float32))
        ops.transformer_encoder_layer(e, 2, ops.pack_weight(np.zeros((24, 8), np.float32)), None, z, None, z, None, z,
                                      None, None, None, None, None)
    with pytest.raises(ValueError, match="head dimensions up to 256"):
        q = gpu(randn(rng, 1, 2, 300))
        ops.scaled_dot_product_attention(q, q, q)
    with pytest.raises(TypeError, match="out must be a coreformer.Tensor"):
        ops.relu(gpu(x), out=np.empty_like(x))


def test_threads_share_the_gpu(rng, gemm_backend):
    x, w = randn(rng, 64, 256), randn(rng, 128, 256)
    tx, tw = gpu(x), gpu(w)
    want = ops.linear(tx, tw).numpy()
    results, errors = [None] * 8, []

    def work(i):
        try:
            for _ in range(20):
                results[i] = ops.linear(tx, tw).numpy()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_array_equal(r, want)


def test_gpu_bench_runs(capsys):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    from coreformer import cli
    assert cli.main(["bench", "--device", "cuda", "--quick", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "attention" in out and "TFLOP/s" in out and "of the copy rate" in out
    cf.synchronize()
