"""Models learn: labels -> .loss, loss.backward() -> every parameter's .grad, against transformers on the
same weights and batch (padding and ignored labels included), and optimiser steps against torch's."""
from typing import Any

import numpy as np
import pytest

from coreformer import optim

from conftest import assert_same_on_thread_counts, gpt2  # noqa: F401  (the fixture)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def norm_rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def batch(rng, vocab):
    ids = rng.integers(1, vocab, (3, 17))
    mask = np.ones((3, 17), np.int64)
    mask[1, 12:] = 0  # right padding
    mask[2, :4] = 0   # left padding (positions given as transformers' forward makes them: 0, 1, ...; ours
    # default to the running count of real tokens, as generate makes them)
    labels = np.where(mask == 1, ids, -100)
    labels[0, 5] = -100
    return ids, mask, labels


POS = np.arange(17)[None].repeat(3, 0)


def hf_grads(model):
    """transformers' gradients under our names and layouts (Conv1D weights transposed to (out, in))."""
    out = {}
    for name, p in model.named_parameters():
        g = p.grad.detach().double().numpy()
        out[name] = g.T if name.endswith(_CONV1D) else g
    return out


@pytest.fixture
def fresh_gpt2(gpt2):  # noqa: F811
    from coreformer.models import GPT2LMHeadModel
    d, ref, _ = gpt2
    return d, ref, GPT2LMHeadModel.from_pretrained(d)


def no_dropout(model):
    from coreformer import nn
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def test_gpt2_loss_and_every_gradient_match_transformers(fresh_gpt2, rng):
    d, ref, ours = fresh_gpt2
    no_dropout(ours)
    ids, mask, labels = batch(rng, ours.config.vocab_size)
    # eval mode: the loss, no backward
    out = ours(ids, attention_mask=mask, labels=labels, position_ids=POS)
    ref64 = transformers.GPT2LMHeadModel.from_pretrained(d).double().train()
    for m in ref64.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    t_out = ref64(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels),
                  position_ids=torch.tensor(POS))
    eval_loss = out["loss"]
    assert isinstance(eval_loss, float) and eval_loss == pytest.approx(t_out.loss.item(), rel=1e-5)
    assert f"{eval_loss:.3f}" == f"{float(eval_loss):.3f}" and eval_loss + 1 > 1  # a float as any other
    with pytest.raises(RuntimeError, match="eval-mode forward"):
        out.loss.backward()
    # training mode: every parameter's gradient
    ours.train()
    out = ours(ids, attention_mask=mask, labels=labels, position_ids=POS)
    assert out.loss == pytest.approx(t_out.loss.item(), rel=1e-5)
    keep = mask.astype(bool)
    assert norm_rel(out.logits[keep], t_out.logits.detach().numpy()[keep]) < 1e-5
    out.loss.backward()
    t_out.loss.backward()
    want = hf_grads(ref64)
    got = {name: p.grad for name, p in ours.named_parameters()}
    assert set(got) == set(want)
    for name, g in want.items():
        assert got[name] is not None, name
        assert norm_rel(got[name], g) < 1e-4, name
    with pytest.raises(RuntimeError, match="already called"):
        out.loss.backward()


