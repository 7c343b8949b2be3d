"""One parameter store per model: every parameter a view into one flat float32 buffer (decayed matrices
first, tied weights in one slot), gradients and optimiser moments in the same layout, the Parameter
objects stable across flattening, and the device path made of views of that one buffer."""
import numpy as np
import pytest

import coreformer
from coreformer import nn, optim
from coreformer.optim import _coalesced

from conftest import bert_dirs, gpt2  # noqa: F401  (fixtures)

pytest.importorskip("torch")
pytest.importorskip("transformers")


def decayed(name, model):
    mod, leaf = model._owner(name)
    return not (leaf == "bias" or leaf.endswith("_bias") or isinstance(mod, nn.LayerNorm))


def check_store(model):
    store = model.flat_parameters
    assert store is not None
    named = dict(model.state_dict())
    assert store.size == sum(a.size for a in {id(a): a for a in named.values()}.values())
    for name, a in named.items():
        assert a.base is store.data, name
        off, shape = store.slots[name]
        assert a.shape == shape and store.offset(a) == off
        assert (store.decay.start <= off < store.decay.stop) == decayed(name, model), name
    return store


def test_train_puts_every_parameter_in_one_buffer(gpt2):  # noqa: F811
    from coreformer.models import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(gpt2[0])
    before = {k: v.copy() for k, v in model.state_dict().items()}
    assert model.flat_parameters is None
    model.train()
    store = check_store(model)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert model.flatten_parameters() is store  # nothing replaced: the same store
    assert "weight-decayed" in repr(store)
    # the tied head reads the embedding's slot: one copy
    head = model.tied_head_weight
    assert head is not None and head.base is store.data


def test_bert_fused_qkv_is_the_stores_memory(bert_dirs):  # noqa: F811
    from coreformer.models import BertForSequenceClassification
    model = BertForSequenceClassification.from_pretrained(bert_dirs["BertForSequenceClassification"][0]).train()
    store = check_store(model)
    for layer in model.bert.encoder.layer:
        sa = layer.attention.self
        assert sa.in_proj_weight.base is store.data and sa.in_proj_bias.base is store.data
        np.testing.assert_array_equal(sa.in_proj_weight,
                                      np.concatenate([sa.query.weight, sa.key.weight, sa.value.weight]))
    # loading in place keeps the store whole, and the fused matrix sees the new values
    sd = {k: v + 1.0 for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    assert model.flat_parameters is store
    sa = model.bert.encoder.layer[0].attention.self
    np.testing.assert_array_equal(sa.in_proj_weight[: sa.query.weight.shape[0]], sd[
        "bert.encoder.layer.0.attention.self.query.weight"])


def run_steps(model, opt, ids, labels, n=3):
    losses = []
    for _ in range(n):
        opt.zero_grad()
        out = model(ids, labels=labels)
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss))
    return losses


def groups(model, wd=0.01):
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if decayed(n, model)], "weight_decay": wd},
            {"params": [p for n, p in named if not decayed(n, model)], "weight_decay": 0.0}]


def test_gradients_and_moments_share_the_layout_and_step_as_few_ranges(gpt2, rng):  # noqa: F811
    from coreformer.models import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(gpt2[0]).train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    store = model.flat_parameters
    assert store is not None
    opt = optim.AdamW(groups(model), lr=1e-3)
    ids = rng.integers(0, 211, (2, 9))
    run_steps(model, opt, ids, ids, 1)
    for p in model.parameters():
        assert p.grad is not None and p.grad.base is store.grad
        m, v = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
        assert m.base.size == v.base.size == store.size and m.base is not v.base
        assert 4 * (store.offset(p.data) or 0) == m.__array_interface__["data"][0] - m.base.__array_interface__["data"][0]
    for g in opt.param_groups:  # each group: one range of the buffer, its gradients and its moments
        ps = g["params"]
        cols = _coalesced([p.data for p in ps], [p.grad for p in ps], [opt.state[p]["exp_avg"] for p in ps],
                          [opt.state[p]["exp_avg_sq"] for p in ps])
        assert len(cols[0]) == 1 and cols[0][0].size == sum(p.size for p in ps)
    # the norm over the coalesced ranges is the norm of all gradients
    want = np.sqrt(sum(np.sum(np.square(np.asarray(p.grad, np.float64))) for p in model.parameters()))
    assert optim.clip_grad_norm_(model.parameters(), 1e9) == pytest.approx(want, rel=1e-12)


