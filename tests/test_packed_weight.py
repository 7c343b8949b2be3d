"""ops.pack_weight: Linear weights packed once (float32, bfloat16 or int8), used by linear and
multi_head_attention on every path (rows read in place for small inputs, the blocked GEMM for
large ones), against float64 references."""
import threading

import numpy as np
import pytest

import coreformer
from coreformer import _core, ops

import reference as ref
from conftest import ISAS, assert_close, randn


def bf16_round(w):
    """float32 -> bfloat16 -> float32, round to nearest even (the reference for bfloat16 packing)."""
    u = np.ascontiguousarray(w, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16
    return rounded.astype(np.uint32).view(np.float32)


def int8_round(w):
    """Symmetric per-row int8 (scale = max|row| / 127, round to nearest even), dequantized: the
    reference for int8 packing, in float32 arithmetic as the packer does it."""
    w = np.ascontiguousarray(w, np.float32)
    amax = np.abs(w).max(axis=1, keepdims=True)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(w * (np.float32(1) / scale)), -127, 127)
    return (q * scale).astype(np.float32)


ROUND = {"float32": lambda w: w, "bfloat16": bf16_round, "int8": int8_round}


# M crosses every path: 1-2 rows (GEMV), a ragged microkernel row group (a short remainder is split
# with the last full row group: 7, 8, 13, 32), the in-place-A path up to its L2 bound, and the
# blocked driver past it (M * K > 96 Ki floats).
@pytest.mark.parametrize("m", [1, 2, 7, 8, 13, 32, 63, 65, 1000])
@pytest.mark.parametrize("k,n", [(1, 1), (7, 63), (65, 7), (63, 65), (300, 129), (257, 1000)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_packed_linear_shapes(isa, rng, m, k, n, dtype):
    x, w, b = randn(rng, m, k), randn(rng, n, k), randn(rng, n)
    pw = ops.pack_weight(w, dtype)
    assert pw.shape == (n, k) and pw.dtype == dtype
    w_eff = ROUND[dtype](w)
    assert_close(ops.linear(x, pw, b), ref.linear(x, w_eff, b), atol_scale=2e-6 * np.sqrt(k))


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("m", [1, 5, 17, 200])
def test_packed_linear_fused_epilogue(isa, rng, activation, m):
    x, w, b, r = randn(rng, m, 768), randn(rng, 1000, 768, scale=0.05), randn(rng, 1000), randn(rng, m, 1000)
    pw = ops.pack_weight(w)
    assert_close(ops.linear(x, pw, b, activation), ref.linear(x, w, b, activation), atol_scale=2e-5)
    assert_close(ops.linear(x, pw, b, activation, residual=r), ref.linear(x, w, b, activation, r), atol_scale=2e-5)


def test_packed_large_k(isa, rng):
    # several K blocks on the blocked path, one long panel on the in-place path
    w = randn(rng, 200, 3072, scale=0.02)
    pw = ops.pack_weight(w)
    for m in (3, 301):
        x = randn(rng, m, 3072)
        assert_close(ops.linear(x, pw), ref.linear(x, w), atol_scale=2e-5)


def test_unpack_round_trip(rng):
    w = randn(rng, 65, 33)
    w[3] = 0.0  # an all-zero row: scale 1, not a division by zero
    assert np.array_equal(ops.pack_weight(w).unpack(), w)
    assert np.array_equal(ops.pack_weight(w, "bfloat16").unpack(), bf16_round(w))
    assert np.array_equal(ops.pack_weight(w, "int8").unpack(), int8_round(w))
    f32 = ops.pack_weight(w).nbytes
    assert ops.pack_weight(w, "bfloat16").nbytes * 2 == f32
    assert ops.pack_weight(w, "int8").nbytes < f32 / 3  # a quarter, plus one scale per row


def test_int8_rejects_non_finite_weights(rng):
    w = randn(rng, 4, 8)
    w[2, 5] = np.inf
    with pytest.raises(ValueError, match="inf or NaN"):
        ops.pack_weight(w, "int8")
    ops.pack_weight(w, "bfloat16")  # bfloat16 holds inf


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_row_slices(rng, dtype):
    w = randn(rng, 100, 40)
    pw = ops.pack_weight(w, dtype)
    full = pw.unpack()
    x = randn(rng, 3, 40)
    for a, b in [(0, 100), (0, 37), (16, 64), (32, 100), (5, 50), (64, 64)]:
        part = pw[a:b]
        assert part.shape == (b - a, 40) and len(part) == b - a
        assert np.array_equal(part.unpack(), full[a:b])
        assert_close(ops.linear(x, part), ref.linear(x, full[a:b]), atol_scale=1e-5)
    with pytest.raises(ValueError, match="contiguous rows"):
        pw[::2]


def test_bf16_rounding_edges():
    w = np.array([[1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -1.0 - 2**-8, np.inf, -np.inf, 3.4e38, 1e-40]], np.float32)
    got = ops.pack_weight(w, "bfloat16").unpack()
    assert np.array_equal(got, bf16_round(w))
    assert got[0, 1] == 1.0 and got[0, 2] == 1.0 + 2**-6  # ties to even, both ways
    nan = ops.pack_weight(np.array([[np.nan]], np.float32), "bfloat16").unpack()
    assert np.isnan(nan).all()


def test_transposed_layout(rng):
    # GPT-2's Conv1D keeps (in, out): packing it transposed equals packing w.T
    w_in_out = randn(rng, 70, 45)
    p = ops.pack_weight(w_in_out, transposed=True)
    assert p.shape == (45, 70)
    assert np.array_equal(p.unpack(), w_in_out.T)
    # the transposed view itself is read in place through its strides, same result
    assert np.array_equal(ops.pack_weight(w_in_out.T).unpack(), w_in_out.T)
    x = randn(rng, 3, 70)
    assert_close(ops.linear(x, p), ref.linear(x, w_in_out.T), atol_scale=2e-6 * np.sqrt(70))


def test_strided_and_converted_sources(rng):
    w = randn(rng, 40, 60)
    assert np.array_equal(ops.pack_weight(w[:, ::2]).unpack(), w[:, ::2])
    assert np.array_equal(ops.pack_weight(w.astype(np.float64)).unpack(), w)


@pytest.mark.skipif(len(ISAS) < 2, reason="one ISA on this CPU")
def test_packed_for_another_isa_still_correct(rng):
    # packed for the best path, used on the scalar one (different panel width): unpacked on the fly
    x, w, b = randn(rng, 5, 64), randn(rng, 50, 64), randn(rng, 50)
    pw = ops.pack_weight(w)
    before = coreformer.info()["isa"]
    try:
        _core._set_isa("scalar")
        assert_close(ops.linear(x, pw, b), ref.linear(x, w, b), atol_scale=2e-5)
    finally:
        _core._set_isa(before)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("s", [1, 7, 65])
def test_multi_head_attention_packed(isa, rng, dtype, s):
    e, h = 64, 4
    x = randn(rng, 2, s, e)
    iw, ib, ow, ob = randn(rng, 3 * e, e, scale=0.1), randn(rng, 3 * e), randn(rng, e, e, scale=0.1), randn(rng, e)
    pad = np.zeros((2, s), bool)
    pad[1, s // 2 + 1:] = True
    want = ops.multi_head_attention(x, x, x, h, ROUND[dtype](iw), ib, ROUND[dtype](ow), ob, key_padding_mask=pad)
    got = ops.multi_head_attention(x, x, x, h, ops.pack_weight(iw, dtype), ib, ops.pack_weight(ow, dtype), ob,
                                   key_padding_mask=pad)
    assert_close(got, want, atol_scale=1e-5)
    # cross-attention: K/V rows of the packed weight start at E (a panel boundary) or are unpacked
    mem = randn(rng, 2, 5, e)
    assert_close(ops.multi_head_attention(x, mem, mem, h, ops.pack_weight(iw), ib, ops.pack_weight(ow), ob),
                 ops.multi_head_attention(x, mem, mem, h, iw, ib, ow, ob), atol_scale=1e-5)


def test_multi_head_attention_packed_unaligned_rows(rng):
    # E = 20 is not a multiple of any panel width: the K/V rows are unpacked on the fly
    e, h = 20, 2
    x, mem = randn(rng, 1, 3, e), randn(rng, 1, 4, e)
    iw, ow = randn(rng, 3 * e, e), randn(rng, e, e)
    assert_close(ops.multi_head_attention(x, mem, mem, h, ops.pack_weight(iw), None, ops.pack_weight(ow), None),
                 ops.multi_head_attention(x, mem, mem, h, iw, None, ow, None), atol_scale=1e-5)


def test_packed_threads(rng):
    pw_src = randn(rng, 300, 128)
    pw = ops.pack_weight(pw_src)
    xs = [randn(rng, m, 128) for m in (1, 3, 40, 700, 1, 9, 64, 200)]
    want = [ops.linear(x, pw) for x in xs]
    got: list[np.ndarray | None] = [None] * len(xs)

    def run(i):
        for _ in range(5):
            got[i] = ops.linear(xs[i], pw)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g, w in zip(got, want):
        assert g is not None and np.array_equal(g, w)


def test_packed_bad_input(rng):
    w = randn(rng, 8, 16)
    pw = ops.pack_weight(w)
    with pytest.raises(ValueError, match=r"x has shape \(2, 15\) and weight has shape \(8, 16\)"):
        ops.linear(randn(rng, 2, 15), pw)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.linear(randn(rng, 2, 16), pw, randn(rng, 7))
    with pytest.raises(ValueError, match="dtype must be 'float32', 'bfloat16' or 'int8', got 'float16'"):
        ops.pack_weight(w, "float16")
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        ops.pack_weight(randn(rng, 8))
    with pytest.raises(TypeError):
        ops.pack_weight(w.astype(np.complex64))
    with pytest.raises(TypeError):
        ops.pack_weight("weights")
    with pytest.raises(ValueError, match=r"in_weight must have shape \(48, 16\), got \(8, 16\)"):
        x = randn(rng, 1, 2, 16)
        ops.multi_head_attention(x, x, x, 2, pw, None, ops.pack_weight(randn(rng, 16, 16)), None)
    with pytest.raises(TypeError, match="PackedWeight"):
        _core.PackedWeight()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_packed_weight_pickles_exactly(rng, dtype):
    # pickle (and copy, so models holding packed weights can go to worker processes) keeps the stored
    # bytes: the same products, int8 scales included; a row slice that starts mid-panel too
    import copy
    import pickle
    w = randn(rng, 37, 20)
    x = randn(rng, 5, 20)
    pw = ops.pack_weight(w, dtype)
    for sl in (pw, pw[3:20], pw[16:], pw[5:5]):
        back = pickle.loads(pickle.dumps(sl))
        assert (back.shape, back.dtype, back.nbytes) == (sl.shape, sl.dtype, sl.nbytes)
        np.testing.assert_array_equal(back.unpack(), sl.unpack())
        np.testing.assert_array_equal(ops.linear(x, back), ops.linear(x, sl))
        np.testing.assert_array_equal(copy.deepcopy(sl).unpack(), sl.unpack())
    # every pickle protocol: 0 and 1 aborted the interpreter (pybind11's pickling needs protocol 2)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(pw, protocol=protocol)).unpack(), pw.unpack())
    # a state that does not fit its shape is refused, not read past its end
    rebuild, (state,) = pw.__reduce__()
    with pytest.raises(ValueError, match="bytes of panels"):
        rebuild((*state[:5], state[5][:-1], state[6]))
    with pytest.raises(ValueError, match="version"):
        rebuild((2, *state[1:]))
    if dtype == "int8":
        with pytest.raises(ValueError, match="scales"):
            rebuild((*state[:6], state[6][:-4]))
    # sizes whose byte count overflows 64 bits (signed overflow before), or beyond any integer
    for rows, cols in ((2 ** 31 - 1, 2 ** 31 - 1), (2 ** 70, 4), (-1, 4)):
        with pytest.raises(ValueError):
            rebuild((1, rows, cols, state[3], state[4], state[5], state[6]))


def test_packed_weight_is_made_by_pack_weight_only():
    # PackedWeight.__new__ without pack_weight handed out an object whose shape, nbytes and unpack()
    # read uninitialised memory
    for make in (lambda: ops.PackedWeight(), lambda: ops.PackedWeight.__new__(ops.PackedWeight)):
        with pytest.raises(TypeError, match="pack_weight"):
            make()


def test_packed_weight_from_another_isa_unpickles(rng):
    # a pickle from a machine whose GEMM panels are another width (AVX-512: 32 columns, here 16) holds
    # that layout: unpacked and used correctly, only not at full speed
    w, x = randn(rng, 37, 20), randn(rng, 5, 20)
    nr = 48  # no ISA here packs this width, so the foreign-layout path runs whatever the machine
    padded = -(-37 // nr) * nr
    wp = np.zeros((padded, 20), np.float32)
    wp[:37] = w
    panels = wp.reshape(padded // nr, nr, 20).transpose(0, 2, 1).copy()  # panel p: [k][j] = w[p*nr + j, k]
    rebuild, _ = ops.pack_weight(w).__reduce__()
    pw = rebuild((1, 37, 20, nr, "float32", panels.tobytes(), b""))
    np.testing.assert_array_equal(pw.unpack(), w)
    np.testing.assert_array_equal(pw[3:20].unpack(), w[3:20])
    for rows in (x, x[:1]):
        assert_close(ops.linear(rows, pw), ref.linear(rows, w), atol_scale=1e-6)
