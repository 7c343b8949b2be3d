import numpy as np
import pytest

from coreformer import ops

import reference as ref
from conftest import assert_close, randn


@pytest.mark.parametrize("rows", [1, 7, 1000])
@pytest.mark.parametrize("n", [1, 7, 63, 65, 768, 1000])
def test_layer_norm(isa, rng, rows, n):
    x, w, b = randn(rng, rows, n, scale=3) + 5, randn(rng, n), randn(rng, n)
    assert_close(ops.layer_norm(x, w, b), ref.layer_norm(x, w, b)[0], atol_scale=3e-6)


@pytest.mark.parametrize("n", [7, 65, 768])
def test_layer_norm_residual(isa, rng, n):
    x, r, w, b = randn(rng, 3, 5, n), randn(rng, 3, 5, n), randn(rng, n), randn(rng, n)
    y, s = ops.layer_norm(x, w, b, eps=1e-6, residual=r, return_sum=True)
    ry, rs = ref.layer_norm(x, w, b, 1e-6, r)
    assert_close(y, ry, atol_scale=3e-6)
    np.testing.assert_array_equal(s, x + r)
    assert_close(ops.layer_norm(x, w, b, eps=1e-6, residual=r), ry, atol_scale=3e-6)


def test_layer_norm_no_affine_and_eps(rng):
    x = randn(rng, 4, 33)
    assert_close(ops.layer_norm(x), ref.layer_norm(x)[0], atol_scale=3e-6)
    c = np.full((2, 8), 3.0, np.float32)      # zero variance: eps decides
    np.testing.assert_array_equal(ops.layer_norm(c, eps=1.0), np.zeros((2, 8), np.float32))


def test_layer_norm_in_place(rng):
    x = randn(rng, 6, 20)
    expect = ops.layer_norm(x)
    assert ops.layer_norm(x, out=x) is x
    np.testing.assert_array_equal(x, expect)


def test_layer_norm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, w, b = randn(rng, 64, 768), randn(rng, 768), randn(rng, 768)
    t = torch.nn.functional.layer_norm(torch.from_numpy(x), (768,), torch.from_numpy(w), torch.from_numpy(b))
    np.testing.assert_allclose(ops.layer_norm(x, w, b), t.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [0.1, 3.3, -7.77, 1000.1, 10000.3, 1e30])
@pytest.mark.parametrize("n", [1, 7, 768, 4096])
def test_layer_norm_constant_row_is_exactly_centred(isa, value, n):
    # A constant row normalises to exactly 0 (the output is the bias), as torch's does. The mean was a
    # float32 sum: off by up to ~n/2 ulps, which the normalisation scaled to 6e-4 (3.3 over 4096
    # features) or 0.9 (10000.3). With eps=0 the variance is exactly 0, so 0/0: NaN, as in torch.
    x = np.full((3, n), value, np.float32)
    b = np.linspace(-1, 1, n, dtype=np.float32)
    np.testing.assert_array_equal(ops.layer_norm(x), np.zeros_like(x))
    np.testing.assert_array_equal(ops.layer_norm(x, np.full(n, 2.0, np.float32), b), np.broadcast_to(b, x.shape))
    np.testing.assert_array_equal(ops.layer_norm(x - 1, residual=np.ones_like(x)), ops.layer_norm(x - 1 + 1))
    assert np.isnan(ops.layer_norm(x, eps=0.0)).all()
