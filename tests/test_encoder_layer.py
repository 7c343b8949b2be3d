"""ops.transformer_encoder_layer: a whole torch.nn.TransformerEncoderLayer in one call, against the
float64 composition of its parts, torch's layer, the packed (cu_seqlens) form, and its bad inputs."""
import numpy as np
import pytest

from coreformer import ops

import reference as ref
from conftest import assert_close, randn

NAMES = ("in_weight", "in_bias", "out_weight", "out_bias", "linear1_weight", "linear1_bias", "linear2_weight",
         "linear2_bias", "norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias")


def params(rng, e, f):
    return {
        "in_weight": randn(rng, 3 * e, e, scale=e ** -0.5), "in_bias": randn(rng, 3 * e, scale=0.1),
        "out_weight": randn(rng, e, e, scale=e ** -0.5), "out_bias": randn(rng, e, scale=0.1),
        "linear1_weight": randn(rng, f, e, scale=e ** -0.5), "linear1_bias": randn(rng, f, scale=0.1),
        "linear2_weight": randn(rng, e, f, scale=f ** -0.5), "linear2_bias": randn(rng, e, scale=0.1),
        "norm1_weight": 1 + randn(rng, e, scale=0.1), "norm1_bias": randn(rng, e, scale=0.1),
        "norm2_weight": 1 + randn(rng, e, scale=0.1), "norm2_bias": randn(rng, e, scale=0.1),
    }


def call(x, h, p, **kw):
    return ops.transformer_encoder_layer(x, h, *(p[n] for n in NAMES), **kw)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("b,s,e,h,f", [(1, 1, 8, 1, 12), (2, 7, 16, 4, 24), (3, 65, 64, 8, 100),
                                       (1, 63, 96, 12, 130)])
