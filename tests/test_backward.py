"""The backward ops (training) against float64 references and torch.autograd: random upstream gradients
(never one built from the output), strided and converted inputs, odd sizes, every ISA path."""
from typing import Any

import numpy as np
import pytest

from coreformer import ops

import reference as ref
from conftest import assert_same_on_thread_counts, randn

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
    x, dy, w = randn(rng, 300, 96), randn(rng, 300, 96), randn(rng, 96)
    assert_same_on_thread_counts(lambda: ops.layer_norm_backward(dy, x, w))


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


@pytest.mark.parametrize("ids_shape,V,D", [((1,), 1, 1), ((7,), 5, 7), ((3, 21), 10, 63), ((4, 65), 300, 65),
                                           ((2, 500), 1000, 33)])
def test_embedding_backward(rng, ids_shape, V, D):
    ids = rng.integers(0, V, ids_shape)
    dy = randn(rng, *ids_shape, D)
    want = np.zeros((V, D))
    np.add.at(want, ids.reshape(-1), dy.reshape(-1, D).astype(np.float64))
    got = ops.embedding_backward(dy, ids, V)
    assert got.shape == (V, D) and norm_rel(got, want) < 1e-6
    np.testing.assert_array_equal(ops.embedding_backward(dy, ids.astype(np.int32), V), got)
    pad = int(ids.reshape(-1)[0])
    padded = ops.embedding_backward(dy, ids, V, padding_idx=pad)
    assert not padded[pad].any()
    np.testing.assert_array_equal(np.delete(padded, pad, 0), np.delete(got, pad, 0))
    np.testing.assert_array_equal(ops.embedding_backward(dy, ids, V, padding_idx=pad - V), padded)  # torch's negative


def test_embedding_backward_matches_torch_and_any_thread_count(rng):
    torch = pytest.importorskip("torch")
    ids = rng.integers(0, 50, (8, 40))
    ids[:, :5] = 7  # many repeats of one row
    dy = randn(rng, 8, 40, 24)
    table = torch.zeros(50, 24, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.embedding(torch.tensor(ids), table, padding_idx=3).backward(torch.tensor(dy.astype(np.float64)))
    assert norm_rel(ops.embedding_backward(dy, ids, 50, padding_idx=3), table.grad.numpy()) < 1e-6
    assert_same_on_thread_counts(lambda: ops.embedding_backward(dy, ids, 50))


def test_embedding_backward_bad_input(rng):
    dy = randn(rng, 2, 3, 4)
    with pytest.raises(IndexError, match=r"ids\[4\] \(flat index\) is 9, outside the table's 5 rows"):
        ops.embedding_backward(dy, np.array([[0, 1, 2], [3, 9, 0]]), 5)
    with pytest.raises(ValueError, match="grad_output must have shape ids.shape"):
        ops.embedding_backward(dy[:, :2], np.zeros((2, 3), np.int64), 5)
    with pytest.raises(TypeError, match="ids must be an integer array"):
        ops.embedding_backward(dy, np.zeros((2, 3)), 5)
    with pytest.raises(IndexError, match="padding_idx 5"):
        ops.embedding_backward(dy, np.zeros((2, 3), np.int64), 5, padding_idx=5)
    with pytest.raises(ValueError, match="num_embeddings must be >= 0"):
        ops.embedding_backward(dy, np.zeros((2, 3), np.int64), -1)


def cross_entropy_f64(logits, labels, ignore_index=-100, smoothing=0.0):
    """(per-row losses, dlogits of their sum) in float64."""
    x = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    y = np.asarray(labels).reshape(-1)
    C = x.shape[1]
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    keep = y != ignore_index
    target = np.full_like(x, smoothing / C)
    target[np.arange(len(y))[keep], y[keep]] += 1 - smoothing
    losses = np.where(keep, lse - (target * x).sum(1), 0.0)
    grad = np.where(keep[:, None], np.exp(x - lse[:, None]) - target, 0.0)
    return losses.reshape(labels.shape), grad.reshape(logits.shape)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 63), (2, 9, 65), (4, 1000), (2, 3, 50257)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(isa, rng, shape, smoothing):
    logits = randn(rng, *shape, scale=3)
    labels = rng.integers(0, shape[-1], shape[:-1])
    labels.reshape(-1)[::3] = -100  # ignored rows
    losses, grad = cross_entropy_f64(logits, labels, smoothing=smoothing)
    counted = (labels != -100).sum()
    loss, dlogits = ops.cross_entropy(logits, labels, label_smoothing=smoothing, return_grad=True)
    if counted:
        assert abs(loss - losses.sum() / counted) <= 1e-6 * max(1.0, abs(loss))
        assert norm_rel(dlogits, grad / counted) < 1e-5
    else:
        assert np.isnan(loss) and not dlogits.any()
    total, dsum = ops.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="sum", return_grad=True)
    assert abs(total - losses.sum()) <= 1e-6 * max(1.0, abs(total))
    assert norm_rel(dsum, grad) < 1e-5
    per_row = ops.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="none")
    assert per_row.shape == labels.shape and norm_rel(per_row, losses) < 1e-6
    assert isinstance(ops.cross_entropy(logits, labels), float)