def test_gpt2_training_steps_follow_torch_and_accumulation(fresh_gpt2, rng):
    d, _, ours = fresh_gpt2
    ref = transformers.GPT2LMHeadModel.from_pretrained(d, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0).train()
    no_dropout(ours).train()
    opt = optim.AdamW(ours.parameters(), lr=3e-3, weight_decay=0.01)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.01, foreach=False)
    sched = optim.get_linear_schedule_with_warmup(opt, 2, 6)
    ref_sched = transformers.get_linear_schedule_with_warmup(ref_opt, 2, 6)
    losses, ref_losses = [], []
    for step in range(6):
        ids, mask, labels = batch(rng, ours.config.vocab_size)
        out = ours(ids, attention_mask=mask, labels=labels, position_ids=POS)
        out.loss.backward()
        optim.clip_grad_norm_(ours.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        t = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels), position_ids=torch.tensor(POS))
        t.loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_sched.step()
        ref_opt.zero_grad()
        losses.append(float(out.loss))
        ref_losses.append(t.loss.item())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    # gradient accumulation: two half-batches (each loss weighted by its share of the tokens) = one batch
    ids, mask, labels = batch(rng, ours.config.vocab_size)
    ours.zero_grad()
    ours(ids, attention_mask=mask, labels=labels, position_ids=POS).loss.backward()
    whole = {n: p.grad.copy() for n, p in ours.named_parameters()}
    ours.zero_grad()
    from coreformer.models._common import shifted_labels
    counted = (shifted_labels(labels, ids.shape, ours.config.vocab_size) != -100).sum(axis=1)
    for rows in (slice(0, 1), slice(1, 3)):
        out = ours(ids[rows], attention_mask=mask[rows], labels=labels[rows], position_ids=POS[rows])
        share = counted[rows].sum() / counted.sum()
        for p in ours.parameters():  # scale this half's contribution by its share: backward accumulates
            if p.grad is not None:
                p.grad /= share
        out.loss.backward()
        for p in ours.parameters():
            p.grad *= share
    for n, p in ours.named_parameters():
        assert norm_rel(p.grad, whole[n]) < 1e-5, n


def test_gpt2_bad_labels_and_modes(fresh_gpt2, rng):
    _, _, ours = fresh_gpt2
    ids = rng.integers(0, ours.config.vocab_size, (2, 5))
    with pytest.raises(ValueError, match=r"labels must have the shape of input_ids \(2, 5\), got \(2, 4\)"):
        ours(ids, labels=ids[:, :4])
    with pytest.raises(IndexError, match="label 5000 is outside the vocabulary"):
        ours(ids, labels=np.full((2, 5), 5000))
    with pytest.raises(TypeError, match="labels must be integers"):
        ours(ids, labels=ids.astype(np.float32))
    ours.train()
    with pytest.raises(ValueError, match="without a KV cache"):
        ours(ids, cache=ours.new_cache(2, 8))
    ours.eval()
    assert ours.weights_dtype == "float32"  # packed again, as from_pretrained left it
    logits = ours(ids).logits
    assert logits.shape == (2, 5, ours.config.vocab_size)


def bert_pair(tmp_path, cls_name, **cfg_kw):
    """A small random BERT task model saved by transformers (biases and norms randomised), loaded by both."""
    from coreformer import models
    from conftest import save_randomised
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, **cfg_kw)
    ref = getattr(transformers, cls_name)(cfg)
    save_randomised(ref, tmp_path)
    ref = getattr(transformers, cls_name).from_pretrained(tmp_path).double().train()
    return ref, getattr(models, cls_name).from_pretrained(tmp_path).train()


def bert_batch(rng):
    ids = rng.integers(1, 97, (3, 13))
    mask = np.ones((3, 13), np.int64)
    mask[1, 9:] = 0
    mask[2, 5:] = 0
    tt = (np.arange(13)[None] >= 6).astype(np.int64).repeat(3, 0)
    return ids, mask, tt


def loss_and_backward(ours, ref, ids, mask, labels):
    """Both models' loss on (ids, mask, labels), equal within 1e-5, then both backwards."""
    out = ours(ids, attention_mask=mask, labels=labels)
    t = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels))
    assert out.loss == pytest.approx(t.loss.item(), rel=1e-5)
    out.loss.backward()
    t.loss.backward()
    return out, t


def loss_and_grads_match(ours, ref, ids, mask, labels):
    loss_and_backward(ours, ref, ids, mask, labels)
    compare_named_grads(ref, ours)


