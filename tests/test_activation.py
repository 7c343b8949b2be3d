import numpy as np
import pytest

from coreformer import ops

import reference as ref
from conftest import assert_close, randn


def grid():
    return np.concatenate([np.linspace(-12, 12, 4801), [0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 30, -30, 100, -100]]
                          ).astype(np.float32)


def rel_err(got, want, floor=1e-30):
    want = np.asarray(want, np.float64)
    return np.abs(got - want) / np.maximum(np.abs(want), floor)


@pytest.mark.parametrize("n", [1, 7, 63, 65, 1000, 100003])
def test_gelu_sizes(isa, rng, n):
    x = randn(rng, n, scale=3)
    assert_close(ops.gelu(x), ref.gelu(x), rtol=1e-6, atol_scale=1e-7)
    assert_close(ops.gelu(x, approximate="tanh"), ref.gelu_tanh(x), rtol=1e-6, atol_scale=1e-7)


def test_gelu_accuracy_everywhere(isa):
    x = grid()
    r = ref.gelu(x)
    # relative accuracy wherever the true value is a normal float32, both tails included
    normal = np.abs(r) > 1e-37
    assert rel_err(ops.gelu(x)[normal], r[normal]).max() < 1e-6
    rt = ref.gelu_tanh(x)
    normal = np.abs(rt) > 1e-37
    err_t = rel_err(ops.gelu(x, approximate="tanh")[normal], rt[normal])
    # tanh form: the exp argument 2u ~ 1.6 x + 0.07 x^3 is rounded once, so the far negative tail
    # (|gelu| < 1e-8, x < -5) carries up to |2u| * 6e-8 of relative error.
    assert err_t[x[normal] > -5].max() < 2e-6
    assert err_t.max() < 2e-5
    assert np.all(np.abs(ops.gelu(x)[~(np.abs(r) > 1e-37)]) < 1e-36)


def test_gelu_both_paths(isa):
    # A vector whose lanes all lie within |x| <= 13 takes the fast tail (erfcx polynomial); one lane
    # beyond sends the whole vector down the exponent-polynomial path. Every value in [-13, 13] is
    # checked both ways: alone, and with a 14 (or -14) in every group of 8 (every vector of any width).
    x = np.linspace(-13, 13, 7 * 20001).astype(np.float32)
    fast = ops.gelu(x)
    mixed = np.empty(x.size // 7 * 8, np.float32).reshape(-1, 8)
    mixed[:, :7] = x.reshape(-1, 7)
    mixed[:, 7] = np.where(np.arange(mixed.shape[0]) % 2 == 0, 14.0, -14.0)
    slow = ops.gelu(mixed)[:, :7].ravel()
    r = ref.gelu(x)
    normal = np.abs(r) > 1e-37
    assert rel_err(fast[normal], r[normal]).max() < 1e-6
    assert rel_err(slow[normal], r[normal]).max() < 1e-6
    np.testing.assert_allclose(ops.gelu(mixed)[:, 7], ref.gelu(mixed[:, 7]), rtol=1e-6, atol=1e-37)  # -14: subnormal


def test_relu(isa, rng):
    x = randn(rng, 1001)
    np.testing.assert_array_equal(ops.relu(x), np.maximum(x, 0))


def test_nan_and_inf_propagate(isa):
    x = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    for y in (ops.gelu(x), ops.gelu(x, approximate="tanh"), ops.relu(x)):
        assert np.isnan(y[0])
        assert y[1] == np.inf and y[3] > 0
    # the limits, where torch gives NaN for erf-GELU at +-inf
    assert ops.relu(x)[2] == 0 and ops.gelu(x)[2] == 0 and ops.gelu(x, approximate="tanh")[2] == 0


def test_activation_shapes_and_in_place(rng):
    x = randn(rng, 2, 3, 5)
    assert ops.gelu(x).shape == (2, 3, 5)
    expect = ops.gelu(x)
    ops.gelu(x, out=x)
    np.testing.assert_array_equal(x, expect)
    assert ops.relu(np.float32(-2.0)).shape == ()


def test_gelu_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = randn(rng, 10000, scale=4)
    for a in ("none", "tanh"):
        t = torch.nn.functional.gelu(torch.from_numpy(x), approximate=a).numpy()
        np.testing.assert_allclose(ops.gelu(x, approximate=a), t, rtol=1e-5, atol=1e-6)
