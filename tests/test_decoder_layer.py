"""ops.transformer_decoder_layer against torch.nn.TransformerDecoderLayer on the same weights: post- and
pre-LN, every mask, odd lengths; step-by-step decoding with the self-attention cache and the
cross-attention's keys/values projected once equals the full causal forward; bad inputs."""
import numpy as np
import pytest

from coreformer import ops

from conftest import assert_close, randn

torch = pytest.importorskip("torch")

E, H, F = 32, 4, 48
NAMES = ["self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
         "multihead_attn.in_proj_weight", "multihead_attn.in_proj_bias", "multihead_attn.out_proj.weight",
         "multihead_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
         "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias"]


def make_layer(norm_first, activation="relu", seed=0):
    torch.manual_seed(seed)
    layer = torch.nn.TransformerDecoderLayer(E, H, F, dropout=0.0, activation=activation, batch_first=True,
                                             norm_first=norm_first, layer_norm_eps=1e-5).eval()
    with torch.no_grad():  # random biases and norms, so a swapped or dropped one shows
        for name, p in layer.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and "weight" in name else 0.0))
    sd = layer.state_dict()
    return layer, [sd[n].numpy() for n in NAMES]


def torch_forward(layer, x, mem, **kw):
    with torch.no_grad():
        conv = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        return layer(torch.from_numpy(x), torch.from_numpy(mem), **conv).numpy()


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("B,T,Sm", [(1, 1, 1), (2, 7, 9), (3, 17, 65)])
def test_matches_torch(norm_first, activation, B, T, Sm, rng):
    layer, p = make_layer(norm_first, activation)
    x, mem = randn(rng, B, T, E), randn(rng, B, Sm, E)
    got = ops.transformer_decoder_layer(x, mem, H, *p, activation=activation, norm_first=norm_first)
    assert_close(got, torch_forward(layer, x, mem), rtol=1e-5, atol_scale=1e-5)
    # masks: causal target, target padding, memory padding, an additive memory mask
    tkp = np.zeros((B, T), bool)
    tkp[0, T // 2:] = T > 1
    mkp = np.zeros((B, Sm), bool)
    mkp[-1, :Sm // 2] = True
    mm = randn(rng, T, Sm)
    causal = np.triu(np.ones((T, T), bool), 1)
    want = torch_forward(layer, x, mem, tgt_mask=torch.from_numpy(causal), tgt_key_padding_mask=tkp,
                         memory_key_padding_mask=mkp, memory_mask=mm)
    got = ops.transformer_decoder_layer(x, mem, H, *p, activation=activation, norm_first=norm_first,
                                        tgt_is_causal=True, tgt_key_padding_mask=tkp, memory_key_padding_mask=mkp,
                                        memory_mask=mm)
    keep = ~np.isnan(want)
    assert_close(got[keep], want[keep], rtol=1e-5, atol_scale=1e-5)
    # unbatched, and in place
    assert_close(ops.transformer_decoder_layer(x[0], mem[0], H, *p, activation=activation, norm_first=norm_first),
                 torch_forward(layer, x[:1], mem[:1])[0], rtol=1e-5, atol_scale=1e-5)
    xx = x.copy()
    assert ops.transformer_decoder_layer(xx, mem, H, *p, activation=activation, norm_first=norm_first, out=xx) is xx
    assert_close(xx, torch_forward(layer, x, mem), rtol=1e-5, atol_scale=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_step_by_step_decoding_equals_the_full_causal_forward(norm_first, rng):
    layer, p = make_layer(norm_first)
    B, T, Sm, cap = 2, 9, 11, 12
    x, mem = randn(rng, B, T, E), randn(rng, B, Sm, E)
    mkp = np.zeros((B, Sm), bool)
    mkp[1, 7:] = True
    causal = np.triu(np.ones((T, T), bool), 1)
    want = torch_forward(layer, x, mem, tgt_mask=torch.from_numpy(causal), memory_key_padding_mask=mkp)
    kc, vc = np.full((2, B, H, cap, E // H), np.nan, np.float32)
    mk, mv = np.full((2, B, H, Sm + 2, E // H), np.nan, np.float32)
    steps, n, mlen = [], 0, 0
    for s in (4, 1, 1, 3):  # a prompt of 4, then single tokens, then 3
        out = ops.transformer_decoder_layer(x[:, n:n + s], None if mlen else mem, H, *p, norm_first=norm_first,
                                            tgt_is_causal=True, memory_key_padding_mask=mkp, k_cache=kc, v_cache=vc,
                                            cache_length=n, memory_k=mk, memory_v=mv, memory_length=mlen)
        steps.append(out)
        n, mlen = n + s, Sm
    assert_close(np.concatenate(steps, axis=1), want, rtol=1e-5, atol_scale=1e-5)
    assert np.isnan(kc[:, :, n:]).all() and not np.isnan(kc[:, :, :n]).any()  # only the new positions written


def test_bad_inputs(rng):
    _, p = make_layer(False)
    x, mem = randn(rng, 2, 3, E), randn(rng, 2, 5, E)
    with pytest.raises(ValueError, match="memory is needed"):
        ops.transformer_decoder_layer(x, None, H, *p)
    with pytest.raises(ValueError, match="memory must be"):
        ops.transformer_decoder_layer(x, randn(rng, 3, 5, E), H, *p)
    with pytest.raises(ValueError, match="cross_in_weight must have shape"):
        ops.transformer_decoder_layer(x, mem, H, *p[:4], p[4][:-1], *p[5:])  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="divisible"):
        ops.transformer_decoder_layer(x, mem, 5, *p)
    kc = np.zeros((2, H, 4, E // H), np.float32)
    with pytest.raises(ValueError, match="go together"):
        ops.transformer_decoder_layer(x, mem, H, *p, k_cache=kc)
    with pytest.raises(ValueError, match="must fit"):
        ops.transformer_decoder_layer(x, mem, H, *p, k_cache=kc, v_cache=kc.copy(), cache_length=2)
    with pytest.raises(ValueError, match="must fit"):
        ops.transformer_decoder_layer(x, mem, H, *p, memory_k=kc, memory_v=kc.copy())  # 5 keys, room for 4
    with pytest.raises(ValueError, match="memory_k must have shape"):
        ops.transformer_decoder_layer(x, mem, H, *p, memory_k=kc[:1], memory_v=kc[:1].copy(), memory_length=1)
    with pytest.raises(ValueError, match="must not share memory"):
        ops.transformer_decoder_layer(x, mem, H, *p, k_cache=kc, v_cache=kc)
    with pytest.raises(ValueError, match="tgt_key_padding_mask must have shape"):
        ops.transformer_decoder_layer(x, mem, H, *p, tgt_key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="memory_mask must have shape"):
        ops.transformer_decoder_layer(x, mem, H, *p, memory_mask=np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="eps"):
        ops.transformer_decoder_layer(x, mem, H, *p, eps=(1e-5, 1e-5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="activation"):
        ops.transformer_decoder_layer(x, mem, H, *p, activation="swish")
