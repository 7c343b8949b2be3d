import numpy as np
import pytest

from coreformer import ops

import reference as ref
from conftest import assert_close, randn


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 63), (5, 65), (2, 1000), (4, 3, 17), (2, 5, 7, 3)])
def test_softmax_every_axis(isa, rng, shape):
    x = randn(rng, *shape, scale=4)
    for axis in range(-len(shape), len(shape)):
        assert_close(ops.softmax(x, axis=axis), ref.softmax(x, axis), atol_scale=1e-6)


def test_softmax_masked_rows(isa, rng):
    x = randn(rng, 4, 37)
    x[0, :] = -np.inf
    x[1, ::2] = -np.inf
    y = ops.softmax(x)
    assert np.all(y[0] == 0)
    assert_close(y, ref.softmax(x), atol_scale=1e-6)
    x3 = randn(rng, 3, 9, 20)
    x3[1, :, 4] = -np.inf
    assert_close(ops.softmax(x3, axis=1), ref.softmax(x3, 1), atol_scale=1e-6)


def test_softmax_large_values(rng):
    x = randn(rng, 3, 100, scale=1000)
    y = ops.softmax(x)
    assert np.isfinite(y).all()
    assert_close(y, ref.softmax(x), atol_scale=1e-6)


def test_softmax_in_place(rng):
    x = randn(rng, 8, 30)
    expect = ops.softmax(x)
    ops.softmax(x, out=x)
    np.testing.assert_array_equal(x, expect)
