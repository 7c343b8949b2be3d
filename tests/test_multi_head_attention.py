import numpy as np
import pytest

from coreformer import ops

import reference as ref
from conftest import assert_close, randn


def params(rng, e):
    return randn(rng, 3 * e, e, scale=e ** -0.5), randn(rng, 3 * e), randn(rng, e, e, scale=e ** -0.5), randn(rng, e)


@pytest.mark.parametrize("b,s,e,h", [(1, 1, 8, 1), (2, 7, 16, 4), (3, 65, 64, 8), (2, 130, 96, 12)])
def test_mha_self(isa, rng, b, s, e, h):
    x = randn(rng, b, s, e)
    iw, ib, ow, ob = params(rng, e)
    assert_close(ops.multi_head_attention(x, x, x, h, iw, ib, ow, ob), ref.mha(x, x, x, h, iw, ib, ow, ob),
                 atol_scale=1e-5)


@pytest.mark.parametrize("same_kv", [True, False])
def test_mha_cross(isa, rng, same_kv):
    q, mem = randn(rng, 2, 9, 32), randn(rng, 2, 70, 32)
    val = mem if same_kv else randn(rng, 2, 70, 32)
    iw, ib, ow, ob = params(rng, 32)
    assert_close(ops.multi_head_attention(q, mem, val, 4, iw, ib, ow, ob), ref.mha(q, mem, val, 4, iw, ib, ow, ob),
                 atol_scale=1e-5)


def test_mha_masks(isa, rng):
    b, sq, sk, e, h = 2, 11, 13, 24, 3
    q, kv = randn(rng, b, sq, e), randn(rng, b, sk, e)
    iw, ib, ow, ob = params(rng, e)
    kpm = np.zeros((b, sk), bool)
    kpm[0, -4:] = True
    bool_mask = rng.random((sq, sk)) > 0.8          # True = not allowed (torch)
    float_mask = randn(rng, b * h, sq, sk)
    for kw in [dict(key_padding_mask=kpm), dict(attn_mask=bool_mask), dict(attn_mask=float_mask),
               dict(attn_mask=bool_mask, key_padding_mask=kpm), dict(is_causal=True, key_padding_mask=kpm)]:
        assert_close(ops.multi_head_attention(q, kv, kv, h, iw, ib, ow, ob, **kw),
                     ref.mha(q, kv, kv, h, iw, ib, ow, ob, **kw), atol_scale=1e-5)


def test_mha_unbatched(rng):
    x = randn(rng, 10, 16)
    iw, ib, ow, ob = params(rng, 16)
    got = ops.multi_head_attention(x, x, x, 2, iw, ib, ow, ob)
    assert got.shape == (10, 16)
    assert_close(got, ref.mha(x[None], x[None], x[None], 2, iw, ib, ow, ob)[0], atol_scale=1e-5)


def test_mha_matches_torch(rng):
    torch = pytest.importorskip("torch")
    b, s, e, h = 3, 50, 64, 8
    m = torch.nn.MultiheadAttention(e, h, batch_first=True).eval()
    with torch.no_grad():
        m.in_proj_bias.normal_()
        m.out_proj.bias.normal_()
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    x, mem = randn(rng, b, s, e), randn(rng, b, 77, e)
    kpm = np.zeros((b, 77), bool)
    kpm[1, 60:] = True
    causal = torch.nn.Transformer.generate_square_subsequent_mask(s)
    with torch.inference_mode():
        t_self = m(*(torch.from_numpy(x),) * 3, need_weights=False, attn_mask=causal, is_causal=True)[0].numpy()
        t_cross = m(torch.from_numpy(x), torch.from_numpy(mem), torch.from_numpy(mem), need_weights=False,
                    key_padding_mask=torch.from_numpy(kpm))[0].numpy()
    args = (h, sd["in_proj_weight"], sd["in_proj_bias"], sd["out_proj.weight"], sd["out_proj.bias"])
    np.testing.assert_allclose(ops.multi_head_attention(x, x, x, *args, is_causal=True), t_self, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.multi_head_attention(x, mem, mem, *args, key_padding_mask=kpm), t_cross,
                               rtol=1e-4, atol=1e-5)