def test_cross_entropy_matches_torch(rng):
    torch = pytest.importorskip("torch")
    logits, labels = randn(rng, 6, 11, 37, scale=2), rng.integers(0, 37, (6, 11))
    labels[0, :4] = 5
    labels[2, 3] = -1
    cases: list[dict] = [dict(), dict(ignore_index=5), dict(label_smoothing=0.2),
                         dict(ignore_index=-1, label_smoothing=0.05)]
    for kw in cases:
        ignore = kw.get("ignore_index", -100)
        y = np.where(labels == -1, ignore, labels)  # the one odd label is ignored in every case
        t = torch.tensor(logits.astype(np.float64), requires_grad=True)
        want = torch.nn.functional.cross_entropy(t.reshape(-1, 37), torch.tensor(y.reshape(-1)), ignore_index=ignore,
                                                 label_smoothing=kw.get("label_smoothing", 0.0))
        want.backward()
        loss, grad = ops.cross_entropy(logits, y, return_grad=True, **kw)
        assert abs(loss - want.item()) < 1e-6 * abs(want.item()) + 1e-7, kw
        assert norm_rel(grad, t.grad.numpy()) < 1e-5, kw


def test_cross_entropy_bad_input(rng):
    logits = randn(rng, 4, 6)
    with pytest.raises(IndexError, match=r"labels\[2\] \(flat index\) is 6, outside the 6 classes"):
        ops.cross_entropy(logits, np.array([0, 1, 6, 2]))
    with pytest.raises(IndexError, match="is -5"):
        ops.cross_entropy(logits, np.array([0, 1, -5, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        ops.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        ops.cross_entropy(logits, np.zeros(4))
    with pytest.raises(ValueError, match="reduction"):
        ops.cross_entropy(logits, np.zeros(4, np.int64), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.cross_entropy(logits, np.zeros(4, np.int64), label_smoothing=1.5)
    with pytest.raises(ValueError, match="at least one class"):
        ops.cross_entropy(np.zeros((4, 0), np.float32), np.zeros(4, np.int64))
    assert np.isnan(ops.cross_entropy(logits, np.full(4, -100)))  # nothing counted: NaN, as torch's mean


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 7, 7), (63, 65, 17), (65, 63, 129), (300, 96, 70), (2, 1000, 3)])
@pytest.mark.parametrize("act", [None, "relu", "gelu", "gelu_tanh"])
def test_linear_backward(isa, rng, m, k, n, act):
    x, w, b, dy = randn(rng, m, k), randn(rng, n, k, scale=0.3), randn(rng, n), randn(rng, m, n)
    z = ref.linear(x, w, b)
    dz = dy * {None: lambda t: 1.0, "relu": lambda t: (t > 0), "gelu": gelu_grad_f64,
               "gelu_tanh": gelu_tanh_grad_f64}[act](z)
    pre = z.astype(np.float32) if act else None
    dx, dw, db = ops.linear_backward(dy, x, w, act, pre)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (n,)
    assert norm_rel(dx, dz @ w.astype(np.float64)) < 1e-5
    assert norm_rel(dw, dz.T @ x.astype(np.float64)) < 1e-5
    assert norm_rel(db, dz.sum(0)) < 1e-5


def test_linear_backward_batched_matches_torch_and_any_thread_count(rng):
    torch = pytest.importorskip("torch")
    x, w, b, dy = randn(rng, 3, 41, 96), randn(rng, 200, 96, scale=0.1), randn(rng, 200), randn(rng, 3, 41, 200)
    tx, tw, tb = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, w, b))
    z = torch.nn.functional.linear(tx, tw, tb)
    torch.nn.functional.gelu(z).backward(torch.tensor(dy.astype(np.float64)))
    pre = ops.linear(x, w, b)
    got = ops.linear_backward(dy, x, w, "gelu", pre)
    for g, t in zip(got, (tx.grad, tw.grad, tb.grad)):
        assert norm_rel(g, t.numpy()) < 1e-5
    assert_same_on_thread_counts(lambda: ops.linear_backward(dy, x, w, "gelu", pre))