def compare_named_grads(ref, ours, rename=lambda n: n, skip=lambda n: False):
    """Every parameter gradient of a torch model `ref` against ours by name (rename: theirs -> ours), within
    1e-4; a gradient that is zero in exact arithmetic (a key bias) only has to be rounding-small."""
    got = {n: p.grad for n, p in ours.named_parameters()}
    scale = max(float(np.linalg.norm(p.grad.numpy())) for p in ref.parameters() if p.grad is not None)
    for name, p in ref.named_parameters():
        if p.grad is None or skip(name):
            continue
        g, mine = p.grad.numpy(), got[rename(name)]
        assert mine is not None, name
        if np.linalg.norm(g) < 1e-9 * scale:
            assert np.linalg.norm(mine) < 1e-5 * scale, name
            continue
        assert norm_rel(mine, g) < 1e-4, name


def compare_bert(ref, ours, ids, mask, tt, labels, t_labels):
    out = ours(ids, attention_mask=mask, token_type_ids=tt, labels=labels)
    t = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(tt), labels=t_labels)
    assert out.loss == pytest.approx(t.loss.item(), rel=1e-5)
    out.loss.backward()
    t.loss.backward()
    # the MLM decoder is tied to the word embeddings and to cls.predictions.bias: compared there
    compare_named_grads(ref, ours, skip=lambda n: n.endswith(("decoder.weight", "decoder.bias")))


@pytest.mark.parametrize("kind", ["single", "regression", "multi"])
def test_bert_sequence_classification_gradients(tmp_path, rng, kind):
    n = {"single": 3, "regression": 1, "multi": 4}[kind]
    ref, ours = bert_pair(tmp_path, "BertForSequenceClassification", num_labels=n)
    ids, mask, tt = bert_batch(rng)
    if kind == "single":
        labels = np.array([2, 0, 1])
        t_labels = torch.tensor(labels)
    elif kind == "regression":
        labels = rng.standard_normal(3).astype(np.float32)
        t_labels = torch.tensor(labels, dtype=torch.float64)
    else:
        labels = (rng.random((3, 4)) > 0.5).astype(np.float32)
        t_labels = torch.tensor(labels, dtype=torch.float64)
    compare_bert(ref, ours, ids, mask, tt, labels, t_labels)


def test_bert_token_classification_and_mlm_gradients(tmp_path, rng):
    ids, mask, tt = bert_batch(rng)
    ref, ours = bert_pair(tmp_path / "tok", "BertForTokenClassification", num_labels=5)
    labels = np.where(mask == 1, rng.integers(0, 5, ids.shape), -100)
    compare_bert(ref, ours, ids, mask, tt, labels, torch.tensor(labels))

    ref, ours = bert_pair(tmp_path / "mlm", "BertForMaskedLM")
    labels = np.full(ids.shape, -100)
    picked = (rng.random(ids.shape) < 0.3) & (mask == 1)
    labels[picked] = ids[picked]
    masked = np.where(picked, 3, ids)
    compare_bert(ref, ours, masked, mask, tt, labels, torch.tensor(labels))


