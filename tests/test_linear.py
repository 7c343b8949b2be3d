import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from coreformer import ops

import reference as ref
from conftest import assert_close, randn

SIZES = [1, 7, 16, 63, 65, 1000]


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("k", [1, 7, 63, 65, 300])
@pytest.mark.parametrize("n", [1, 7, 63, 65, 129])
def test_linear_shapes(isa, rng, m, k, n):
    x, w, b = randn(rng, m, k), randn(rng, n, k), randn(rng, n)
    assert_close(ops.linear(x, w, b), ref.linear(x, w, b), atol_scale=2e-6 * np.sqrt(k))


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("m", [1, 5, 17, 200])
def test_linear_fused_epilogue(isa, rng, activation, m):
    x, w, b, r = randn(rng, m, 768), randn(rng, 1000, 768, scale=0.05), randn(rng, 1000), randn(rng, m, 1000)
    assert_close(ops.linear(x, w, b, activation), ref.linear(x, w, b, activation), atol_scale=2e-5)
    assert_close(ops.linear(x, w, b, activation, residual=r), ref.linear(x, w, b, activation, r), atol_scale=2e-5)


def test_linear_large_k_blocks(isa, rng):
    # K spans several cache blocks; M spans several row tiles with a ragged edge.
    x, w = randn(rng, 301, 3072), randn(rng, 200, 3072, scale=0.02)
    assert_close(ops.linear(x, w), ref.linear(x, w), atol_scale=2e-5)


@pytest.mark.parametrize("k", [255, 256, 257, 384, 385, 513, 1001])
def test_linear_k_block_edges(isa, rng, k):
    # K up to 384 runs as one block, beyond as balanced blocks of at most 256: each edge, plain and
    # against a packed weight, with a residual so the epilogue runs after the last block only.
    # 400 rows: M*K is past the in-place limit (96 Ki floats), so the packed weight takes the blocked driver too
    x, w, b, r = randn(rng, 400, k), randn(rng, 40, k, scale=0.05), randn(rng, 40), randn(rng, 400, 40)
    want = ref.linear(x, w, b, "gelu", r)
    assert_close(ops.linear(x, w, b, "gelu", residual=r), want, atol_scale=2e-5)
    assert_close(ops.linear(x, ops.pack_weight(w), b, "gelu", residual=r), want, atol_scale=2e-5)


def test_linear_wide_output_staged_in_chunks(isa, rng):
    # Several K blocks keep their partial sums in a per-thread scratch of at most 2^20 floats, so a
    # wide N (a vocabulary projection) is cut into column chunks: every chunk, the ragged last panel
    # and the bias added on the last block's store, plain and against a packed weight.
    x, w, b = randn(rng, 600, 400), randn(rng, 7309, 400, scale=0.05), randn(rng, 7309)
    want = ref.linear(x, w, b)
    assert_close(ops.linear(x, w, b), want, atol_scale=2e-5)
    assert_close(ops.linear(x, ops.pack_weight(w), b, "relu"), ref.linear(x, w, b, "relu"), atol_scale=2e-5)


def test_linear_batched_leading_axes(rng):
    x, w = randn(rng, 2, 3, 5, 16), randn(rng, 8, 16)
    y = ops.linear(x, w)
    assert y.shape == (2, 3, 5, 8)
    assert_close(y, ref.linear(x, w))


def test_linear_empty_and_zero_k(rng):
    assert ops.linear(np.zeros((0, 4), np.float32), randn(rng, 3, 4)).shape == (0, 3)
    b = randn(rng, 3)
    y = ops.linear(np.zeros((2, 0), np.float32), np.zeros((3, 0), np.float32), b, "relu")
    np.testing.assert_array_equal(y, np.broadcast_to(np.maximum(b, 0), (2, 3)))


def test_linear_converts_dtypes_and_strides(rng):
    x = rng.standard_normal((6, 10))             # float64
    w = randn(rng, 20, 10)[::2]                  # strided
    y = ops.linear(x, w)
    assert y.dtype == np.float32
    assert_close(y, ref.linear(x.astype(np.float32), w))
    xi = np.arange(20, dtype=np.int64).reshape(2, 10)
    assert_close(ops.linear(xi, w), ref.linear(xi.astype(np.float32), w))


def test_linear_out(rng):
    x, w = randn(rng, 9, 12), randn(rng, 5, 12)
    out = np.empty((9, 5), np.float32)
    r = ops.linear(x, w, out=out)
    assert r is out
    assert_close(out, ref.linear(x, w))


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 90), n=st.integers(1, 90), act=st.sampled_from([None, "relu", "gelu"]))
def test_linear_hypothesis(m, k, n, act):
    rng = np.random.default_rng(m * 10000 + k * 100 + n)
    x, w, b = randn(rng, m, k), randn(rng, n, k), randn(rng, n)
    assert_close(ops.linear(x, w, b, act), ref.linear(x, w, b, act), atol_scale=4e-6 * np.sqrt(k))
