import numpy as np
import pytest

from coreformer import ops

import reference as ref
from conftest import assert_close, randn


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.int16, np.uint32])
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 65), (2, 3, 4)])
def test_embedding(rng, dtype, shape):
    table = randn(rng, 200, 7)
    ids = rng.integers(0, 200, size=shape).astype(dtype)
    got = ops.embedding(ids, table)
    assert got.shape == shape + (7,)
    np.testing.assert_array_equal(got, table[ids.astype(np.int64)])


def test_embedding_bounds(rng):
    table = randn(rng, 10, 4)
    ops.embedding(np.array([0, 9]), table)
    for bad in (10, -1, 2 ** 40):
        with pytest.raises(IndexError, match=str(bad)):
            ops.embedding(np.array([1, bad, 2], np.int64), table)
    with pytest.raises(IndexError):
        ops.embedding(np.array([-1], np.int32), table)
    # uint64 past int64's range: the error names the real value, not the negative it would cast to
    with pytest.raises(IndexError, match=r"ids\[1\] .* 9223372036854775808"):
        ops.embedding(np.array([1, 2 ** 63, 2], np.uint64), table)
    assert ops.embedding(np.array([9, 0], np.uint64), table).shape == (2, 4)


@pytest.mark.parametrize("n,dim", [(0, 4), (1, 1), (7, 7), (65, 64), (1000, 63)])
def test_sinusoidal_positions(n, dim):
    got = ops.sinusoidal_positions(n, dim)
    assert got.shape == (n, dim) and got.dtype == np.float32
    assert_close(got, ref.sinusoidal(n, dim), rtol=0, atol_scale=1e-7)


def test_sinusoidal_matches_vaswani():
    pe = ops.sinusoidal_positions(50, 16)
    p, i = 17, 3
    assert pe[p, 2 * i] == pytest.approx(np.sin(p / 10000 ** (2 * i / 16)), abs=1e-7)
    assert pe[p, 2 * i + 1] == pytest.approx(np.cos(p / 10000 ** (2 * i / 16)), abs=1e-7)
    np.testing.assert_array_equal(pe[0, 1::2], 1.0)