def test_bert_fine_tuning_steps_follow_torch(tmp_path, rng):
    ref, ours = bert_pair(tmp_path, "BertForSequenceClassification", num_labels=3)
    ref = ref.float()
    decay = lambda named: [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]  # noqa: E731
    rest = lambda named: [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]  # noqa: E731
    groups: list[dict] = [{"params": decay(ours.named_parameters())},
                          {"params": rest(ours.named_parameters()), "weight_decay": 0.0}]
    opt = optim.AdamW(groups, lr=1e-3)
    ref_opt = torch.optim.AdamW([{"params": decay(ref.named_parameters())},
                                 {"params": rest(ref.named_parameters()), "weight_decay": 0.0}], lr=1e-3,
                                foreach=False)
    for _ in range(5):
        ids, mask, tt = bert_batch(rng)
        labels = rng.integers(0, 3, 3)
        out = ours(ids, attention_mask=mask, token_type_ids=tt, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        t = ref(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(tt),
                labels=torch.tensor(labels))
        t.loss.backward()
        ref_opt.step()
        ref_opt.zero_grad()
        assert out.loss == pytest.approx(t.loss.item(), rel=1e-4)


def test_bert_bad_labels(tmp_path, rng):
    _, ours = bert_pair(tmp_path, "BertForTokenClassification", num_labels=5)
    ids, mask, tt = bert_batch(rng)
    with pytest.raises(IndexError, match=r"label 7 is outside the labels \[0, 5\)"):
        ours(ids, labels=np.full(ids.shape, 7))
    with pytest.raises(ValueError, match="labels must have the shape of input_ids"):
        ours(ids, labels=np.zeros(3, np.int64))
    ours.eval()
    out = ours(ids, labels=np.zeros(ids.shape, np.int64))
    with pytest.raises(RuntimeError, match="eval-mode forward"):
        out.loss.backward()


def test_training_is_bit_identical_run_after_run_and_across_thread_counts(gpt2, rng):  # noqa: F811
    from coreformer.models import GPT2LMHeadModel
    d = gpt2[0]
    ids, mask, labels = batch(rng, 211)

    def run():
        m = GPT2LMHeadModel.from_pretrained(d).train().seed_dropout(7)  # hidden dropout on (p = 0.1)
        opt = optim.AdamW(m.parameters(), lr=1e-3)
        losses = []
        for _ in range(3):
            out = m(ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            optim.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            losses.append(float(out.loss))
        return (np.array(losses), *(p.data.copy() for p in m.parameters()))
    assert_same_on_thread_counts(run, counts=(1, 2, 2, 3))  # run after run (2 twice) and across counts


def test_gpt2_dropout_seeded_and_its_gradient_uses_the_forwards_masks(fresh_gpt2, rng):
    """Hidden and attention-probability dropout (inside the attention kernels) as transformers places them:
    seeded runs repeat, and central differences with the masks replayed match the gradient -- through an
    attention projection too, whose gradient passes the dropped probabilities."""
    from coreformer import nn
    _, _, ours = fresh_gpt2
    ids, mask, labels = batch(rng, 211)
    eval_loss = float(ours(ids, attention_mask=mask, labels=labels, position_ids=POS).loss)
    ours.train().seed_dropout(3)
    drops = [m for m in ours.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 * 3 + 1 and all(m.p == pytest.approx(0.1) for m in drops)  # attn, resid, mlp; embeddings
    offsets = [m.offset for m in drops]
    out = ours(ids, attention_mask=mask, labels=labels, position_ids=POS)
    assert float(out.loss) != pytest.approx(eval_loss, rel=1e-4)  # dropout is on in training
    out.loss.backward()
    # the same seed gives the same masks
    ours.seed_dropout(3)
    again = ours(ids, attention_mask=mask, labels=labels, position_ids=POS)
    assert float(again.loss) == float(out.loss)
    # a directional derivative by central differences, the forward's masks replayed, matches the gradient
    # (the attention weights, at this init's 0.3 scale, curve faster: a smaller step)
    for name, eps in (("transformer.h.1.mlp.c_fc.weight", 3e-3), ("transformer.h.0.attn.c_attn.weight", 1e-3)):
        p = dict(ours.named_parameters())[name]
        assert p.grad is not None
        direction = rng.standard_normal(p.shape).astype(np.float32)
        want = float((p.grad.astype(np.float64) * direction).sum())
        losses = []
        for sign in (1.0, -1.0):
            for m, o in zip(drops, offsets):
                m.offset = o
            p.data += np.float32(sign * eps) * direction
            losses.append(float(ours(ids, attention_mask=mask, labels=labels, position_ids=POS).loss))
            p.data -= np.float32(sign * eps) * direction
        assert (losses[0] - losses[1]) / (2 * eps) == pytest.approx(want, rel=2e-2), name
    # without attention dropout the loss differs: the attention kernels drop too
    for m, o in zip(drops, offsets):
        m.offset = o
    for blk in ours.transformer.h:
        blk.attn.attn_dropout.p = 0.0
    assert float(ours(ids, attention_mask=mask, labels=labels, position_ids=POS).loss) != float(out.loss)
    # p = 0 everywhere: training computes what eval does
    no_dropout(ours)
    assert float(ours(ids, attention_mask=mask, labels=labels, position_ids=POS).loss) == pytest.approx(eval_loss,
                                                                                                          rel=1e-6)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("norm_first,tie", [(False, False), (True, True)])
def test_encoder_decoder_transformer_gradients_match_torch(rng, norm_first, tie):
    """models.Transformer against torch.nn.Transformer + the same scaled embeddings, sinusoidal positions and
    output projection, written out in torch: the loss and every parameter's gradient."""
    from coreformer import nn
    from coreformer.models import Transformer
    d, h, ff, layers, vs, vt = 32, 4, 48, 2, 40, 45
    nn.manual_seed(0)
    ours = Transformer(vs, vt, d, h, layers, layers, ff, norm_first=norm_first, tie_embeddings=tie)
    for p in ours.parameters():  # random biases and norms, so a swapped or dropped one shows
        if p.data.ndim == 1:
            p.data += rng.standard_normal(p.shape).astype(np.float32) * 0.3
    tr = torch.nn.Transformer(d, h, layers, layers, ff, dropout=0.0, batch_first=True, norm_first=norm_first).double()
    sd = ours.state_dict()
    tr.load_state_dict({k: torch.tensor(v.astype(np.float64)) for k, v in sd.items()
                        if k.startswith(("encoder.", "decoder."))})
    src, tgt = rng.integers(0, vs, (3, 11)), rng.integers(0, vt, (3, 7))
    spad = np.zeros((3, 11), bool)
    spad[1, 8:] = True
    labels = rng.integers(0, vt, (3, 7))
    labels[2, 5:] = -100
    ours.train()
    out = ours(src, tgt, src_padding_mask=spad, labels=labels)

    se = torch.tensor(sd["src_embed.weight"].astype(np.float64), requires_grad=True)
    te = torch.tensor(sd["tgt_embed.weight"].astype(np.float64), requires_grad=True)
    gw = te if tie else torch.tensor(sd["generator.weight"].astype(np.float64), requires_grad=True)
    gb = torch.tensor(sd["generator.bias"].astype(np.float64), requires_grad=True)
    pe = lambda n: torch.tensor(ours.positions.encodings(0, n).astype(np.float64))  # noqa: E731
    x = se[torch.tensor(src)] * np.sqrt(d) + pe(11)
    y = te[torch.tensor(tgt)] * np.sqrt(d) + pe(7)
    hid = tr(x, y, tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.float64),
             tgt_is_causal=True, src_key_padding_mask=torch.tensor(spad), memory_key_padding_mask=torch.tensor(spad))
    logits = hid @ gw.T + gb
    tl = torch.nn.functional.cross_entropy(logits.reshape(-1, vt), torch.tensor(labels).reshape(-1))
    assert out.loss == pytest.approx(tl.item(), rel=1e-5)
    tl.backward()
    out.loss.backward()
    want = {f"{k}": p.grad.numpy() for k, p in tr.named_parameters()}
    want["src_embed.weight"], want["tgt_embed.weight"] = se.grad.numpy(), te.grad.numpy()
    want["generator.bias"] = gb.grad.numpy()
    if not tie:
        want["generator.weight"] = gw.grad.numpy()
    got = {n: p.grad for n, p in ours.named_parameters()}
    assert set(got) == set(want)
    for name, g in want.items():
        assert got[name] is not None, name
        if np.linalg.norm(g) < 1e-9 * max(np.linalg.norm(w) for w in want.values()):
            continue  # zero in exact arithmetic (key biases)
        assert norm_rel(got[name], g) < 1e-4, name


def test_roberta_sequence_classification_gradients(tmp_path, rng):
    """RoBERTa: positions numbered after the pad id, the dense-tanh-out_proj head, the pad rows of the word
    and position tables kept out of training (transformers' padding_idx)."""
    from coreformer.models import RobertaForSequenceClassification
    from conftest import save_randomised
    cfg = transformers.RobertaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, num_labels=3, pad_token_id=1, type_vocab_size=1)
    save_randomised(transformers.RobertaForSequenceClassification(cfg), tmp_path)
    ref = transformers.RobertaForSequenceClassification.from_pretrained(tmp_path).double().train()
    ours = RobertaForSequenceClassification.from_pretrained(tmp_path).train()
    ids = rng.integers(3, 97, (3, 13))
    ids[:, 0] = 0
    mask = np.ones((3, 13), np.int64)
    mask[1, 9:] = 0
    ids[mask == 0] = 1  # the pad id, as a tokenizer pads
    loss_and_grads_match(ours, ref, ids, mask, np.array([2, 0, 1]))


def test_a_later_forward_or_another_thread_never_gives_a_silent_wrong_gradient(fresh_gpt2, tmp_path, rng):
    import threading
    from coreformer.models._common import _guard
    _, _, ours = fresh_gpt2
    ids, mask, labels = batch(rng, 211)
    ours.train()
    first = ours(ids, labels=labels)
    second = ours(ids[:, :9], labels=labels[:, :9])  # replaces the activations the first one's backward needs
    with pytest.raises(RuntimeError, match="ran another training forward after the one that made this loss"):
        first.loss.backward()
    second.loss.backward()  # the latest one is fine
    # another thread in the middle of a training step on the same model: refused, never interleaved
    g = _guard(ours)
    held, release = threading.Event(), threading.Event()

    def trainer() -> None:
        with g.lock:
            held.set()
            release.wait(10)
    t = threading.Thread(target=trainer)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(RuntimeError, match="another thread is running a training forward or backward"):
            ours(ids, labels=labels)
        out = None
    finally:
        release.set()
        t.join()
    out = ours(ids, labels=labels)
    out.loss.backward()
    # the same for the BERT family and the encoder-decoder (one guard in each task model)
    _, bert = bert_pair(tmp_path, "BertForSequenceClassification", num_labels=3)
    b_ids, b_mask, b_tt = bert_batch(rng)
    a = bert(b_ids, attention_mask=b_mask, labels=np.array([0, 1, 2]))
    bert(b_ids, attention_mask=b_mask, labels=np.array([0, 1, 2]))
    with pytest.raises(RuntimeError, match="ran another training forward"):
        a.loss.backward()


def test_distilbert_classifier_and_roberta_token_classifier_gradients(tmp_path, rng):
    from coreformer.models import DistilBertForSequenceClassification, DistilBertModel, RobertaForTokenClassification
    from conftest import save_randomised
    cfg = transformers.DistilBertConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, hidden_dim=48,
                                        max_position_embeddings=40, dropout=0.0, attention_dropout=0.0,
                                        seq_classif_dropout=0.0, num_labels=3)
    save_randomised(transformers.DistilBertForSequenceClassification(cfg), tmp_path / "d")
    ref = transformers.DistilBertForSequenceClassification.from_pretrained(tmp_path / "d").double().train()
    ours = DistilBertForSequenceClassification.from_pretrained(tmp_path / "d").train()
    ids, mask, _ = bert_batch(rng)
    loss_and_backward(ours, ref, ids, mask, np.array([1, 2, 0]))

    def rename(n: str) -> str:
        n = n.replace("transformer.layer.", "encoder.layer.")
        for theirs, mine in DistilBertModel.layer_names.items():
            n = n.replace(theirs, mine)
        return n
    compare_named_grads(ref, ours, rename)
    assert dict(ours.named_parameters())["distilbert.embeddings.token_type_embeddings.weight"].grad is None

    rcfg = transformers.RobertaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=48, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0, num_labels=5, pad_token_id=1, type_vocab_size=1)
    save_randomised(transformers.RobertaForTokenClassification(rcfg), tmp_path / "r")
    ref = transformers.RobertaForTokenClassification.from_pretrained(tmp_path / "r").double().train()
    ours = RobertaForTokenClassification.from_pretrained(tmp_path / "r").train()
    ids[mask == 0] = 1
    loss_and_grads_match(ours, ref, ids, mask, np.where(mask == 1, rng.integers(0, 5, ids.shape), -100))


