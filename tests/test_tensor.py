"""coreformer.Tensor on the CPU: construction, dtypes, conversions, DLPack both ways, ops called with
tensors, and the errors -- everything of the device handle that runs without a GPU (the GPU side is
tests/test_cuda.py)."""
import gc

import numpy as np
import pytest

import coreformer as cf
from coreformer import ops

import reference as ref
from conftest import assert_close, randn

NO_GPU = cf.info()["cuda_devices"] == 0


def bf16_round(a):
    """float32 -> bfloat16 (round to nearest even) -> float32, in numpy."""
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    out = r.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(a), np.float32(np.nan), out)


def special_values():
    rng = np.random.default_rng(0)
    v = np.concatenate([
        rng.standard_normal(500) * 10.0 ** rng.integers(-10, 6, 500),
        [0.0, -0.0, 1.0, -1.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-9,
         np.inf, -np.inf, 3.4e38, 1.17549435e-38, 1e-40],
    ]).astype(np.float32)
    return v


@pytest.mark.parametrize("data,dtype", [
    (np.arange(6, dtype=np.float32).reshape(2, 3), "float32"),
    (np.arange(6, dtype=np.float64).reshape(3, 2), "float32"),  # float64 becomes float32
    (np.arange(4, dtype=np.float16), "float16"),
    (np.arange(5, dtype=np.int32), "int32"),
    (np.arange(5, dtype=np.int64), "int64"),
    (np.arange(5, dtype=np.int16), "int64"),
    (np.array([True, False, True]), "bool"),
    (np.arange(3, dtype=np.uint8), "uint8"),
    (np.arange(3, dtype=np.int8), "int8"),
    (np.float32(2.5), "float32"),  # 0-d
    (np.zeros((0, 4), np.float32), "float32"),
    ([[1, 2], [3, 4]], "int64"),
])
def test_tensor_from_numpy(data, dtype):
    t = cf.tensor(data)
    a = np.asarray(data)
    assert isinstance(t, cf.Tensor)
    assert t.shape == a.shape and t.ndim == a.ndim and t.size == a.size
    assert t.dtype == dtype and t.device == "cpu"
    back = t.numpy()
    assert back.dtype == np.dtype(dtype) and back.shape == a.shape
    np.testing.assert_array_equal(back, a.astype(dtype))
    assert t.nbytes == back.nbytes
    assert repr(t) == f"Tensor(shape={a.shape}, dtype={dtype}, device='cpu')"
    np.testing.assert_array_equal(np.asarray(t), back)


def test_float16_conversion_matches_numpy():
    v = special_values()
    np.testing.assert_array_equal(cf.tensor(v, dtype="float16").numpy(), v.astype(np.float16))
    h = v.astype(np.float16)
    np.testing.assert_array_equal(cf.tensor(h).to(dtype="float32").numpy(), h.astype(np.float32))
    nan = cf.tensor(np.array([np.nan], np.float32), dtype="float16").numpy()
    assert np.isnan(nan).all()


def test_bfloat16_conversion_rounds_to_nearest_even():
    v = special_values()
    t = cf.tensor(v, dtype="bfloat16")
    assert t.dtype == "bfloat16" and t.nbytes == 2 * v.size
    got = t.numpy()
    assert got.dtype == np.float32  # numpy has no bfloat16: the values arrive as float32
    np.testing.assert_array_equal(got, bf16_round(v))
    # ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7, and goes to the even one (1)
    assert cf.tensor(np.float32(1 + 2 ** -8), dtype="bfloat16").numpy() == 1.0
    assert np.isnan(cf.tensor(np.float32(np.nan), dtype="bfloat16").numpy())


def test_float64_rounds_once():
    x = np.array([1 + 2 ** -24 + 2 ** -40], np.float64)  # float32 rounding of x is up; via a float32 truncation would tie
    assert cf.tensor(x).numpy()[0] == np.float32(x[0])
    assert cf.tensor(x, dtype="float16").numpy()[0] == x.astype(np.float16)[0]


def test_to_and_reshape():
    a = np.arange(12, dtype=np.float32)
    t = cf.tensor(a)
    assert t.to("cpu") is t and t.to(dtype="float32") is t
    h = t.to(dtype="float16")
    assert h.dtype == "float16" and t.dtype == "float32"
    r = t.reshape(3, -1)
    assert r.shape == (3, 4)
    np.testing.assert_array_equal(r.numpy(), a.reshape(3, 4))
    assert t.reshape((2, 2, 3)).shape == (2, 2, 3)
    assert len(r) == 3
    with pytest.raises(ValueError, match="reshape"):
        t.reshape(5, -1)
    with pytest.raises(ValueError, match="reshape"):
        t.reshape(-1, -1)
    with pytest.raises(ValueError, match="reshape"):
        t.reshape(13)