def test_an_optimizer_made_before_train_keeps_working(gpt2, rng):  # noqa: F811
    """Flattening replaces the arrays but not the Parameter objects an optimiser holds: made before or
    after train(), the same trajectory, bit for bit (SGD with momentum and AdamW)."""
    from coreformer.models import GPT2LMHeadModel
    ids = rng.integers(0, 211, (2, 9))
    for make in (lambda ps: optim.AdamW(ps, lr=1e-3), lambda ps: optim.SGD(ps, lr=1e-2, momentum=0.9)):
        early = GPT2LMHeadModel.from_pretrained(gpt2[0])
        opt_early = make(early.parameters())
        early.train().seed_dropout(3)
        late = GPT2LMHeadModel.from_pretrained(gpt2[0]).train().seed_dropout(3)
        opt_late = make(late.parameters())
        assert run_steps(early, opt_early, ids, ids) == run_steps(late, opt_late, ids, ids)
        for (n, a), (_, b) in zip(early.state_dict().items(), late.state_dict().items()):
            np.testing.assert_array_equal(a, b, err_msg=n)


def test_replacing_a_parameter_leaves_the_store_and_flattening_again_restores_it(gpt2, rng):  # noqa: F811
    from coreformer.models import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(gpt2[0]).train()
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    ids = rng.integers(0, 211, (2, 9))
    run_steps(model, opt, ids, ids, 1)
    blk = model.transformer.h[0].mlp.c_fc
    p = dict(model.named_parameters())["transformer.h.0.mlp.c_fc.weight"]
    new = np.ones_like(blk.weight)
    blk.weight = new
    assert model.flat_parameters is None and p.data is new  # the same Parameter, over the new array
    store = model.flatten_parameters()
    check_store(model)
    assert p.data.base is store.data
    np.testing.assert_array_equal(p.data, 1.0)
    run_steps(model, opt, ids, ids, 1)  # the optimiser keeps stepping the same Parameters
    assert not np.array_equal(p.data, 1.0)


def test_device_path_views_the_one_buffer(gpt2, rng):  # noqa: F811
    """``.to(device)`` flattens and sends the buffer once; every weight on the device is a view of it.
    (On the CPU the same path runs on CPU Tensors.)"""
    from coreformer.models import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(gpt2[0])
    ids = rng.integers(0, 211, (2, 7))
    want = model(ids).logits
    store = model.flatten_parameters()
    model._use_tensors("cpu", "float32")
    assert list(store._tensors) == [("cpu", "float32")]
    got = model(ids).logits
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    whole = store._tensors[("cpu", "float32")]
    base = np.from_dlpack(whole).__array_interface__["data"][0]
    wte = model.__dict__["_device"]["wte"]
    off = np.from_dlpack(wte).__array_interface__["data"][0] - base
    assert off == 4 * (store.offset(model.transformer.wte.weight) or 0)
    model.to("cpu")
    assert not store._tensors
    model.train()
    with pytest.raises(RuntimeError, match="training mode"):
        model.to("cuda")