def grads_after_steps(model, batch_fn, checkpointed, steps=2):
    """Two seeded AdamW steps with dropout on; the gradients of the last and the weights after."""
    if checkpointed:
        model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing == checkpointed
    model.train().seed_dropout(11)
    opt = optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        out = batch_fn(model)
        if checkpointed:  # between forward and backward each layer holds only its input
            layers = [m for m in model.modules() if m.__dict__.get("_checkpoint")]
            assert layers and all(not x.__dict__.get("_saved") for m in layers for x in m.modules())
        out.loss.backward()
        opt.step()
    return {n: p.grad.copy() for n, p in model.named_parameters()}, model.state_dict()


@pytest.mark.parametrize("kind", ["gpt2", "bert", "transformer"])
def test_gradient_checkpointing_gives_the_same_gradients_bit_for_bit(gpt2, tmp_path, rng, kind):  # noqa: F811
    from typing import Callable

    from coreformer.models import BertForSequenceClassification, GPT2LMHeadModel, Transformer
    make: Callable[[], Any]
    if kind == "gpt2":
        ids, mask, labels = batch(rng, 211)
        make = lambda: GPT2LMHeadModel.from_pretrained(gpt2[0])  # noqa: E731
        run = lambda m: m(ids, mask, position_ids=POS, labels=labels)  # noqa: E731
    elif kind == "bert":
        cfg = transformers.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=50, num_labels=3)
        transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path)
        ids, mask, _ = batch(rng, 90)
        y = rng.integers(0, 3, 3)
        make = lambda: BertForSequenceClassification.from_pretrained(tmp_path)  # noqa: E731
        run = lambda m: m(ids, mask, labels=y)  # noqa: E731
    else:
        src, tgt = rng.integers(1, 40, (2, 9)), rng.integers(1, 30, (2, 7))
        run = lambda m: m(src, tgt, labels=tgt)  # noqa: E731
        from coreformer import nn
        nn.manual_seed(5)
        sd = {k: v.copy() for k, v in Transformer(40, 30, 32, 4, 2, 2, 48).state_dict().items()}
        make = lambda: Transformer(40, 30, 32, 4, 2, 2, 48).load_state_dict(sd)  # noqa: E731
    g0, w0 = grads_after_steps(make(), run, False)
    g1, w1 = grads_after_steps(make(), run, True)
    assert any(float(np.abs(g).max()) > 0 for g in g0.values())
    for n in g0:
        np.testing.assert_array_equal(g1[n], g0[n], err_msg=n)
        np.testing.assert_array_equal(w1[n], w0[n], err_msg=n)


