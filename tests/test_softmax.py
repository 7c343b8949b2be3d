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



def test_softmax_nan_gives_nan(isa, rng):
    # A NaN anywhere in a slice makes that slice NaN, as torch does -- the all-NaN slice (whose max reads
    # as -inf, the "nothing to attend" case) too: it must not come back as zeros. Other slices untouched.
    x = randn(rng, 5, 37)
    x[0, 4] = np.nan
    x[1, :] = np.nan
    x[2, :] = -np.inf
    x[2, 7] = np.nan
    for axis, xx in ((-1, x), (0, np.ascontiguousarray(x.T))):
        y = ops.softmax(xx, axis=axis)
        y = y if axis == -1 else y.T
        assert np.isnan(y[:3]).all()
        assert_close(y[3:], ref.softmax(x[3:]), atol_scale=1e-6)

def test_softmax_relative_accuracy_over_exp_range(isa):
    # Every term relative to float64 down to exp(-86.4) (rows and strided axis), as long as the
    # result is a normal float (atol covers the subnormal quotients); below exp(-125.5 ln 2) = exp(-86.99)
    # ~ 1.7e-38 the kernel's exp flushes to 0. The maximum is 0 here, so x - max is exact in float32.
    # 40 rows of 100 terms (short sums, so the sum's own rounding stays ~1e-7), all offsets covered
    d = np.linspace(-86.4, 0, 4000).reshape(100, 40).T.copy()
    d[:, -1] = 0
    x = d.astype(np.float32)
    for axis in (-1, 0):
        xx = x if axis == -1 else np.ascontiguousarray(x.T)
        want = ref.softmax(xx, axis)
        got = ops.softmax(xx, axis=axis)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-37 / 8)
    x = np.array([[0.0, -86.0, -87.0, -100.0, -np.inf, np.nan]], np.float32)
    y = ops.softmax(x[:, :5])
    assert y[0, 0] == 1.0 and 0 < y[0, 1] < 1e-37 and y[0, 2] < 3e-38 and y[0, 3] == 0 and y[0, 4] == 0
    assert np.all(np.isnan(ops.softmax(x)))


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
