"""The backward ops (training) against float64 references and torch.autograd: random upstream gradients
(never one built from the output), strided and converted inputs, odd sizes, every ISA path."""
import numpy as np
import pytest

from coreformer import ops

import reference as ref
from conftest import randn

SIZES = [(1,), (7,), (63,), (65,), (3, 1000), (2, 7, 33)]


def norm_rel(got, want):
    """|got - want| / |want| over the whole array (the issue's norm-wise relative error)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def gelu_grad_f64(x):
    x = np.asarray(x, np.float64)
    return ref.gelu(x) / np.where(x == 0, 1, x) * (x != 0) + 0.5 * (x == 0) + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)


def gelu_tanh_grad_f64(x):
    x = np.asarray(x, np.float64)
    c = np.sqrt(2 / np.pi)
    v = 2 * c * (x + 0.044715 * x ** 3)
    s = 1 / (1 + np.exp(-v))
    return s + x * s * (1 - s) * 2 * c * (1 + 3 * 0.044715 * x ** 2)


@pytest.mark.parametrize("shape", SIZES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_backward(isa, rng, shape, approximate):
    x, dy = randn(rng, *shape, scale=3), randn(rng, *shape)
    want = dy * (gelu_grad_f64(x) if approximate == "none" else gelu_tanh_grad_f64(x))
    got = ops.gelu_backward(dy, x, approximate)
    assert got.dtype == np.float32 and got.shape == x.shape
    assert norm_rel(got, want) < 1e-6
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_gelu_backward_tails_and_limits(isa):
    # far tails: 0 below, 1 above (no inf * 0); the derivative is finite everywhere
    x = np.array([-np.inf, -1e30, -40, -20, -13.5, -13, -5, -1e-30, 0, 1e-30, 5, 13, 13.5, 20, 40, 1e30, np.inf],
                 np.float32)
    for approximate, grad in (("none", gelu_grad_f64), ("tanh", gelu_tanh_grad_f64)):
        got = ops.gelu_backward(np.ones_like(x), x, approximate)
        finite = np.isfinite(x)
        with np.errstate(all="ignore"):
            want = grad(np.clip(x, -40, 40))
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-7)
        assert abs(got[0]) < 1e-30 and got[-1] == 1  # exp's floor leaves ~1e-35 where the density underflows
    assert np.isnan(ops.gelu_backward(np.ones(3, np.float32), np.array([0, np.nan, 1], np.float32))[1])


@pytest.mark.parametrize("shape", SIZES)
def test_relu_backward(isa, rng, shape):
    x, dy = randn(rng, *shape), randn(rng, *shape)
    x.flat[0] = 0.0  # torch: no gradient at 0
    np.testing.assert_array_equal(ops.relu_backward(dy, x), np.where(x > 0, dy, 0))


@pytest.mark.parametrize("shape,axis", [((1,), 0), ((7,), -1), ((5, 63), -1), ((3, 65, 4), 1), ((2, 7, 1000), -1),
                                        ((4, 9, 17), 0), ((6, 1), 1)])
def test_softmax_backward(isa, rng, shape, axis):
    y = ops.softmax(randn(rng, *shape, scale=3), axis=axis)
    dy = randn(rng, *shape)
    y64 = y.astype(np.float64)
    want = y64 * (dy - (dy * y64).sum(axis=axis, keepdims=True))
    got = ops.softmax_backward(dy, y, axis)
    assert norm_rel(got, want) < 1e-5  # dy - <dy, y> cancels where they are close: float32 rounding of the dot


def test_backward_against_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    x = randn(rng, 6, 40, scale=3)
    for name, f, grad in (("gelu", lambda t: torch.nn.functional.gelu(t), lambda dy: ops.gelu_backward(dy, x)),
                          ("gelu_tanh", lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
                           lambda dy: ops.gelu_backward(dy, x, "tanh")),
                          ("relu", torch.relu, lambda dy: ops.relu_backward(dy, x)),
                          ("softmax", lambda t: torch.softmax(t, -1),
                           lambda dy: ops.softmax_backward(dy, ops.softmax(x), -1))):
        t = torch.tensor(x.astype(np.float64), requires_grad=True)
        dy = randn(rng, 6, 40)
        f(t).backward(torch.tensor(dy.astype(np.float64)))
        assert norm_rel(grad(dy), t.grad.numpy()) < 1e-5, name


def test_backward_inputs_converted_and_checked(rng):
    x, dy = randn(rng, 8, 16), randn(rng, 8, 16)
    want = ops.gelu_backward(dy, x)
    # strided, reversed, float64 and big-endian inputs give the same answer
    np.testing.assert_array_equal(ops.gelu_backward(dy.astype(np.float64), np.flip(np.flip(x, 0).copy(), 0)), want)
    np.testing.assert_array_equal(ops.gelu_backward(dy.astype(">f4"), np.asfortranarray(x)), want)
    with pytest.raises(ValueError, match=r"grad_output has shape \(8, 15\) but x has shape \(8, 16\)"):
        ops.gelu_backward(dy[:, 1:], x)
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu_backward(dy, x, "sigmoid")
    with pytest.raises(TypeError, match="approximate"):
        ops.gelu_backward(dy, x, None)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="grad_output has shape"):
        ops.softmax_backward(dy[:3], ops.softmax(x))
    with pytest.raises(IndexError, match="axis 2"):
        ops.softmax_backward(dy, ops.softmax(x), 2)
    with pytest.raises(TypeError, match="x"):
        ops.relu_backward(dy, np.array([["a"]]))