def test_tensor_indexing_is_a_view_along_the_first_dimension():
    a = np.arange(24, dtype=np.float32).reshape(6, 4)
    t = coreformer.tensor(a)
    np.testing.assert_array_equal(t[2].numpy(), a[2])
    np.testing.assert_array_equal(t[-1].numpy(), a[-1])
    np.testing.assert_array_equal(t[1:4].numpy(), a[1:4])
    np.testing.assert_array_equal(t[4:100].numpy(), a[4:100])
    assert t[3:3].shape == (0, 4)
    flat = coreformer.tensor(np.arange(10, dtype=np.float32))
    np.testing.assert_array_equal(flat[3:9].reshape(2, 3).numpy(), np.arange(3, 9).reshape(2, 3))
    ptr = lambda x: np.from_dlpack(x).__array_interface__["data"][0]  # noqa: E731
    assert ptr(t[2:]) == ptr(t) + 2 * 4 * 4  # the same memory, not a copy
    with pytest.raises(IndexError, match="out of range"):
        t[6]
    with pytest.raises(IndexError, match="out of range"):
        t[-7]
    with pytest.raises(ValueError, match="step 1"):
        t[::2]
    with pytest.raises(TypeError, match="int or a slice"):
        t[1.5]
    with pytest.raises(TypeError, match="int or a slice"):
        t[True]
    with pytest.raises(IndexError, match="0-d"):
        coreformer.tensor(np.float32(1.0))[0]


def test_linear_backward_writes_into_given_gradient_arrays(rng):
    from coreformer import ops
    x, w, dy = (rng.standard_normal(s).astype(np.float32) for s in ((5, 7), (3, 7), (5, 3)))
    dx, dw, db = ops.linear_backward(dy, x, w)
    buf = np.full(40, np.nan, np.float32)
    dw_out, db_out = buf[:21].reshape(3, 7), buf[21:24]
    dx2, dw2, db2 = ops.linear_backward(dy, x, w, dweight_out=dw_out, dbias_out=db_out)
    assert dw2 is dw_out and db2 is db_out
    np.testing.assert_array_equal(dw_out, dw)
    np.testing.assert_array_equal(db_out, db)
    np.testing.assert_array_equal(dx2, dx)
    assert np.isnan(buf[24:]).all()  # nothing written past them
    with pytest.raises(ValueError, match=r"dweight_out has shape \(7, 3\)"):
        ops.linear_backward(dy, x, w, dweight_out=np.zeros((7, 3), np.float32))
    with pytest.raises(ValueError, match=r"dbias_out has shape"):
        ops.linear_backward(dy, x, w, dbias_out=np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="dweight_out must be a float32"):
        ops.linear_backward(dy, x, w, dweight_out=np.zeros((3, 7)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dweight_out must be C-contiguous"):
        ops.linear_backward(dy, x, w, dweight_out=np.zeros((7, 3), np.float32).T)
    ro = np.zeros((3, 7), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dweight_out is read-only"):
        ops.linear_backward(dy, x, w, dweight_out=ro)
    with pytest.raises(TypeError, match="dweight_out must be None or a float32 numpy array"):
        ops.linear_backward(dy, x, w, dweight_out=[[0.0] * 7] * 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="overlaps"):
        ops.linear_backward(dy, x, w, dweight_out=w)
    both = np.zeros(24, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        ops.linear_backward(dy, x, w, dweight_out=both[:21].reshape(3, 7), dbias_out=both[18:21])


def test_backward_writes_gradients_straight_into_the_flat_buffer(gpt2, rng):  # noqa: F811
    """A fresh backward's linear weight gradients are computed into their slots (no copy after): the
    gradient arrays are the slots, and a second backward (accumulation) adds to them."""
    from coreformer.models import GPT2LMHeadModel
    model = GPT2LMHeadModel.from_pretrained(gpt2[0]).train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    ids = rng.integers(0, 211, (2, 9))
    model(ids, labels=ids).loss.backward()
    once = {n: np.array(p.grad) for n, p in model.named_parameters()}
    store = model.flat_parameters
    assert store is not None and store.grad is not None
    start = store.grad.__array_interface__["data"][0]
    for n, p in model.named_parameters():
        g = p.grad
        assert g is not None and g.base is store.grad, n
        assert store.offset(p.data) == (g.__array_interface__["data"][0] - start) // 4, n
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        np.testing.assert_allclose(np.asarray(p.grad), 2 * once[n], rtol=1e-6, atol=1e-7, err_msg=n)