def test_linear_backward_bad_input(rng):
    x, w, dy = randn(rng, 4, 8), randn(rng, 5, 8), randn(rng, 4, 5)
    with pytest.raises(ValueError, match=r"grad_output has shape \(4, 4\) but linear\(x, weight\) has shape \(4, 5\)"):
        ops.linear_backward(dy[:, :4], x, w)
    with pytest.raises(ValueError, match="needs pre_activation"):
        ops.linear_backward(dy, x, w, "gelu")
    with pytest.raises(ValueError, match="pre_activation has shape"):
        ops.linear_backward(dy, x, w, "relu", dy[:2])
    with pytest.raises(TypeError, match="not a PackedWeight"):
        ops.linear_backward(dy, x, ops.pack_weight(w))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="swish"):
        ops.linear_backward(dy, x, w, "swish", dy)
    with pytest.raises(ValueError, match=r"x's last axis \(7\) must equal weight.shape\[1\] \(8\)"):
        ops.linear_backward(dy, x[:, :7], w)
    dx, dw, db = ops.linear_backward(np.zeros((0, 5), np.float32), np.zeros((0, 8), np.float32), w)
    assert dx.shape == (0, 8) and not dw.any() and not db.any()


def sdpa_f64(q, k, v, go, mask=None, causal=False, scale=None, keep=None):
    """float64 closed forms: (output, lse, dq, dk, dv); a row with nothing to attend has zero output, lse -inf.
    ``keep``: dropout's factors on the probabilities (0 or 1 / (1 - p)), softmax first."""
    q, k, v, go = (np.asarray(a, np.float64) for a in (q, k, v, go))
    sq, sk = q.shape[-2], k.shape[-2]
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * q @ np.swapaxes(k, -1, -2)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask.astype(np.float64)
    if causal:
        s = np.where(np.tril(np.ones((sq, sk), bool), sk - sq), s, -np.inf)
    m = s.max(-1, keepdims=True)
    dead = m == -np.inf
    e = np.where(dead, 0, np.exp(s - np.where(dead, 0, m)))
    total = e.sum(-1, keepdims=True)
    p = e / np.where(dead, 1, total)
    with np.errstate(divide="ignore"):
        lse = np.where(dead, -np.inf, m + np.log(np.where(dead, 1, total)))[..., 0]
    keep = np.ones_like(p) if keep is None else keep
    o = (p * keep) @ v
    dv = np.swapaxes(p * keep, -1, -2) @ go
    dp = (go @ np.swapaxes(v, -1, -2)) * keep
    ds = p * (dp - (go * o).sum(-1, keepdims=True))
    return o, lse, scale * ds @ k, scale * np.swapaxes(ds, -1, -2) @ q, dv


ATTN_SHAPES = [(1, 1, 1, 1, 1, 1), (1, 2, 7, 7, 8, 8), (2, 3, 63, 65, 16, 7), (1, 1, 65, 63, 64, 64),
               (1, 2, 5, 1000, 32, 32), (2, 1, 130, 129, 64, 33), (1, 3, 49, 300, 128, 96)]


def attention_mask_case(rng, kind, B, Sq, Sk):
    """None, a bool mask (B, 1, Sq, Sk) with ~30% masked, or a float one (Sq, Sk) with ~20% -inf."""
    if kind == "bool":
        return rng.random((B, 1, Sq, Sk)) > 0.3
    if kind == "float":
        mask = randn(rng, Sq, Sk)
        mask[rng.random((Sq, Sk)) < 0.2] = -np.inf
        return mask
    return None


