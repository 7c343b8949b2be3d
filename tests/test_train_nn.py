"""Layers in training mode: forward keeps what backward needs, backward returns the input's gradient and
accumulates the parameters'. Against torch.nn's modules on the same weights, with random upstream gradients,
every parameter's gradient by its torch name; and a few optimiser steps of a small model against torch's."""
import numpy as np
import pytest

from coreformer import nn, optim

from conftest import randn

torch = pytest.importorskip("torch")


def norm_rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=grad)


def load_from_torch(ours, theirs):
    ours.load_state_dict({k: v.detach().float().numpy().copy() for k, v in theirs.state_dict().items()})
    return ours


def check_param_grads(ours, theirs, tol=1e-5):
    got = dict(ours.named_parameters())
    want = dict(theirs.named_parameters())
    assert set(got) == set(want)
    for name, p in want.items():
        assert got[name].grad is not None, name
        assert norm_rel(got[name].grad, p.grad.numpy()) < tol, name


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
def test_linear(rng, activation):
    lin = nn.Linear(37, 65, activation=activation).train()
    x, dy, r = randn(rng, 3, 7, 37), randn(rng, 3, 7, 65), randn(rng, 3, 7, 65)
    y = lin(x, residual=r)
    tx, tw, tb = t64(x, True), t64(lin.weight, True), t64(lin.bias, True)
    z = torch.nn.functional.linear(tx, tw, tb)
    act = {None: lambda a: a, "relu": torch.relu, "gelu": torch.nn.functional.gelu,
           "gelu_tanh": lambda a: torch.nn.functional.gelu(a, approximate="tanh")}[activation]
    ty = act(z) + t64(r)
    assert norm_rel(y, ty.detach().numpy()) < 1e-6
    ty.backward(t64(dy))
    dx = lin.backward(dy)
    assert norm_rel(dx, tx.grad.numpy()) < 1e-5
    assert norm_rel(lin._param("weight").grad, tw.grad.numpy()) < 1e-5
    assert norm_rel(lin._param("bias").grad, tb.grad.numpy()) < 1e-5


def test_layer_norm_embedding_and_positions(rng):
    ln = nn.LayerNorm(65).train()
    ln.weight[...] = randn(rng, 65)
    ln.bias[...] = randn(rng, 65)
    x, r, dy = randn(rng, 4, 65), randn(rng, 4, 65), randn(rng, 4, 65)
    ln(x, residual=r)
    tx, tr = t64(x, True), t64(r, True)
    tw, tb = t64(ln.weight, True), t64(ln.bias, True)
    torch.nn.functional.layer_norm(tx + tr, (65,), tw, tb, 1e-5).backward(t64(dy))
    dx = ln.backward(dy)
    assert norm_rel(dx, tx.grad.numpy()) < 1e-5 and norm_rel(dx, tr.grad.numpy()) < 1e-5
    assert norm_rel(ln._param("weight").grad, tw.grad.numpy()) < 1e-5

    emb = nn.Embedding(11, 6, padding_idx=2).train()
    ids = rng.integers(0, 11, (3, 9))
    dy = randn(rng, 3, 9, 6)
    emb(ids)
    assert emb.backward(dy) is None
    te = torch.nn.Embedding(11, 6, padding_idx=2).double()
    te(torch.tensor(ids)).backward(t64(dy))
    assert norm_rel(emb._param("weight").grad, te.weight.grad.numpy()) < 1e-6

    pos = nn.LearnedPositionalEmbedding(20, 6).train()
    x, dy = randn(rng, 3, 9, 6), randn(rng, 3, 9, 6)
    pos(x, offset=4)
    np.testing.assert_array_equal(pos.backward(dy), dy)
    want = np.zeros((20, 6))
    want[4:13] = dy.sum(0)
    assert norm_rel(pos._param("weight").grad, want) < 1e-6