def test_matches_reference(isa, rng, b, s, e, h, f, norm_first):
    x = randn(rng, b, s, e)
    p = params(rng, e, f)
    for act in ("relu", "gelu", "gelu_tanh"):
        assert_close(call(x, h, p, activation=act, norm_first=norm_first, eps=1e-6),
                     ref.encoder_layer(x, h, p, act, norm_first, eps=1e-6), atol_scale=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_masks(isa, rng, norm_first):
    b, s, e, h, f = 2, 13, 24, 3, 40
    x, p = randn(rng, b, s, e), params(rng, e, f)
    kpm = np.zeros((b, s), bool)
    kpm[0, -4:] = True
    bool_mask = rng.random((s, s)) > 0.8  # True = not allowed (torch)
    np.fill_diagonal(bool_mask, False)
    float_mask = randn(rng, b * h, s, s)
    for kw in [dict(key_padding_mask=kpm), dict(attn_mask=bool_mask), dict(attn_mask=float_mask),
               dict(attn_mask=bool_mask, key_padding_mask=kpm), dict(is_causal=True, key_padding_mask=kpm),
               dict(is_causal=True)]:
        assert_close(call(x, h, p, norm_first=norm_first, **kw), ref.encoder_layer(x, h, p, norm_first=norm_first,
                                                                                   **kw), atol_scale=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("norm_first", [False, True])
def test_cu_seqlens_is_each_sequence_alone(isa, rng, dtype, norm_first):
    e, h, f = 32, 4, 48
    p = params(rng, e, f)
    lengths = [7, 1, 0, 65, 63]
    seqs = [randn(rng, n, e) for n in lengths]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(dtype)
    got = call(np.concatenate(seqs), h, p, norm_first=norm_first, cu_seqlens=cu)
    want = np.concatenate([ref.encoder_layer(sq[None], h, p, norm_first=norm_first)[0] if len(sq) else sq
                           for sq in seqs])
    assert_close(got, want, atol_scale=1e-5)
    # the same as the padded batch with its key padding mask, on the real tokens
    pad = np.zeros((len(lengths), max(lengths), e), np.float32)
    kpm = np.ones((len(lengths), max(lengths)), bool)
    for i, sq in enumerate(seqs):
        pad[i, :len(sq)], kpm[i, :len(sq)] = sq, False
    padded = call(pad, h, p, norm_first=norm_first, key_padding_mask=kpm)
    assert_close(got, padded[~kpm], atol_scale=1e-5)


def test_in_place_unbatched_packed_and_optional_parameters(rng):
    e, h, f = 48, 6, 64
    x, p = randn(rng, 3, 20, e), params(rng, e, f)
    want = call(x, h, p)
    y = x.copy()
    assert call(y, h, p, out=y) is y
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(call(x[1], h, p), want[1])  # (S, E): no batch axis
    packed = dict(p, **{n: ops.pack_weight(p[n]) for n in NAMES if n.endswith("weight") and not n.startswith("norm")})
    np.testing.assert_array_equal(call(x, h, packed), want)
    bare = {n: (None if not n.endswith("weight") or n.startswith("norm") else v) for n, v in p.items()}
    assert_close(call(x, h, bare, activation="gelu", norm_first=True),
                 ref.encoder_layer(x, h, bare, "gelu", norm_first=True), atol_scale=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_matches_torch_layer(rng, norm_first):
    torch = pytest.importorskip("torch")
    e, h, f = 64, 8, 96
    layer = torch.nn.TransformerEncoderLayer(e, h, f, dropout=0.0, activation="gelu", batch_first=True,
                                             norm_first=norm_first).eval()
    with torch.no_grad():
        for t in layer.parameters():
            t.add_(torch.randn_like(t) * 0.1)
    sd = {k: v.detach().numpy() for k, v in layer.state_dict().items()}
    p = {"in_weight": sd["self_attn.in_proj_weight"], "in_bias": sd["self_attn.in_proj_bias"],
         "out_weight": sd["self_attn.out_proj.weight"], "out_bias": sd["self_attn.out_proj.bias"],
         **{n: sd[n.replace("_", ".")] for n in NAMES[4:]}}
    x = randn(rng, 3, 30, e)
    kpm = np.zeros((3, 30), bool)
    kpm[2, 21:] = True
    with torch.inference_mode():
        want = layer(torch.from_numpy(x), src_key_padding_mask=torch.from_numpy(kpm)).numpy()
    got = call(x, h, p, activation="gelu", norm_first=norm_first, key_padding_mask=kpm)
    np.testing.assert_allclose(got[~kpm], want[~kpm], rtol=1e-4, atol=1e-5)


def test_bad_inputs(rng):
    e, h, f = 16, 4, 24
    x, p = randn(rng, 2, 5, e), params(rng, e, f)
    with pytest.raises(ValueError, match=r"in_weight must have shape \(48, 16\), got \(47, 16\)"):
        call(x, h, dict(p, in_weight=p["in_weight"][:47]))
    with pytest.raises(ValueError, match=r"linear2_weight must have shape \(16, 24\), got \(16, 23\)"):
        call(x, h, dict(p, linear2_weight=p["linear2_weight"][:, :23]))
    with pytest.raises(ValueError, match=r"linear1_bias must have shape \(24,\)"):
        call(x, h, dict(p, linear1_bias=p["linear1_bias"][:5]))
    with pytest.raises(ValueError, match=r"norm2_weight must have shape \(16,\)"):
        call(x, h, dict(p, norm2_weight=np.ones(15, np.float32)))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        call(x, 3, p)
    with pytest.raises(ValueError, match=r"x must be \(B, S, E\), got shape \(2, 5, 1, 16\)"):
        call(x[:, :, None], h, p)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        call(x, h, p, key_padding_mask=np.zeros((2, 6), bool))
    with pytest.raises(TypeError, match="activation"):
        call(x, h, p, activation=3)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        call(x, h, p, eps=-1.0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        call(x, h, p, eps=(1e-5, -1.0))
    with pytest.raises(ValueError, match=r"eps must be a float or a pair \(norm1's, norm2's\)"):
        call(x, h, p, eps=(1e-5, 1e-5, 1e-5))
    flat = x.reshape(10, e)
    with pytest.raises(ValueError, match="cu_seqlens must start at 0 and end at 10"):
        call(flat, h, p, cu_seqlens=np.array([0, 4, 9]))
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing, got 6 then 4"):
        call(flat, h, p, cu_seqlens=np.array([0, 6, 4, 10]))
    with pytest.raises(TypeError, match="cu_seqlens must be an integer array"):
        call(flat, h, p, cu_seqlens=np.array([0.0, 10.0]))
    with pytest.raises(ValueError, match="cannot be combined with cu_seqlens"):
        call(flat, h, p, cu_seqlens=np.array([0, 10]), key_padding_mask=np.zeros((1, 10), bool))
    with pytest.raises(ValueError, match=r"x must be \(T, E\) with cu_seqlens"):
        call(x, h, p, cu_seqlens=np.array([0, 10]))
    with pytest.raises(ValueError, match="out overlaps an input"):
        call(x, h, p, out=p["in_weight"][:10].reshape(2, 5, 16))  # a weight's memory
    big = randn(rng, 3, 5, e)
    with pytest.raises(ValueError, match="out overlaps an input"):  # x's memory, shifted by a row
        call(big[:2], h, p, out=big[1:])
    with pytest.raises(ValueError, match="out has shape"):
        call(x, h, p, out=np.empty((2, 5, e + 1), np.float32))


@pytest.mark.parametrize("norm_first", [False, True])
def test_kv_cache_decodes_what_the_full_causal_layer_computes(isa, rng, norm_first):
    # a decoder-only (GPT) block: 5 positions, then one at a time, against the whole sequence at once
    b, s, e, h, f = 2, 12, 32, 4, 40
    x, p = randn(rng, b, s, e), params(rng, e, f)
    pad = np.zeros((b, s), bool)
    pad[1, :3] = True  # row 1 is left-padded
    kw = dict(activation="gelu_tanh", norm_first=norm_first, is_causal=True, scale=0.3)
    full = call(x, h, p, key_padding_mask=pad, **kw)
    assert_close(full[~pad], ref.encoder_layer(x, h, p, "gelu_tanh", norm_first, key_padding_mask=pad,
                                               is_causal=True, scale=0.3)[~pad], atol_scale=1e-5)
    kc, vc = np.full((2, b, h, 16, e // h), np.nan, np.float32)  # capacity 16; unwritten slots stay NaN
    steps, n = [], 0
    for stop in [5] + list(range(6, s + 1)):
        steps.append(call(x[:, n:stop], h, p, key_padding_mask=pad[:, :stop], k_cache=kc, v_cache=vc,
                          cache_length=n, **kw))
        n = stop
    assert_close(np.concatenate(steps, axis=1)[~pad], full[~pad], atol_scale=1e-5)
    # the cache holds the keys and values of every position, heads apart
    src = ref.layer_norm(x, p["norm1_weight"], p["norm1_bias"])[0] if norm_first else x
    keys = ref.linear(src, p["in_weight"][e:2 * e], p["in_bias"][e:2 * e])
    vals = ref.linear(src, p["in_weight"][2 * e:], p["in_bias"][2 * e:])
    assert_close(kc[:, :, :s], keys.reshape(b, s, h, e // h).transpose(0, 2, 1, 3), atol_scale=1e-5)
    assert_close(vc[:, :, :s], vals.reshape(b, s, h, e // h).transpose(0, 2, 1, 3), atol_scale=1e-5)
    assert np.isnan(kc[:, :, s:]).all() and np.isnan(vc[:, :, s:]).all()


def test_kv_cache_bad_inputs(rng):
    b, s, e, h, f = 2, 3, 16, 4, 24
    x, p = randn(rng, b, s, e), params(rng, e, f)
    kc, vc = np.zeros((2, b, h, 8, 4), np.float32)
    with pytest.raises(ValueError, match=r"cache_length \(6\) \+ 3 new positions must fit the cache's capacity \(8\)"):
        call(x, h, p, k_cache=kc, v_cache=vc, cache_length=6)
    for bad in (-1, 2 ** 63 - 2):  # the second would overflow cache_length + S
        with pytest.raises(ValueError, match="must fit"):
            call(x, h, p, k_cache=kc, v_cache=vc, cache_length=bad)
    with pytest.raises(ValueError, match=r"v_cache must have shape \(2, 4, capacity, 4\) like k_cache, got \(2, 4, 9, 4\)"):
        call(x, h, p, k_cache=kc, v_cache=np.zeros((b, h, 9, 4), np.float32))
    with pytest.raises(ValueError, match=r"k_cache must have shape \(2, 4, capacity, 4\)"):
        call(x, h, p, k_cache=np.zeros((b, 2, 8, 8), np.float32), v_cache=vc)
    with pytest.raises(ValueError, match="pass both or neither"):
        call(x, h, p, k_cache=kc)
    with pytest.raises(TypeError, match="k_cache must be a float32 array, got dtype float64"):
        call(x, h, p, k_cache=kc.astype(np.float64), v_cache=vc)
    ro = vc.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="v_cache is read-only"):
        call(x, h, p, k_cache=kc, v_cache=ro)
    with pytest.raises(ValueError, match="v_cache must be C-contiguous"):
        call(x, h, p, k_cache=kc, v_cache=np.zeros((b, h, 4, 8), np.float32).transpose(0, 1, 3, 2))
    both = np.zeros((2 * b, h, 8, 4), np.float32)
    with pytest.raises(ValueError, match="must not share memory"):
        call(x, h, p, k_cache=both[:b], v_cache=both[b - 1:2 * b - 1])
    with pytest.raises(ValueError, match="must not share memory with the layer's other arguments"):
        call(x, h, dict(p, linear1_bias=kc.reshape(-1)[:f]), k_cache=kc, v_cache=vc)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 5\)"):
        call(x, h, p, k_cache=kc, v_cache=vc, cache_length=2, key_padding_mask=np.zeros((b, 3), bool))
    with pytest.raises(ValueError, match="cannot be combined with cu_seqlens"):
        call(x.reshape(6, e), h, p, k_cache=kc, v_cache=vc, cu_seqlens=np.array([0, 6]))
    with pytest.raises(ValueError, match="scale must be finite"):
        call(x, h, p, scale=float("inf"))
    np.testing.assert_array_equal(kc, 0)  # nothing was written by a call that failed


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 2e-2), ("int8", 5e-2)])
def test_narrow_packed_weights(rng, dtype, tol):
    # bfloat16 / int8 weights run the same layer on the weights they round to
    e, h, f = 64, 4, 96
    x, p = randn(rng, 2, 9, e), params(rng, e, f)
    mats = [n for n in NAMES if n.endswith("weight") and not n.startswith("norm")]
    packed = dict(p, **{n: ops.pack_weight(p[n], dtype) for n in mats})
    rounded = dict(p, **{n: packed[n].unpack() for n in mats})
    for norm_first in (False, True):
        got = call(x, h, packed, activation="gelu", norm_first=norm_first)
        assert_close(got, ref.encoder_layer(x, h, rounded, "gelu", norm_first), atol_scale=1e-5)
        assert np.abs(got - call(x, h, p, activation="gelu", norm_first=norm_first)).max() < tol * np.abs(got).max()


@pytest.mark.parametrize("norm_first", [False, True])
def test_each_norm_its_own_eps(rng, norm_first):
    e, h, f = 16, 2, 24
    x, p = randn(rng, 2, 5, e, scale=0.05), params(rng, e, f)  # small activations: eps matters
    for eps in [(1e-1, 1e-5), (1e-5, 1e-1)]:
        got = call(x, h, p, norm_first=norm_first, eps=eps)
        assert_close(got, ref.encoder_layer(x, h, p, norm_first=norm_first, eps=eps), atol_scale=1e-5)
        assert np.abs(got - call(x, h, p, norm_first=norm_first, eps=eps[0])).max() > 1e-3  # the pair is used