@pytest.mark.parametrize("B,H,Sq,Sk,D,Dv", ATTN_SHAPES)
@pytest.mark.parametrize("mask_kind", [None, "bool", "float"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_backward(isa, rng, B, H, Sq, Sk, D, Dv, mask_kind, causal):
    q, k, v, go = randn(rng, B, H, Sq, D), randn(rng, B, H, Sk, D), randn(rng, B, H, Sk, Dv), randn(rng, B, H, Sq, Dv)
    mask = attention_mask_case(rng, mask_kind, B, Sq, Sk)
    out, lse = ops.scaled_dot_product_attention_forward(q, k, v, mask, causal)
    np.testing.assert_array_equal(out, ops.scaled_dot_product_attention(q, k, v, mask, causal))
    want = sdpa_f64(q, k, v, go, mask, causal)
    assert norm_rel(out, want[0]) < 2e-6
    np.testing.assert_allclose(lse, want[1], rtol=1e-6, atol=1e-5)
    assert lse.shape == (B, H, Sq) and lse.dtype == np.float32
    grads = ops.scaled_dot_product_attention_backward(go, q, k, v, out, lse, mask, causal)
    for got, ref_, a in zip(grads, want[2:], (q, k, v)):
        assert got.shape == a.shape and got.dtype == np.float32
        assert norm_rel(got, ref_) < 2e-6
    # without the forward's output and lse: the forward runs again, the same numbers
    for got, again in zip(grads, ops.scaled_dot_product_attention_backward(go, q, k, v, None, None, mask, causal)):
        np.testing.assert_array_equal(got, again)


def attention_keep(shape, p, seed, offset):
    """Dropout's factors over the (B, H, Sq, Sk) probabilities: the stream's words in that order."""
    words = __import__("coreformer")._core.philox_words(int(np.prod(shape)), seed, offset).reshape(shape)
    return np.where(words < int((1 - p) * 2 ** 32), 1 / (1 - p), 0.0)


@pytest.mark.parametrize("B,H,Sq,Sk,D,Dv", ATTN_SHAPES)
@pytest.mark.parametrize("mask_kind,causal", [(None, False), (None, True), ("bool", False), ("float", True)])
def test_attention_dropout_forward_and_backward(isa, rng, B, H, Sq, Sk, D, Dv, mask_kind, causal):
    """Dropout on the probabilities inside the kernels: the forward's output and the backward's gradients
    equal float64 closed forms with the stream's mask (softmax first; lse the undropped one), word for word."""
    q, k, v, go = randn(rng, B, H, Sq, D), randn(rng, B, H, Sk, D), randn(rng, B, H, Sk, Dv), randn(rng, B, H, Sq, Dv)
    mask = attention_mask_case(rng, mask_kind, B, Sq, Sk)
    p, seed, offset = 0.3, 1234, 77
    drop: dict[str, Any] = dict(dropout_p=p, seed=seed, offset=offset)
    out, lse = ops.scaled_dot_product_attention_forward(q, k, v, mask, causal, **drop)
    want = sdpa_f64(q, k, v, go, mask, causal, keep=attention_keep((B, H, Sq, Sk), p, seed, offset))
    assert norm_rel(out, want[0]) < 2e-6
    np.testing.assert_allclose(lse, want[1], rtol=1e-6, atol=1e-5)
    grads = ops.scaled_dot_product_attention_backward(go, q, k, v, out, lse, mask, causal, **drop)
    for got, ref_ in zip(grads, want[2:]):
        assert norm_rel(got, ref_) < 2e-6
    for got, again in zip(grads, ops.scaled_dot_product_attention_backward(go, q, k, v, None, None, mask, causal,
                                                                           **drop)):
        np.testing.assert_array_equal(got, again)  # the forward run again draws the same mask
    # p = 0 is no dropout at all; another offset is another mask
    np.testing.assert_array_equal(ops.scaled_dot_product_attention_forward(q, k, v, mask, causal, dropout_p=0.0,
                                                                           seed=seed)[0],
                                  ops.scaled_dot_product_attention_forward(q, k, v, mask, causal)[0])
    if Sq * Sk >= 49:
        other = ops.scaled_dot_product_attention_forward(q, k, v, mask, causal, dropout_p=p, seed=seed, offset=9)[0]
        assert not np.array_equal(other, out)


def test_attention_dropout_threads_keep_rate_and_bad_input(rng):
    q, k, v = randn(rng, 2, 3, 70, 16), randn(rng, 2, 3, 90, 16), np.ones((2, 3, 90, 1), np.float32)
    drop: dict[str, Any] = dict(dropout_p=0.25, seed=5, offset=0)
    assert_same_on_thread_counts(lambda: ops.scaled_dot_product_attention_forward(q, k, v, **drop))
    go = randn(rng, 2, 3, 70, 1)
    assert_same_on_thread_counts(lambda: ops.scaled_dot_product_attention_backward(go, q, k, v, **drop))
    # V = 1: each output is the kept probabilities' sum over 1 - p, 1 in expectation
    out, _ = ops.scaled_dot_product_attention_forward(q, k, v, **drop)
    assert abs(float(out.mean()) - 1.0) < 0.05
    with pytest.raises(ValueError, match="needs a seed"):
        ops.scaled_dot_product_attention_forward(q, k, v, dropout_p=0.1)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
            ops.scaled_dot_product_attention_forward(q, k, v, dropout_p=bad, seed=1)
        with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
            ops.scaled_dot_product_attention_backward(go, q, k, v, dropout_p=bad, seed=1)
    with pytest.raises(ValueError, match="offset"):
        ops.scaled_dot_product_attention_forward(q, k, v, dropout_p=0.1, seed=1, offset=-1)
    with pytest.raises(TypeError):
        ops.scaled_dot_product_attention_forward(q, k, v, dropout_p="0.1", seed=1)  # type: ignore[arg-type]


def test_attention_backward_matches_torch_autograd_gqa_and_broadcast(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    q, go = randn(rng, 2, 6, 37, 16), randn(rng, 2, 6, 37, 16)
    k, v = randn(rng, 2, 2, 41, 16), randn(rng, 2, 2, 41, 16)   # GQA: 2 key/value heads for 6 query heads
    mask = rng.random((2, 1, 37, 41)) > 0.2
    tq, tk, tv = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (q, k, v))
    F.scaled_dot_product_attention(tq, tk, tv, torch.tensor(mask), scale=0.3,
                                   enable_gqa=True).backward(torch.tensor(go.astype(np.float64)))
    got = ops.scaled_dot_product_attention_backward(go, q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    for g, t in zip(got, (tq, tk, tv)):
        assert g.shape == tuple(t.shape) and norm_rel(g, t.grad.numpy()) < 2e-6
    # key and value broadcast over the batch and the heads (size-1 axes): gradients summed back. (torch's
    # is_causal aligns top-left, ours bottom-right: the same when Sq == Sk.)
    k1, v1 = k[:1, :1, :37], v[:1, :1, :37]
    got = ops.scaled_dot_product_attention_backward(go, q, k1, v1, is_causal=True)
    tq, tk, tv = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (q, k1, v1))
    F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).backward(torch.tensor(go.astype(np.float64)))
    for g, t in zip(got, (tq, tk, tv)):
        assert g.shape == tuple(t.shape) and norm_rel(g, t.grad.numpy()) < 2e-6


@pytest.mark.parametrize("B,H", [(1, 3), (4, 4)])  # fewer than 8 heads split their keys; 16 do not
def test_attention_backward_is_the_same_on_any_thread_count(rng, B, H):
    q, k, v, go = (randn(rng, B, H, 150, 32) for _ in range(4))
    out, lse = ops.scaled_dot_product_attention_forward(q, k, v, is_causal=True)
    assert_same_on_thread_counts(
        lambda: ops.scaled_dot_product_attention_backward(go, q, k, v, out, lse, is_causal=True))


def test_attention_backward_strided_inputs(rng):
    # heads split out of a (B, S, H, D) projection: strided views, read in place; grad_output converted
    B, S, H, D = 2, 70, 3, 16
    qkv = randn(rng, B, S, 3, H, D)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    go = randn(rng, B, S, H, D).transpose(0, 2, 1, 3)
    got = ops.scaled_dot_product_attention_backward(go, q, k, v)
    want = sdpa_f64(q, k, v, go)
    for g, w in zip(got, want[2:]):
        assert norm_rel(g, w) < 2e-6
    got64 = ops.scaled_dot_product_attention_backward(go.astype(np.float64), q, k, v)
    for a, b in zip(got, got64):
        np.testing.assert_array_equal(a, b)


def test_attention_backward_zero_weights_and_empty_rows(rng):
    B, H, S, D = 1, 2, 70, 8
    q, k, v, go = (randn(rng, B, H, S, D) for _ in range(4))
    mask = np.ones((S, S), bool)
    mask[:, 5] = False   # key 5 masked for every query: inf/NaN there must reach nothing
    mask[3, :] = False   # query 3 attends nothing: zero output, zero gradients
    k_bad, v_bad = k.copy(), v.copy()
    k_bad[..., 5, :] = np.inf
    v_bad[..., 5, 0] = np.nan
    out, lse = ops.scaled_dot_product_attention_forward(q, k_bad, v_bad, mask)
    assert np.all(lse[..., 3] == -np.inf) and not out[..., 3, :].any()
    dq, dk, dv = ops.scaled_dot_product_attention_backward(go, q, k_bad, v_bad, out, lse, mask)
    want = sdpa_f64(q, k, v, go, mask)
    assert np.isfinite(dq).all() and np.isfinite(dk).all() and np.isfinite(dv).all()
    assert not dq[..., 3, :].any() and not dk[..., 5, :].any() and not dv[..., 5, :].any()
    for g, w in zip((dq, dk, dv), want[2:]):
        assert norm_rel(g, w) < 2e-6
    # a NaN among a row's visible scores: that row's output and gradients are NaN, as the forward's
    q_nan = q.copy()
    q_nan[0, 0, 10, 0] = np.nan
    out, lse = ops.scaled_dot_product_attention_forward(q_nan, k, v)
    dq, dk, dv = ops.scaled_dot_product_attention_backward(go, q_nan, k, v, out, lse)
    assert np.isnan(out[0, 0, 10]).all() and np.isnan(dq[0, 0, 10]).all()
    assert np.isfinite(dq[0, 1]).all() and np.isfinite(dq[0, 0, 11]).all()
    # empty sequences: zero gradients of the right shapes
    for sq, sk in ((0, 5), (4, 0)):
        empty = ops.scaled_dot_product_attention_backward(np.zeros((1, 2, sq, 8), np.float32), randn(rng, 1, 2, sq, 8),
                                                          randn(rng, 1, 2, sk, 8), randn(rng, 1, 2, sk, 8))
        assert [a.shape for a in empty] == [(1, 2, sq, 8), (1, 2, sk, 8), (1, 2, sk, 8)]
        assert not any(a.any() for a in empty)


def test_attention_backward_bad_input(rng):
    q, k, v, go = randn(rng, 2, 3, 5, 8), randn(rng, 2, 3, 6, 8), randn(rng, 2, 3, 6, 4), randn(rng, 2, 3, 5, 4)
    out, lse = ops.scaled_dot_product_attention_forward(q, k, v)
    f = ops.scaled_dot_product_attention_backward
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 3, 5, 8\) but the attention's output has "
                                         r"shape \(2, 3, 5, 4\)"):
        f(randn(rng, 2, 3, 5, 8), q, k, v, out, lse)
    with pytest.raises(ValueError, match=r"output has shape \(2, 3, 5, 3\)"):
        f(go, q, k, v, out[..., :3], lse)
    with pytest.raises(ValueError, match=r"lse has shape \(2, 3, 4\) but query \(2, 3, 5, 8\) needs \(2, 3, 5\)"):
        f(go, q, k, v, out, lse[..., :4])
    with pytest.raises(ValueError, match="key"):
        f(go, q, k[..., :7], v, out, lse)
    with pytest.raises(ValueError, match="attn_mask"):
        f(go, q, k, v, out, lse, np.ones((7, 7), bool))
    with pytest.raises(TypeError, match="grad_output"):
        f("x", q, k, v)
    with pytest.raises(ValueError, match="scale must be finite"):
        f(go, q, k, v, scale=float("nan"))
    with pytest.raises(ValueError, match="enable_gqa"):
        f(go, q, k[:, :2], v[:, :2], enable_gqa=True)


