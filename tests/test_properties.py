"""Property tests (Hypothesis) of every op against float64 numpy: random shapes (empty and size-1 axes
included), the dtypes the ops convert (float64/16, ints, bool), layouts they read in place or copy
(reversed axes: negative strides; transposed; stepped slices; misaligned; big-endian) and masks of
every broadcast. Whatever the layout, the answer is the reference's on the same values to float32
rounding. The fixed-shape tests beside each op cover the odd sizes named in the standards; these find
the combinations nobody listed."""
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from coreformer import ops

import reference as ref
from conftest import assert_close

# examples per test: conftest's Hypothesis profile (60 in the suite; HYPOTHESIS_PROFILE=thorough for 2000)
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT_DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.bool_, ">f4"]


@st.composite
def laid_out(draw, values):
    """`values` in a layout chosen by Hypothesis: the same numbers, other strides / alignment / byte order."""
    a = np.asarray(values)
    kind = draw(st.sampled_from(["contiguous", "reversed", "transposed", "stepped", "misaligned", "big-endian"]))
    if kind == "reversed" and a.ndim:
        axes = draw(st.lists(st.integers(0, a.ndim - 1), min_size=1, max_size=a.ndim, unique=True))
        flipped = np.flip(a, axes).copy()
        return np.flip(flipped, axes)  # the values of a, read backwards in memory: negative strides
    if kind == "transposed" and a.ndim >= 2:
        perm = draw(st.permutations(range(a.ndim)))
        inverse = np.argsort(perm)
        return np.ascontiguousarray(a.transpose(perm)).transpose(inverse)
    if kind == "stepped" and a.ndim:
        axis = draw(st.integers(0, a.ndim - 1))
        shape = list(a.shape)
        shape[axis] *= 2
        big = np.zeros(shape, a.dtype)
        index = [slice(None)] * a.ndim
        index[axis] = slice(None, None, 2)
        big[tuple(index)] = a
        return big[tuple(index)]
    if kind == "misaligned" and a.dtype.itemsize > 1:
        raw = bytearray(a.nbytes + 1)
        b = np.ndarray(a.shape, a.dtype, raw, offset=1)
        b[...] = a
        return b
    if kind == "big-endian" and a.dtype.kind == "f" and a.dtype.itemsize == 4:
        return a.astype(">f4")
    return a