def test_bert_attention_dropout_gradient_by_central_differences(tmp_path, rng):
    """BERT's attention_probs_dropout_prob runs inside the attention kernels: seeded, and the gradient of a
    query weight (through the dropped probabilities) matches central differences with the masks replayed."""
    from coreformer import nn
    from coreformer.models import BertForSequenceClassification
    cfg = transformers.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=50, num_labels=3, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.2, initializer_range=0.2)  # gradients not tiny
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path)
    model = BertForSequenceClassification.from_pretrained(tmp_path).train().seed_dropout(7)
    ids, mask, _ = batch(rng, 90)
    y = rng.integers(0, 3, 3)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    assert len(drops) == 2  # one per layer: attention.self.dropout
    offsets = [m.offset for m in drops]
    out = model(ids, mask, labels=y)
    out.loss.backward()
    p = dict(model.named_parameters())["bert.encoder.layer.0.attention.self.query.weight"]
    assert p.grad is not None
    direction = rng.standard_normal(p.shape).astype(np.float32)
    want = float((p.grad.astype(np.float64) * direction).sum())
    eps, losses = 3e-3, []
    for sign in (1.0, -1.0):
        for m, o in zip(drops, offsets):
            m.offset = o
        p.data += np.float32(sign * eps) * direction
        losses.append(float(model(ids, mask, labels=y).loss))
        p.data -= np.float32(sign * eps) * direction
    assert abs(want) > 1e-2
    assert (losses[0] - losses[1]) / (2 * eps) == pytest.approx(want, rel=1e-2)
    for m, o in zip(drops, offsets):
        m.offset = o
        m.p = 0.0
    assert float(model(ids, mask, labels=y).loss) != float(out.loss)  # the attention did drop


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("opt_name", ["adamw", "sgd"])
def test_twenty_steps_track_torch_optim(gpt2, tmp_path, rng, kind, opt_name):  # noqa: F811
    """20 steps of AdamW (weight decay on the matrices only, clipping, linear warm-up) or SGD with momentum
    (Nesterov, weight decay), the model's own flat store against torch.optim on transformers' float32 model:
    every loss within 1e-4 relative, and every weight within 1e-4 (norm-wise) at the end."""
    if kind == "gpt2":
        d = gpt2[0]
        ref = transformers.GPT2LMHeadModel.from_pretrained(d, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
        from coreformer.models import GPT2LMHeadModel
        ours = no_dropout(GPT2LMHeadModel.from_pretrained(d))

        def batches():
            ids, mask, labels = batch(rng, 211)
            return ((ids,), dict(attention_mask=mask, labels=labels, position_ids=POS))
        conv = lambda n: n.endswith(_CONV1D)  # noqa: E731
    else:
        ref, ours = bert_pair(tmp_path, "BertForSequenceClassification", num_labels=3)
        ref = ref.float()

        def batches():
            ids, mask, tt = bert_batch(rng)
            return ((ids,), dict(attention_mask=mask, token_type_ids=tt, labels=rng.integers(0, 3, 3)))
        conv = lambda n: False  # noqa: E731
    ref.train()
    ours.train()
    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n or ".ln_" in n  # noqa: E731
    mine: list[dict[str, Any]] = [{"params": [p for n, p in ours.named_parameters() if not no_decay(n)]},
            {"params": [p for n, p in ours.named_parameters() if no_decay(n)], "weight_decay": 0.0}]
    theirs = [{"params": [p for n, p in ref.named_parameters() if not no_decay(n)]},
              {"params": [p for n, p in ref.named_parameters() if no_decay(n)], "weight_decay": 0.0}]
    opt: optim.Optimizer
    sched: optim.LambdaLR | None
    if opt_name == "adamw":
        opt = optim.AdamW(mine, lr=2e-3, weight_decay=0.05)
        ref_opt = torch.optim.AdamW(theirs, lr=2e-3, weight_decay=0.05, foreach=False)
        sched = optim.get_linear_schedule_with_warmup(opt, 4, 20)
        ref_sched = transformers.get_linear_schedule_with_warmup(ref_opt, 4, 20)
    else:
        opt = optim.SGD(mine, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
        ref_opt = torch.optim.SGD(theirs, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, foreach=False)
        sched = ref_sched = None
    for step in range(20):
        args, kw = batches()
        out = ours(*args, **kw)
        out.loss.backward()
        t = ref(*(torch.tensor(a) for a in args), **{k: torch.tensor(v) for k, v in kw.items()})
        t.loss.backward()
        if opt_name == "adamw":
            optim.clip_grad_norm_(ours.parameters(), 1.0)
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        ref_opt.step()
        if sched is not None and ref_sched is not None:
            sched.step()
            ref_sched.step()
        opt.zero_grad()
        ref_opt.zero_grad()
        assert float(out.loss) == pytest.approx(t.loss.item(), rel=1e-4), step
    got = ours.state_dict()
    for name, p in ref.named_parameters():
        want = p.detach().numpy()
        have = got[name]
        if name.endswith("attn.c_attn.bias") and opt_name == "adamw":
            # the key bias's gradient is zero in exact arithmetic (softmax ignores a shift of every score);
            # AdamW divides its rounding noise by that noise's own size: full-size steps in any direction
            e = want.size // 3
            keep = np.r_[0:e, 2 * e:3 * e]
            have, want = have[keep], want[keep]
        assert norm_rel(have, want.T if conv(name) else want) < 1e-4, name
