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


def layer_norm_grads_f64(x, w, dy, eps, residual=None):
    """float64 gradients of layer_norm: dx by the closed form, dweight and dbias by their sums."""
    s = np.asarray(x, np.float64) + (0 if residual is None else np.asarray(residual, np.float64))
    mu = s.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((s - mu) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (s - mu) * rstd
    g = dy * (1.0 if w is None else np.asarray(w, np.float64))
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    lead = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(lead), dy.sum(lead)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 63), (4, 65), (70, 768), (2, 3, 1000), (200, 33)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_backward(isa, rng, shape, affine):
    x, dy = randn(rng, *shape, scale=2) + 1, randn(rng, *shape).astype(np.float64)
    w = randn(rng, shape[-1]) + 1 if affine else None
    dx, dw, db = ops.layer_norm_backward(dy, x, w, 1e-5)
    want_dx, want_dw, want_db = layer_norm_grads_f64(x, w, dy, 1e-5)
    assert norm_rel(dx, want_dx) < 1e-5
    assert norm_rel(db, want_db) < 1e-6
    if affine:
        assert norm_rel(dw, want_dw) < 1e-5
    else:
        assert dw is None


def test_layer_norm_backward_with_residual_and_torch(rng):
    torch = pytest.importorskip("torch")
    x, r, dy = randn(rng, 9, 40), randn(rng, 9, 40), randn(rng, 9, 40)
    w, b = randn(rng, 40) + 1, randn(rng, 40)
    tx, tr = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, r))
    tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (w, b))
    torch.nn.functional.layer_norm(tx + tr, (40,), tw, tb, 1e-6).backward(torch.tensor(dy.astype(np.float64)))
    dx, dw, db = ops.layer_norm_backward(dy, x, w, 1e-6, residual=r)
    for got, want in ((dx, tx.grad), (dx, tr.grad), (dw, tw.grad), (db, tb.grad)):
        assert norm_rel(got, want.numpy()) < 1e-5


def test_layer_norm_backward_is_the_same_on_any_thread_count(rng):
    import coreformer
    x, dy, w = randn(rng, 300, 96), randn(rng, 300, 96), randn(rng, 96)
    before = coreformer.get_num_threads()
    try:
        got = []
        for n in (1, 2, 3):
            coreformer.set_num_threads(n)
            got.append(ops.layer_norm_backward(dy, x, w))
    finally:
        coreformer.set_num_threads(before)
    for other in got[1:]:
        for a, b in zip(got[0], other):
            np.testing.assert_array_equal(a, b)


def test_layer_norm_backward_bad_input(rng):
    x, dy = randn(rng, 4, 8), randn(rng, 4, 8)
    with pytest.raises(ValueError, match=r"grad_output has shape \(4, 7\) but x has shape \(4, 8\)"):
        ops.layer_norm_backward(dy[:, 1:], x)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        ops.layer_norm_backward(dy, x, randn(rng, 7))
    with pytest.raises(ValueError, match="residual has shape"):
        ops.layer_norm_backward(dy, x, residual=x[:2])
    with pytest.raises(ValueError, match="eps"):
        ops.layer_norm_backward(dy, x, eps=-1.0)
    empty = ops.layer_norm_backward(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32), np.ones(5))
    assert empty[0].shape == (0, 5) and not empty[1].any() and not empty[2].any()
