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