def philox_ref(seed, index):
    """Philox4x32-10 in Python (Salmon et al. 2011): word `index` of seed's stream, counter index // 4."""
    M = 0xFFFFFFFF
    block = index >> 2
    c = [block & M, block >> 32, 0, 0]
    k0, k1 = seed & M, seed >> 32
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & M, (p0 >> 32) ^ c[3] ^ k1, p0 & M]
        k0, k1 = (k0 + 0x9E3779B9) & M, (k1 + 0xBB67AE85) & M
    return c[index & 3]


def test_philox_known_answers():
    from coreformer import _core
    # Random123's known-answer vector for philox4x32-10, counter 0, key 0
    assert list(_core.philox_words(4, 0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    for seed, offset in ((1, 0), (2 ** 64 - 1, 5), (123456789123, 2 ** 40 + 3), (7, 2 ** 64 - 9)):
        n = min(9, 2 ** 64 - offset)
        assert list(_core.philox_words(n, seed, offset)) == [philox_ref(seed, offset + i) for i in range(n)]


@pytest.mark.parametrize("shape", [(1,), (7,), (63, 65), (3, 1000), (2, 5, 4099)])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_dropout(isa, rng, shape, p):
    x, dy = randn(rng, *shape), randn(rng, *shape)
    y, kept = ops.dropout(x, p, seed=17, offset=3, return_mask=True)
    scale = np.float32(1 / (1 - p)) if p < 1 else np.float32(0)
    words = __import__("coreformer")._core.philox_words(x.size, 17, 3).reshape(shape)
    np.testing.assert_array_equal(kept, words < int((1 - p) * 2 ** 32))  # the stream, word for word
    np.testing.assert_array_equal(y, np.where(kept, x * scale, 0))
    np.testing.assert_array_equal(ops.dropout(x, p, seed=17, offset=3), y)  # seeded: identical
    # the backward recomputes the forward's mask from (seed, offset)
    np.testing.assert_array_equal(ops.dropout_backward(dy, p, seed=17, offset=3), np.where(kept, dy * scale, 0))
    if p == 0:
        np.testing.assert_array_equal(y, x)
    if x.size >= 10000 and 0 < p < 1:  # keep rate within 5 standard deviations
        assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / x.size)


def test_dropout_streams_threads_and_eval(rng):
    x = randn(rng, 50000)
    a = ops.dropout(x, 0.3, seed=1)
    assert not np.array_equal(a, ops.dropout(x, 0.3, seed=2))
    # offsets are windows of one stream: the second half of a call equals a call at offset 25000
    np.testing.assert_array_equal(a[25000:], ops.dropout(x[25000:], 0.3, seed=1, offset=25000))
    assert_same_on_thread_counts(lambda: ops.dropout(x, 0.3, seed=1), want=a)
    assert ops.dropout(x, 0.3, training=False, seed=1) is x  # eval: the input itself
    # a dropped NaN stays NaN, as torch's x * mask
    y, kept = ops.dropout(np.full(100, np.nan, np.float32), 0.5, seed=3, return_mask=True)
    assert np.isnan(y).all() and not kept.all()


def test_dropout_bad_input(rng):
    x = randn(rng, 4)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        ops.dropout(x, 1.5, seed=0)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\)"):
        ops.dropout(x, 0.5, seed=-1)
    with pytest.raises(ValueError, match="offset"):
        ops.dropout_backward(x, 0.5, seed=0, offset=2 ** 64)
    with pytest.raises(TypeError, match="seed must be an integer"):
        ops.dropout(x, 0.5, seed=1.5)  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        ops.dropout(x, 0.5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="x must be"):
        ops.dropout(np.array(["a"]), 0.5, seed=0)


