import numpy as np
import pytest

from coreformer import ops

import reference as ref
from conftest import assert_close, randn


@pytest.mark.parametrize("b,sq,sk,dq,dk,dv,a", [(1, 1, 1, 1, 1, 1, 1), (2, 7, 63, 5, 9, 3, 17), (3, 65, 1000, 16, 8, 7, 64),
                                               (1, 4, 10, 32, 32, 32, 33)])
def test_additive(isa, rng, b, sq, sk, dq, dk, dv, a):
    q, k, v = randn(rng, b, sq, dq), randn(rng, b, sk, dk), randn(rng, b, sk, dv)
    wq, wk, vv = randn(rng, a, dq), randn(rng, a, dk), randn(rng, a)
    out, w = ops.additive_attention(q, k, v, wq, wk, vv, return_weights=True)
    rout, rw = ref.additive(q, k, v, wq, wk, vv)
    assert_close(out, rout, atol_scale=1e-5)
    assert_close(w, rw, atol_scale=1e-5)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("mask_ndim", [2, 3])
def test_additive_masks(isa, rng, mask_ndim):
    b, sq, sk = 2, 6, 40
    q, k, v = randn(rng, b, sq, 8), randn(rng, b, sk, 8), randn(rng, b, sk, 5)
    wq, wk, vv = randn(rng, 12, 8), randn(rng, 12, 8), randn(rng, 12)
    mask = rng.random((b, sk) if mask_ndim == 2 else (b, sq, sk)) > 0.5
    if mask_ndim == 3:
        mask[1, 2] = False   # nothing to attend: zeros
    else:
        mask[1] = False
    out, w = ops.additive_attention(q, k, v, wq, wk, vv, mask=mask, return_weights=True)
    rout, rw = ref.additive(q, k, v, wq, wk, vv, mask)
    assert_close(out, rout, atol_scale=1e-5)
    assert_close(w, rw, atol_scale=1e-5)
    assert np.isfinite(out).all()
    m3 = mask if mask_ndim == 3 else np.broadcast_to(mask[:, None], (b, sq, sk))
    assert np.all(w[~m3] == 0)


def test_additive_without_weights_returns_array(rng):
    q, k, v = randn(rng, 1, 2, 3), randn(rng, 1, 4, 3), randn(rng, 1, 4, 3)
    out = ops.additive_attention(q, k, v, randn(rng, 5, 3), randn(rng, 5, 3), randn(rng, 5))
    assert isinstance(out, np.ndarray) and out.shape == (1, 2, 3)


def test_additive_nan_gives_nan(isa, rng):
    # A NaN query makes every score of its row NaN; the row (and its weights) must be NaN, not the
    # zeros of a row with nothing to attend (which a fully masked row still gives).
    q, kk, vv = randn(rng, 2, 4, 6), randn(rng, 2, 9, 5), randn(rng, 2, 9, 3)
    wq, wk, v = randn(rng, 8, 6), randn(rng, 8, 5), randn(rng, 8)
    q[0, 2, 1] = np.nan
    mask = np.ones((2, 4, 9), bool)
    mask[1, 3] = False
    out, w = ops.additive_attention(q, kk, vv, wq, wk, v, mask=mask, return_weights=True)
    assert np.isnan(out[0, 2]).all() and np.isnan(w[0, 2]).all()
    assert np.all(out[1, 3] == 0) and np.all(w[1, 3] == 0)
    rest = np.ones((2, 4), bool)
    rest[0, 2] = False
    assert np.isfinite(out[rest]).all()