@pytest.mark.parametrize("case", ["self", "self_masked", "self_causal", "cross"])
def test_multi_head_attention(rng, case):
    E, H = 32, 4
    ref = torch.nn.MultiheadAttention(E, H, batch_first=True).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours = load_from_torch(nn.MultiHeadAttention(E, H), ref).train()
    x, mem = randn(rng, 2, 9, E), randn(rng, 2, 13, E)
    kw: dict = {}
    tkw: dict = {}
    if case == "self_masked":
        pad = np.zeros((2, 9), bool)
        pad[1, 6:] = True
        kw = tkw = {"key_padding_mask": pad}
        tkw = {"key_padding_mask": torch.tensor(pad)}
    if case == "self_causal":
        causal = np.triu(np.ones((9, 9), bool), 1)
        kw, tkw = {"attn_mask": causal, "is_causal": True}, {"attn_mask": torch.tensor(causal), "is_causal": True}
    dy = randn(rng, 2, 9, E)
    tx = t64(x, True)
    if case == "cross":
        tm = t64(mem, True)
        y = ours(x, mem, mem)
        ty = ref(tx, tm, tm, need_weights=False)[0]
    else:
        y = ours(x, **kw)
        ty = ref(tx, tx, tx, need_weights=False, **tkw)[0]
    assert norm_rel(y, ty.detach().numpy()) < 1e-5
    ty.backward(t64(dy))
    got = ours.backward(dy)
    if case == "cross":
        dq, dk, dv = got
        assert norm_rel(dq, tx.grad.numpy()) < 1e-5
        assert norm_rel(dk + dv, tm.grad.numpy()) < 1e-5
    else:
        assert norm_rel(got, tx.grad.numpy()) < 1e-5
    check_param_grads(ours, ref)


def torch_encoder(E, H, F, layers, norm_first, activation):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(E, H, F, dropout=0.0, activation=activation, batch_first=True,
                                             norm_first=norm_first)
    enc = torch.nn.TransformerEncoder(layer, layers, norm=torch.nn.LayerNorm(E), enable_nested_tensor=False).double()
    with torch.no_grad():  # random biases and norms, so a swapped or dropped one shows
        for name, p in enc.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and "weight" in name else 0.0))
    return enc


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_gradients_match_torch(rng, norm_first, activation):
    E, H, F = 32, 4, 48
    ref = torch_encoder(E, H, F, 2, norm_first, activation)
    ours = load_from_torch(nn.TransformerEncoder(2, E, H, F, activation, norm_first), ref).train()
    x, dy = randn(rng, 3, 11, E), randn(rng, 3, 11, E)
    pad = np.zeros((3, 11), bool)
    pad[1, 7:] = True
    pad[2, 10:] = True
    y = ours(x, src_key_padding_mask=pad)
    tx = t64(x, True)
    ty = ref(tx, src_key_padding_mask=torch.tensor(pad))
    keep = ~pad  # outputs at padded positions are unspecified (torch's fast path zeroes them)
    assert norm_rel(y[keep], ty.detach().numpy()[keep]) < 1e-5
    dy[pad] = 0
    ty.backward(t64(dy))
    dx = ours.backward(dy)
    assert norm_rel(dx, tx.grad.numpy()) < 1e-5
    check_param_grads(ours, ref)


def test_gradients_accumulate_and_backward_needs_a_forward(rng):
    lin = nn.Linear(5, 3)
    x, dy = randn(rng, 4, 5), randn(rng, 4, 3)
    lin(x)
    with pytest.raises(RuntimeError, match=r"needs a forward in training mode \(call .train\(\) first\)"):
        lin.backward(dy)
    lin.train()
    with pytest.raises(RuntimeError, match="needs a forward"):
        lin.backward(dy)
    lin(x)
    lin.backward(dy)
    g = lin._param("weight").grad
    assert g is not None
    once = g.copy()
    with pytest.raises(RuntimeError, match="since the last backward"):
        lin.backward(dy)
    lin(x)
    lin.backward(dy)  # a second batch: added in, as torch's
    np.testing.assert_allclose(np.asarray(lin._param("weight").grad), 2 * once, rtol=1e-6)
    lin.zero_grad()
    assert all(p.grad is None for p in lin.parameters())
    from coreformer import tensor
    with pytest.raises(TypeError, match="training runs on numpy arrays"):
        lin(tensor(x))


def test_train_eval_and_packed_weights(rng):
    lin = nn.Linear(8, 4)
    lin.pack_weights("bfloat16")
    w = lin.weight
    w.setflags(write=False)
    lin.train()
    assert lin.training and lin.weights_dtype is None  # packed copies dropped: the forward reads the arrays
    assert lin.weight.flags.writeable and lin.weight is not w  # a read-only (mapped) array copied once
    p = lin._param("weight")
    assert p.data is lin.weight and next(lin.parameters()) is p  # one Parameter per array
    lin.eval()
    assert not lin.training and lin.__dict__["_saved"] is None


def test_dropout_module(rng):
    d = nn.Dropout(0.4, seed=3).train()
    x, dy = randn(rng, 1000), randn(rng, 1000)
    y1 = d(x)
    kept = y1 != 0
    np.testing.assert_array_equal(d.backward(dy), np.where(kept, dy * np.float32(1 / 0.6), 0).astype(np.float32))
    y2 = d(x)  # the next call reads the next words of the stream: a new mask
    assert not np.array_equal(y1, y2)
    d2 = nn.Dropout(0.4, seed=3).train()
    np.testing.assert_array_equal(d2(x), y1)  # seeded: reproducible
    assert d.eval()(x) is x
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.5)