def additive_ref(q, k, v_, wq, wk, vv, mask):
    """float64 torch autograd of additive attention: the gradients of every input."""
    torch = pytest.importorskip("torch")
    ts = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in (q, k, v_, wq, wk, vv)]
    tq, tk, tv, twq, twk, tvv = ts
    s = torch.tanh((tq @ twq.T)[:, :, None, :] + (tk @ twk.T)[:, None, :, :]) @ tvv
    if mask is not None:
        m = torch.tensor(mask if mask.ndim == 3 else mask[:, None, :])
        s = s.masked_fill(~m, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ tv, ts


@pytest.mark.parametrize("B,Sq,Sk,Dq,Dk,A,Dv", [(1, 1, 1, 1, 1, 1, 1), (2, 7, 9, 5, 6, 17, 3), (3, 5, 63, 8, 8, 65, 7)])
@pytest.mark.parametrize("mask_kind", [None, "keys", "full"])
def test_additive_attention_backward(isa, rng, B, Sq, Sk, Dq, Dk, A, Dv, mask_kind):
    q, k, v_ = randn(rng, B, Sq, Dq), randn(rng, B, Sk, Dk), randn(rng, B, Sk, Dv)
    wq, wk, vv, dy = randn(rng, A, Dq, scale=0.5), randn(rng, A, Dk, scale=0.5), randn(rng, A), randn(rng, B, Sq, Dv)
    mask = None
    if mask_kind == "keys":
        mask = rng.random((B, Sk)) > 0.3
    elif mask_kind == "full":
        mask = rng.random((B, Sq, Sk)) > 0.3
    out, ts = additive_ref(q, k, v_, wq, wk, vv, mask)
    out.backward(__import__("torch").tensor(dy.astype(np.float64)))
    got = ops.additive_attention_backward(dy, q, k, v_, wq, wk, vv, mask)
    for g, t in zip(got, ts):
        assert g.shape == tuple(t.shape) and g.dtype == np.float32
        assert norm_rel(g, t.grad.numpy()) < 1e-5


def test_additive_attention_backward_threads_and_bad_input(rng):
    q, k, v_ = randn(rng, 5, 7, 8), randn(rng, 5, 9, 8), randn(rng, 5, 9, 4)
    wq, wk, vv, dy = randn(rng, 16, 8), randn(rng, 16, 8), randn(rng, 16), randn(rng, 5, 7, 4)
    assert_same_on_thread_counts(lambda: ops.additive_attention_backward(dy, q, k, v_, wq, wk, vv))
    with pytest.raises(ValueError, match=r"grad_output has shape \(5, 7, 3\) but additive_attention's output"):
        ops.additive_attention_backward(dy[..., :3], q, k, v_, wq, wk, vv)
    with pytest.raises(ValueError, match="w_key must have shape"):
        ops.additive_attention_backward(dy, q, k, v_, wq, wk[:3], vv)
    with pytest.raises(ValueError, match=r"mask must have shape \(5, 9\) or \(5, 7, 9\)"):
        ops.additive_attention_backward(dy, q, k, v_, wq, wk, vv, np.ones((5, 8), bool))


# ---- central differences: each kernel's gradient against the float64 forward's directional derivatives ----

def directional_check(forward64, inputs, grads, dy, rng, h=1e-5):
    """For each input x_k with its gradient g_k from the kernel: (f(x + h d) - f(x - h d)) / 2h of the float64
    forward f = sum(dy * forward(...)), along a random direction d, equals <g_k, d> (relative 1e-4)."""
    base = [np.asarray(x, np.float64) for x in inputs]
    for k, g in enumerate(grads):
        if g is None:
            continue
        d = rng.standard_normal(base[k].shape)
        vals = []
        for sign in (1.0, -1.0):
            args = list(base)
            args[k] = base[k] + sign * h * d
            vals.append(float((np.asarray(dy, np.float64) * forward64(*args)).sum()))
        fd = (vals[0] - vals[1]) / (2 * h)
        want = float((np.asarray(g, np.float64) * d).sum())
        assert abs(fd - want) <= 1e-4 * max(abs(fd), abs(want), 1e-3 * np.linalg.norm(d) * np.linalg.norm(g)), k


def test_central_differences_activations_norms_softmax(rng):
    x, dy, w, b, r = randn(rng, 7, 65), randn(rng, 7, 65), randn(rng, 65), randn(rng, 65), randn(rng, 7, 65)
    directional_check(ref.gelu, [x], [ops.gelu_backward(dy, x)], dy, rng)
    directional_check(ref.gelu_tanh, [x], [ops.gelu_backward(dy, x, "tanh")], dy, rng)
    directional_check(lambda a: ref.softmax(a, 0), [x], [ops.softmax_backward(dy, ops.softmax(x, axis=0), axis=0)],
                      dy, rng)
    dx, dw, db = ops.layer_norm_backward(dy, x, w, 1e-5, residual=r)
    directional_check(lambda a, ww, bb, rr: ref.layer_norm(a, ww, bb, 1e-5, rr)[0], [x, w, b, r], [dx, dw, db, dx],
                      dy, rng)
    wl, dyl = randn(rng, 63, 65, scale=0.1), randn(rng, 7, 63)
    z = ops.linear(x, wl, b[:63])
    dxl, dwl, dbl = ops.linear_backward(dyl, x, wl, "gelu", z)
    directional_check(lambda a, ww, bb: ref.gelu(a @ ww.T + bb), [x, wl, b[:63]], [dxl, dwl, dbl], dyl, rng)


@pytest.mark.parametrize("causal,mask_kind", [(False, None), (True, None), (False, "bool"), (True, "float")])
def test_central_differences_attention(rng, causal, mask_kind):
    q, k, v, dy = randn(rng, 1, 2, 7, 8), randn(rng, 1, 2, 9, 8), randn(rng, 1, 2, 9, 5), randn(rng, 1, 2, 7, 5)
    mask = None
    if mask_kind == "bool":
        mask = rng.random((7, 9)) > 0.3
    elif mask_kind == "float":
        mask = randn(rng, 7, 9)
    grads = ops.scaled_dot_product_attention_backward(dy, q, k, v, attn_mask=mask, is_causal=causal)
    directional_check(lambda a, bb, c: ref.sdpa(a, bb, c, mask, causal), [q, k, v], grads, dy, rng)


def test_central_differences_cross_entropy_embedding_additive(rng):
    logits, labels = randn(rng, 6, 11), rng.integers(0, 11, 6)
    labels[2] = -100
    _, dlogits = ops.cross_entropy(logits, labels, label_smoothing=0.1, return_grad=True)

    def ce64(z):
        z = np.asarray(z, np.float64)
        logp = z - z.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        keep = labels != -100
        nll = -logp[keep, labels[keep]]
        smooth = -logp[keep].mean(-1)
        return np.array((0.9 * nll + 0.1 * smooth).mean())
    directional_check(ce64, [logits], [dlogits], np.array(1.0), rng)
    table, ids, dy = randn(rng, 10, 4), rng.integers(0, 10, (3, 5)), randn(rng, 3, 5, 4)
    directional_check(lambda t: t[ids], [table], [ops.embedding_backward(dy, ids, 10)], dy, rng)
    q, kk, vv = randn(rng, 2, 3, 4), randn(rng, 2, 5, 4), randn(rng, 2, 5, 3)
    wq, wk, va, dya = randn(rng, 6, 4), randn(rng, 6, 4), randn(rng, 6), randn(rng, 2, 3, 3)
    m = rng.random((2, 5)) > 0.2
    grads = ops.additive_attention_backward(dya, q, kk, vv, wq, wk, va, m)
    directional_check(lambda a, b_, c, d, e, f: ref.additive(a, b_, c, d, e, f, mask=m)[0],
                      [q, kk, vv, wq, wk, va], grads, dya, rng)


def test_cross_entropy_grad_out(rng):
    logits, labels = randn(rng, 7, 65), rng.integers(0, 65, 7)
    labels[3] = -100
    loss, grad = ops.cross_entropy(logits, labels, return_grad=True)
    buf = np.full((7, 65), np.nan, np.float32)
    loss2, grad2 = ops.cross_entropy(logits, labels, return_grad=True, grad_out=buf)
    assert grad2 is buf and loss2 == loss
    np.testing.assert_array_equal(buf, grad)
    with pytest.raises(ValueError, match=r"grad_out has shape \(65, 7\)"):
        ops.cross_entropy(logits, labels, return_grad=True, grad_out=np.zeros((65, 7), np.float32))
    with pytest.raises(ValueError, match="grad_out is for return_grad=True"):
        ops.cross_entropy(logits, labels, grad_out=buf)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="overlaps"):
        ops.cross_entropy(logits, labels, return_grad=True, grad_out=logits)
    with pytest.raises(TypeError, match="grad_out must be a float32"):
        ops.cross_entropy(logits, labels, return_grad=True, grad_out=np.zeros((7, 65)))  # type: ignore[call-overload]