def test_dlpack_export_is_zero_copy():
    torch = pytest.importorskip("torch")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = cf.tensor(a)
    n1, n2 = np.from_dlpack(t), np.from_dlpack(t)
    assert n1.__array_interface__["data"][0] == n2.__array_interface__["data"][0]
    np.testing.assert_array_equal(n1, a)
    tt = torch.from_dlpack(t)
    assert tt.data_ptr() == n1.__array_interface__["data"][0]
    assert cf.from_dlpack(tt).numpy().tolist() == a.tolist()
    assert t.__dlpack_device__() == (1, 0)
    del t
    gc.collect()
    np.testing.assert_array_equal(tt.numpy(), a)  # the export keeps the memory alive
    for dt, tdt in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("int64", torch.int64),
                    ("bool", torch.bool), ("int32", torch.int32)):
        x = cf.tensor(np.arange(6) % 3, dtype=dt)
        y = torch.from_dlpack(x)
        assert y.dtype == tdt and y.tolist() == [0, 1, 2, 0, 1, 2] if dt != "bool" else y.tolist() == [False, True, True] * 2


def test_dlpack_import_shares_memory():
    torch = pytest.importorskip("torch")
    src = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    t = cf.from_dlpack(src)
    assert t.shape == (2, 3) and t.dtype == "float32"
    src.mul_(2)  # writes through the shared memory
    np.testing.assert_array_equal(t.numpy(), np.arange(6).reshape(2, 3) * 2)
    del src
    gc.collect()
    np.testing.assert_array_equal(t.numpy(), np.arange(6).reshape(2, 3) * 2)  # t keeps torch's memory alive
    bf = cf.from_dlpack(torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16))
    assert bf.dtype == "bfloat16" and bf.numpy().tolist() == [1.5, -2.25, 3.0]
    # a transposed (strided) tensor becomes one contiguous copy with the right values
    tr = torch.arange(12.0).reshape(3, 4).T
    np.testing.assert_array_equal(cf.from_dlpack(tr).numpy(), tr.numpy())
    np.testing.assert_array_equal(cf.from_dlpack(np.arange(6.0)[::2]).numpy(), [0, 2, 4])
    h = np.linspace(-1, 1, 7).astype(np.float16)
    np.testing.assert_array_equal(cf.from_dlpack(h).numpy(), h)
    t2 = cf.tensor([1.0])
    assert cf.from_dlpack(t2) is t2


def test_ops_on_cpu_tensors_match_numpy(rng):
    x, w, b = randn(rng, 7, 65), randn(rng, 33, 65), randn(rng, 33)
    r = ops.linear(cf.tensor(x), cf.tensor(w), cf.tensor(b), activation="gelu")
    assert isinstance(r, cf.Tensor) and r.device == "cpu"
    assert_close(r.numpy(), ref.linear(x, w, b, "gelu"))
    q, k, v = randn(rng, 2, 3, 7, 16), randn(rng, 2, 3, 9, 16), randn(rng, 2, 3, 9, 8)
    m = rng.random((7, 9)) > 0.3
    r = ops.scaled_dot_product_attention(cf.tensor(q), cf.tensor(k), cf.tensor(v), cf.tensor(m), is_causal=True)
    assert_close(r.numpy(), ref.sdpa(q, k, v, m, True))
    y, s = ops.layer_norm(cf.tensor(x), cf.tensor(x[0]), None, residual=cf.tensor(x[::-1].copy()), return_sum=True)
    assert isinstance(y, cf.Tensor) and isinstance(s, cf.Tensor)
    assert_close(y.numpy(), ref.layer_norm(x, x[0], None, residual=x[::-1])[0], atol_scale=1e-5)
    assert_close(s.numpy(), ref.f64(x) + x[::-1])
    assert_close(ops.softmax(cf.tensor(x), axis=0).numpy(), ref.softmax(x, axis=0))
    assert_close(ops.gelu(cf.tensor(x), "tanh").numpy(), ref.gelu_tanh(x))
    np.testing.assert_array_equal(ops.relu(cf.tensor(x)).numpy(), np.maximum(x, 0))
    ids = np.array([[3, 0], [32, 5]])
    np.testing.assert_array_equal(ops.embedding(cf.tensor(ids), cf.tensor(w)).numpy(), w[ids])
    qa, ka, va = randn(rng, 2, 5, 6), randn(rng, 2, 7, 4), randn(rng, 2, 7, 3)
    wq, wk, vv = randn(rng, 8, 6), randn(rng, 8, 4), randn(rng, 8)
    o, wts = ops.additive_attention(*(cf.tensor(a) for a in (qa, ka, va, wq, wk, vv)), return_weights=True)
    ro, rw = ref.additive(qa, ka, va, wq, wk, vv)
    assert_close(o.numpy(), ro, rtol=1e-5, atol_scale=1e-5)
    assert_close(wts.numpy(), rw, rtol=1e-5, atol_scale=1e-5)
    e = randn(rng, 5, 16)
    iw, ib, ow = randn(rng, 48, 16), randn(rng, 48), randn(rng, 16, 16)
    te = cf.tensor(e)
    r = ops.multi_head_attention(te, te, te, 4, cf.tensor(iw), cf.tensor(ib), cf.tensor(ow), None)
    assert r.shape == (5, 16)
    assert_close(r.numpy(), ref.mha(e[None], e[None], e[None], 4, iw, ib, ow, None)[0], rtol=1e-5, atol_scale=1e-5)
    # out= a tensor, in place
    t = cf.tensor(x)
    assert ops.relu(t, out=t) is t
    np.testing.assert_array_equal(t.numpy(), np.maximum(x, 0))