def values(draw, shape, dtype=np.float32, scale=1.0):
    """Random numbers of `shape` as `dtype` (ints and bools where those are asked for)."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return x > 0
    if dt.kind in "iu":
        return np.round(x * 3).astype(dt)
    return x.astype(dt)


def seen(a):
    """What the op computes on: the values as float32 (its inputs are converted to float32)."""
    return np.asarray(a).astype(np.float32)


dims = st.integers(0, 9) | st.sampled_from([1, 7, 17])


@SETTINGS
@given(st.data())
def test_linear(data):
    m, k, n = data.draw(dims), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    x = data.draw(laid_out(values(data.draw, (*lead, m, k), data.draw(st.sampled_from(FLOAT_DTYPES)))))
    w = data.draw(laid_out(values(data.draw, (n, k), data.draw(st.sampled_from(FLOAT_DTYPES)))))
    b = data.draw(st.none() | st.just(values(data.draw, (n,))))
    r = data.draw(st.none() | st.just(values(data.draw, (*lead, m, n))))
    act = data.draw(st.sampled_from([None, "relu", "gelu", "gelu_tanh"]))
    packed = data.draw(st.booleans())
    weight = ops.pack_weight(w) if packed else w
    want = ref.linear(seen(x), seen(w), b, act, r)
    # the sum of |terms| bounds what float32 accumulation can lose where the terms cancel
    size = np.abs(seen(x)).astype(np.float64) @ np.abs(seen(w)).astype(np.float64).T
    slack = 2e-6 * np.sqrt(k) * (size.max() if size.size else 0.0)
    assert_close(ops.linear(x, weight, b, act, residual=r), want, atol_scale=4e-6 * np.sqrt(k), floor=slack)


@st.composite
def mask_for(draw, b, h, sq, sk):
    """None, or a bool / float mask of a shape that broadcasts to (b, h, sq, sk), with rows fully masked
    sometimes."""
    kind = draw(st.sampled_from(["none", "bool", "float"]))
    if kind == "none":
        return None
    full = (b, h, sq, sk)
    keep = [draw(st.booleans()) for _ in range(4)]
    shape = tuple(d if k else 1 for d, k in zip(full, keep))
    shape = shape[draw(st.integers(0, 3)):]  # fewer dimensions broadcast from the right, as numpy's
    m = values(draw, shape, np.bool_)
    if kind == "float":
        m = np.where(m, 0.0, -np.inf).astype(np.float32) + values(draw, shape) * 0.5
    return draw(laid_out(m))


def attention_slack(q, k, v, scale=None):
    """An absolute error float32 attention may make where the output cancels (a weighted mean of values of
    both signs near 0): the scores' rounding, relative to their size, times the values' size."""
    q, k, v = (np.abs(np.asarray(a, np.float64)) for a in (q, k, v))
    if not (q.size and k.size and v.size):
        return 0.0
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ np.swapaxes(k, -1, -2)).max() * scale
    return 2e-6 * v.max() * (1 + scores)


@SETTINGS
@given(st.data())
def test_scaled_dot_product_attention(data):
    b, h = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    sq, sk = data.draw(st.integers(1, 70)), data.draw(st.integers(1, 300))
    d, dv = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    q = data.draw(laid_out(values(data.draw, (b, h, sq, d), data.draw(st.sampled_from(FLOAT_DTYPES)))))
    k = data.draw(laid_out(values(data.draw, (b, h, sk, d))))
    v = data.draw(laid_out(values(data.draw, (b, h, sk, dv))))
    mask = data.draw(mask_for(b, h, sq, sk))
    causal = data.draw(st.booleans())
    scale = data.draw(st.none() | st.floats(0.05, 2.0))
    got = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    assert_close(got, ref.sdpa(seen(q), k, v, mask, causal, scale), atol_scale=1e-5,
                 floor=attention_slack(seen(q), k, v, scale))


@SETTINGS
@given(st.data())
def test_multi_head_attention(data):
    b, heads = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    e = heads * data.draw(st.integers(1, 8))
    sq, sk = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    self_attention = data.draw(st.booleans())
    q = data.draw(laid_out(values(data.draw, (b, sq, e), data.draw(st.sampled_from(FLOAT_DTYPES)))))
    kv = q if self_attention else data.draw(laid_out(values(data.draw, (b, sk, e))))
    sk = kv.shape[1]
    iw, ow = values(data.draw, (3 * e, e), scale=0.3), values(data.draw, (e, e), scale=0.3)
    ib, ob = data.draw(st.none() | st.just(values(data.draw, (3 * e,)))), data.draw(st.none() | st.just(values(data.draw, (e,))))
    kpm = data.draw(st.none() | st.just(values(data.draw, (b, sk), np.bool_)))
    causal = data.draw(st.booleans())
    got = ops.multi_head_attention(q, kv, kv, heads, iw, ib, ow, ob, key_padding_mask=kpm, is_causal=causal)
    want = ref.mha(seen(q), seen(kv), seen(kv), heads, iw, ib, ow, ob, key_padding_mask=kpm, is_causal=causal)
    # a query whose every key is padding gives out_bias here (the kernel's zeros, projected); torch NaN
    defined = np.isfinite(want).all(-1)
    assert_close(got[defined], want[defined], rtol=1e-5, atol_scale=1e-5)


@SETTINGS
@given(st.data())
def test_additive_attention(data):
    b, sq, sk = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 12)), data.draw(st.integers(1, 30))
    dq, dk, dv, a = (data.draw(st.integers(1, 20)) for _ in range(4))
    q = data.draw(laid_out(values(data.draw, (b, sq, dq), data.draw(st.sampled_from(FLOAT_DTYPES)))))
    k, v = data.draw(laid_out(values(data.draw, (b, sk, dk)))), data.draw(laid_out(values(data.draw, (b, sk, dv))))
    wq, wk, vv = values(data.draw, (a, dq)), values(data.draw, (a, dk)), values(data.draw, (a,))
    mask = data.draw(st.none() | st.just(values(data.draw, data.draw(st.sampled_from([(b, sk), (b, sq, sk)])),
                                                np.bool_)))
    out, weights = ops.additive_attention(q, k, v, wq, wk, vv, mask=mask, return_weights=True)
    want_out, want_w = ref.additive(seen(q), k, v, wq, wk, vv, mask)
    assert_close(out, want_out, rtol=1e-5, atol_scale=1e-5)
    assert_close(weights, want_w, rtol=1e-5, atol_scale=1e-5)


@SETTINGS
@given(st.data())
def test_layer_norm(data):
    lead = data.draw(st.lists(dims, max_size=2))
    n = data.draw(st.integers(1, 300))
    x = data.draw(laid_out(values(data.draw, (*lead, n), data.draw(st.sampled_from(FLOAT_DTYPES)), scale=3.0)))
    w = data.draw(st.none() | st.just(values(data.draw, (n,))))
    bias = data.draw(st.none() | st.just(values(data.draw, (n,))))
    r = data.draw(st.none() | laid_out(values(data.draw, (*lead, n))))
    eps = data.draw(st.sampled_from([1e-5, 1e-12, 0.1]))
    want, want_sum = ref.layer_norm(seen(x), w, bias, eps, None if r is None else seen(r))
    assume(np.all(want_sum.std(-1) > 1e-3) if want_sum.size else True)  # a near-constant row: ill-conditioned
    if r is None:
        assert_close(ops.layer_norm(x, w, bias, eps), want, atol_scale=1e-5)
    else:
        y, s = ops.layer_norm(x, w, bias, eps, residual=r, return_sum=True)
        assert_close(y, want, atol_scale=1e-5)
        assert_close(s, want_sum, atol_scale=1e-6)


@SETTINGS
@given(st.data())
def test_softmax(data):
    shape = data.draw(st.lists(dims, min_size=1, max_size=4))
    x = data.draw(laid_out(values(data.draw, shape, data.draw(st.sampled_from(FLOAT_DTYPES)), scale=4.0)))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    got = ops.softmax(x, axis=axis)
    if shape[axis] == 0:  # nothing along the axis: an empty result of x's shape
        assert got.shape == tuple(shape)
        return
    assert_close(got, ref.softmax(seen(x), axis), atol_scale=1e-6)


@SETTINGS
@given(st.data())
def test_elementwise(data):
    shape = data.draw(st.lists(dims, max_size=4))
    x = data.draw(laid_out(values(data.draw, shape, data.draw(st.sampled_from(FLOAT_DTYPES)), scale=4.0)))
    f = seen(x)
    assert_close(ops.gelu(x), ref.gelu(f), rtol=1e-6, atol_scale=1e-7)
    # the tanh form's tail (x < -5: results ~1e-28) is conditioned by u = c (x + 0.044715 x^3) in float32:
    # exp(2u) carries u's rounding (~2e-6 relative), whoever computes it in float32; below x = -10 the
    # kernel's exp saturates and x / (1 + e^2u) is ~1e-37 where the exact value underflows to 0
    assert_close(ops.gelu(x, "tanh"), ref.gelu_tanh(f), rtol=1e-5, atol_scale=1e-7, floor=1e-36)
    np.testing.assert_array_equal(ops.relu(x), np.maximum(f, 0))
    if np.ndim(x) and np.shape(x)[-1]:
        np.testing.assert_array_equal(ops.argmax(x), np.argmax(f, axis=-1))


@SETTINGS
@given(st.data())
def test_embedding(data):
    v, d = data.draw(st.integers(1, 50)), data.draw(st.integers(1, 40))
    shape = data.draw(st.lists(dims, max_size=3))
    dtype = data.draw(st.sampled_from([np.int64, np.int32, np.int16, np.uint8, np.uint32, ">i8"]))
    ids = data.draw(laid_out(np.random.default_rng(data.draw(st.integers(0, 99))).integers(0, min(v, 255), shape)
                             .astype(dtype)))
    table = data.draw(laid_out(values(data.draw, (v, d), data.draw(st.sampled_from(FLOAT_DTYPES)))))
    np.testing.assert_array_equal(ops.embedding(ids, table), seen(table)[np.asarray(ids).astype(np.int64)])


@SETTINGS
@given(n=st.integers(0, 300), dim=st.integers(1, 64))
def test_sinusoidal_positions(n, dim):
    assert_close(ops.sinusoidal_positions(n, dim), ref.sinusoidal(n, dim), atol_scale=2e-6)


def _layer_weights(draw, e, f, names, missing_ok):
    p = {}
    for name in names:
        if name.endswith("in_weight"):
            p[name] = values(draw, (3 * e, e), scale=0.3)
        elif name.endswith("out_weight"):
            p[name] = values(draw, (e, e), scale=0.3)
        elif name == "linear1_weight":
            p[name] = values(draw, (f, e), scale=0.3)
        elif name == "linear2_weight":
            p[name] = values(draw, (e, f), scale=0.3)
        else:
            size = 3 * e if name.endswith("in_bias") else f if name == "linear1_bias" else e
            absent = missing_ok and draw(st.booleans())
            p[name] = None if absent else values(draw, (size,), scale=0.3) + (1.0 if "norm" in name and "weight" in name else 0)
    return p


ENCODER = ["in_weight", "in_bias", "out_weight", "out_bias", "linear1_weight", "linear1_bias", "linear2_weight",
           "linear2_bias", "norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias"]
DECODER = ["self_in_weight", "self_in_bias", "self_out_weight", "self_out_bias", "cross_in_weight", "cross_in_bias",
           "cross_out_weight", "cross_out_bias", "linear1_weight", "linear1_bias", "linear2_weight", "linear2_bias",
           "norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias", "norm3_weight", "norm3_bias"]


@SETTINGS
@given(st.data())
def test_transformer_encoder_layer(data):
    heads = data.draw(st.integers(1, 4))
    # at least 4 features: a LayerNorm over 2 is a sign function of their difference, so near a tie float32
    # rounding before it flips the output (a draw of integer inputs hit 1e-3 there: conditioning, no bug)
    e, f = heads * data.draw(st.integers(-(-4 // heads), 6)), data.draw(st.integers(1, 40))
    b, s = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 20))
    x = data.draw(laid_out(values(data.draw, (b, s, e), data.draw(st.sampled_from(FLOAT_DTYPES)))))
    p = _layer_weights(data.draw, e, f, ENCODER, missing_ok=True)
    act, norm_first, causal = (data.draw(st.sampled_from(["relu", "gelu", "gelu_tanh"])), data.draw(st.booleans()),
                               data.draw(st.booleans()))
    got = ops.transformer_encoder_layer(x, heads, *(p[n] for n in ENCODER), activation=act, norm_first=norm_first,
                                        is_causal=causal)
    assert_close(got, ref.encoder_layer(seen(x), heads, p, act, norm_first, is_causal=causal), rtol=1e-5,
                 atol_scale=2e-5)


@SETTINGS
@given(st.data())
def test_transformer_decoder_layer(data):
    heads = data.draw(st.integers(1, 4))
    e, f = heads * data.draw(st.integers(-(-4 // heads), 6)), data.draw(st.integers(1, 40))  # as the encoder's
    b, t, sm = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 12)), data.draw(st.integers(1, 15))
    x = data.draw(laid_out(values(data.draw, (b, t, e), data.draw(st.sampled_from(FLOAT_DTYPES)))))
    mem = data.draw(laid_out(values(data.draw, (b, sm, e))))
    p = _layer_weights(data.draw, e, f, DECODER, missing_ok=True)
    act, norm_first, causal = (data.draw(st.sampled_from(["relu", "gelu"])), data.draw(st.booleans()),
                               data.draw(st.booleans()))
    got = ops.transformer_decoder_layer(x, mem, heads, *(p[n] for n in DECODER), activation=act,
                                        norm_first=norm_first, tgt_is_causal=causal)
    want = ref.decoder_layer(seen(x), seen(mem), heads, p, act, norm_first, tgt_is_causal=causal)
    assert_close(got, want, rtol=1e-5, atol_scale=2e-5)


@pytest.mark.parametrize("op", ["gelu", "softmax", "layer_norm", "linear"])
def test_views_of_one_array_agree(op):
    # the same values through every layout give bit-identical answers (the kernels see the same floats)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 33)).astype(np.float32)
    w = rng.standard_normal((5, 33)).astype(np.float32)
    funcs: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "gelu": lambda a: ops.gelu(a), "softmax": lambda a: ops.softmax(a), "layer_norm": lambda a: ops.layer_norm(a),
        "linear": lambda a: ops.linear(a, w)}
    f = funcs[op]
    want = f(x)
    for view in (np.flip(np.flip(x, 1).copy(), 1), np.asfortranarray(x), x.astype(">f4"),
                 np.repeat(x, 2, axis=1)[:, ::2]):
        np.testing.assert_array_equal(f(view), want)
