"""ops.argmax (the last axis; greedy decoding's pick, on the device where the logits are) against numpy."""
import numpy as np
import pytest

import coreformer as cf
from coreformer import ops

from conftest import randn


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 65), (2, 5, 1000), (4, 1), (0, 7)])
def test_matches_numpy(shape, rng):
    x = randn(rng, *shape)
    got = ops.argmax(x)
    assert got.dtype == np.int64 and got.shape == shape[:-1]
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))


def test_ties_nan_and_inf():
    x = np.array([[1, 3, 3, 2], [np.nan, 5, np.nan, 1], [-np.inf, -np.inf, -np.inf, -np.inf],
                  [0, np.inf, 7, np.inf], [2, 1, 0, np.nan]], np.float32)
    np.testing.assert_array_equal(ops.argmax(x), np.argmax(x, axis=-1))  # first max; first NaN wins


def test_tensors_and_conversion(rng):
    x = randn(rng, 3, 17)
    t = ops.argmax(cf.tensor(x))
    assert isinstance(t, cf.Tensor) and t.dtype == "int64"
    np.testing.assert_array_equal(t.numpy(), np.argmax(x, -1))
    np.testing.assert_array_equal(ops.argmax(np.array([[1, 9, 3]])), [1])  # ints are converted


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ops.argmax(np.float32(1.0))
    with pytest.raises(ValueError, match="last axis is empty"):
        ops.argmax(np.zeros((3, 0), np.float32))
    with pytest.raises(TypeError):
        ops.argmax(np.array(["a"]))
    with pytest.raises(TypeError, match="float32"):
        ops.argmax(cf.tensor(np.ones((2, 3)), dtype="float16"))  # the CPU computes in float32