def test_tensor_errors():
    with pytest.raises(ValueError, match="device must be"):
        cf.tensor([1.0], device="tpu")
    with pytest.raises(TypeError, match="device must be a str"):
        cf.tensor([1.0], device=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype must be"):
        cf.tensor([1.0], dtype="complex64")
    with pytest.raises(TypeError, match="real numeric"):
        cf.tensor(np.array([1j]))
    with pytest.raises(TypeError, match="real numeric"):
        cf.tensor(np.array(["a"]))
    with pytest.raises(TypeError, match="__dlpack__"):
        cf.from_dlpack([1, 2, 3])
    h = cf.tensor(np.ones((2, 4)), dtype="float16")
    with pytest.raises(TypeError, match="x must be float32"):  # the CPU kernels compute in float32
        ops.relu(h)
    t = cf.tensor(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="out must be a coreformer.Tensor"):
        ops.relu(t, out=np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        ops.relu(t, out=cf.tensor(np.empty((4, 2), np.float32)))
    with pytest.raises(TypeError, match="out must be float32"):
        ops.relu(t, out=h)
    with pytest.raises(TypeError, match="len"):
        len(cf.tensor(np.float32(1)))


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present")
def test_cuda_without_a_device_is_a_clear_runtime_error():
    msg = "no CUDA device" if cf.info()["cuda_built"] else "built without CUDA"
    with pytest.raises(RuntimeError, match=msg):
        cf.tensor(np.ones(3), device="cuda")
    with pytest.raises(RuntimeError, match=msg):
        cf.tensor(np.ones(3)).to("cuda:1")


def test_info_reports_cuda():
    info = cf.info()
    assert isinstance(info["cuda_built"], bool) and isinstance(info["cuda_devices"], int)
    assert info["cuda_devices"] >= 0
    if not info["cuda_built"]:
        assert info["cuda_devices"] == 0
    assert ("cuda_gemm" in info) == (info["cuda_devices"] > 0)
    if info["cuda_devices"] == 0:
        assert cf.empty_cache() == 0  # nothing was ever cached


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present")
def test_gpu_bench_and_synchronize_without_a_device(capsys):
    from coreformer import cli
    assert cli.main(["bench", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().out or not cf.info()["cuda_built"]
    with pytest.raises(RuntimeError):
        cf.synchronize()


def test_synchronize_device_argument():
    cf.synchronize("cpu")  # nothing to wait for, on any machine
    with pytest.raises(ValueError, match="'cpu', 'cuda' or 'cuda:N'.*'gpu'"):
        cf.synchronize("gpu")
    with pytest.raises(ValueError, match="'cuda:x'"):
        cf.synchronize("cuda:x")
    with pytest.raises(TypeError, match="device must be a str"):
        cf.synchronize(0)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int64", "int32", "bool"])
def test_tensor_pickles_and_copies(dtype):
    import copy
    import pickle
    x = np.arange(-6, 6, dtype=np.float32).reshape(3, 4) / 4
    t = cf.tensor(x > 0 if dtype == "bool" else x, dtype=dtype)
    for back in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t), copy.copy(t)):
        assert (back.shape, back.dtype, back.device) == (t.shape, t.dtype, t.device)
        np.testing.assert_array_equal(back.numpy(), t.numpy())
        assert back is not t


def test_tensor_sizes_that_overflow():
    # reshape multiplied the dimensions without an overflow check: 2**62 + 3 rows of 4 "matched" 12
    # elements, and softmax on the result read far out of bounds
    t = cf.tensor(np.ones(12, np.float32))
    for shape in ((2 ** 62 + 3, 4), (2 ** 32, 2 ** 32, 2), (-1, 2 ** 63 - 1, 2)):
        with pytest.raises(ValueError, match="overflows|reshape"):
            t.reshape(*shape)
    assert t.reshape(3, -1).shape == (3, 4)


def test_tensor_is_made_by_its_functions_only():
    for make in (lambda: cf.Tensor(), lambda: cf.Tensor.__new__(cf.Tensor)):
        with pytest.raises(TypeError, match="coreformer.tensor"):
            make()
    import pickle
    t = cf.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(t, protocol=protocol)).numpy(), t.numpy())


def test_from_dlpack_of_misaligned_memory():
    raw = bytearray(4 * 6 + 1)
    a = np.ndarray((6,), np.float32, raw, offset=1)
    with pytest.raises(ValueError, match="aligned"):
        cf.from_dlpack(a)