def test_training_steps_follow_torch(rng):
    """A 2-layer encoder + classifier head, 5 AdamW steps with clipping: losses and weights as torch's."""
    E, H, F, C = 32, 4, 48, 5
    ref_enc = torch_encoder(E, H, F, 2, False, "gelu").float()
    ref_head = torch.nn.Linear(E, C)
    enc = load_from_torch(nn.TransformerEncoder(2, E, H, F, "gelu"), ref_enc).train()
    head = load_from_torch(nn.Linear(E, C), ref_head).train()
    params = list(enc.parameters()) + list(head.parameters())
    opt = optim.AdamW(params, lr=1e-2)
    ref_opt = torch.optim.AdamW(list(ref_enc.parameters()) + list(ref_head.parameters()), lr=1e-2, foreach=False)
    from coreformer import ops
    for step in range(5):
        x = randn(rng, 4, 10, E)
        labels = rng.integers(0, C, 4)
        logits = head(enc(x)[:, 0])
        loss, dlogits = ops.cross_entropy(logits, labels, return_grad=True)
        dh = np.zeros((4, 10, E), np.float32)
        dh[:, 0] = head.backward(dlogits)
        enc.backward(dh)
        optim.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

        tl = torch.nn.functional.cross_entropy(ref_head(ref_enc(torch.tensor(x))[:, 0]), torch.tensor(labels))
        tl.backward()
        torch.nn.utils.clip_grad_norm_(list(ref_enc.parameters()) + list(ref_head.parameters()), 1.0)
        ref_opt.step()
        ref_opt.zero_grad()
        assert loss == pytest.approx(tl.item(), rel=1e-4)
    ours_now = dict(enc.named_parameters())
    for name, p in ref_enc.named_parameters():
        got, want = ours_now[name].data, p.detach().numpy()
        if name.endswith("in_proj_bias"):
            # the key bias's true gradient is 0 (softmax ignores a constant per row): Adam turns the rounding
            # noise there into +-lr steps in both implementations, so those entries are compared elsewhere
            got, want = np.delete(got, np.s_[E:2 * E]), np.delete(want, np.s_[E:2 * E])
        assert norm_rel(got, want) < 1e-4, name


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_decoder_gradients_match_torch(rng, norm_first):
    E, H, F = 32, 4, 48
    torch.manual_seed(0)
    layer = torch.nn.TransformerDecoderLayer(E, H, F, dropout=0.0, activation="gelu", batch_first=True,
                                             norm_first=norm_first)
    ref = torch.nn.TransformerDecoder(layer, 2, norm=torch.nn.LayerNorm(E)).double()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and "weight" in name else 0.0))
    ours = load_from_torch(nn.TransformerDecoder(2, E, H, F, "gelu", norm_first), ref).train()
    x, mem, dy = randn(rng, 3, 9, E), randn(rng, 3, 11, E), randn(rng, 3, 9, E)
    mpad = np.zeros((3, 11), bool)
    mpad[1, 8:] = True
    causal = np.triu(np.ones((9, 9), bool), 1)
    y = ours(x, mem, tgt_is_causal=True, memory_key_padding_mask=mpad)
    tx, tm = t64(x, True), t64(mem, True)
    ty = ref(tx, tm, tgt_mask=torch.tensor(causal), tgt_is_causal=True, memory_key_padding_mask=torch.tensor(mpad))
    assert norm_rel(y, ty.detach().numpy()) < 1e-5
    ty.backward(t64(dy))
    dx, dmem = ours.backward(dy)
    assert norm_rel(dx, tx.grad.numpy()) < 1e-5
    assert norm_rel(dmem, tm.grad.numpy()) < 1e-5
    check_param_grads(ours, ref)


def test_additive_attention_layer(rng):
    from test_backward import additive_ref
    layer = nn.AdditiveAttention(6, 5, 11).train()
    q, k, v, dy = randn(rng, 2, 4, 6), randn(rng, 2, 7, 5), randn(rng, 2, 7, 3), randn(rng, 2, 4, 3)
    mask = rng.random((2, 7)) > 0.3
    y = layer(q, k, v, mask)
    out, ts = additive_ref(q, k, v, layer.w_query, layer.w_key, layer.v, mask)
    assert norm_rel(y, out.detach().numpy()) < 1e-6
    out.backward(t64(dy))
    dq, dk, dv = layer.backward(dy)
    for g, t in zip((dq, dk, dv), ts[:3]):
        assert norm_rel(g, t.grad.numpy()) < 1e-5
    for name, t in zip(("w_query", "w_key", "v"), ts[3:]):
        assert norm_rel(layer._param(name).grad, t.grad.numpy()) < 1e-5
