"""Models against Hugging Face transformers and torch on the same weights (small random configs
saved with save_pretrained into a temp folder; nothing comes from a hub)."""
import itertools
import json
import shutil
import threading
import warnings
from typing import Any

import numpy as np
import pytest
from coreformer import nn
from coreformer.models import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    GPT2LMHeadModel,
    TokenStreamer,
    Transformer,
)
from coreformer.models.generation import NextToken

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def bert_inputs(b=3, s=17, vocab=120):
    rng = np.random.default_rng(5)
    ids = rng.integers(0, vocab, (b, s))
    mask = np.ones((b, s), np.int64)
    mask[1, 10:] = 0
    mask[2, 3:] = 0
    types = np.zeros((b, s), np.int64)
    types[:, 8:] = 1
    return ids, mask, types


def hf(model, ids, mask, types):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     token_type_ids=torch.tensor(types))


def test_bert_padding_anywhere(bert_dirs):
    # The padded path gathers each row's real tokens (after the embeddings, so positions are kept):
    # holes, left padding and a row of one token must all give transformers' values where the mask
    # is 1, and zeros where it is 0; MLM logits too (the head runs on the zeros, as it would run on
    # transformers' values there).
    d, ref = bert_dirs["BertModel"]
    model = BertModel.from_pretrained(d)
    ids, _, types = bert_inputs(b=4, s=17)
    mask = np.ones((4, 17), np.int64)
    mask[0, [2, 5, 6]] = 0    # holes
    mask[1, :6] = 0           # left padding
    mask[2, 1:] = 0           # one token
    want, got = hf(ref, ids, mask, types), model(ids, mask, types)
    keep = mask.astype(bool)
    assert rel_err(got.last_hidden_state[keep], want.last_hidden_state.numpy()[keep]) < 1e-5
    assert np.all(got.last_hidden_state[~keep] == 0)
    assert rel_err(got.last_hidden_state[3], want.last_hidden_state.numpy()[3]) < 1e-5  # a full row
    # a row does not depend on the others: alone, it gives the same values
    alone = model(ids[1:2], mask[1:2], types[1:2]).last_hidden_state
    np.testing.assert_allclose(alone[0], got.last_hidden_state[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,ours", [("BertModel", BertModel),
                                       ("BertForSequenceClassification", BertForSequenceClassification),
                                       ("BertForMaskedLM", BertForMaskedLM)])
def test_bert_matches_transformers(bert_dirs, name, ours):
    d, ref = bert_dirs[name]
    model = ours.from_pretrained(d)
    ids, mask, types = bert_inputs()
    want, got = hf(ref, ids, mask, types), model(ids, mask, types)
    keep = mask.astype(bool)
    if name != "BertForSequenceClassification":
        assert rel_err(got.last_hidden_state[keep], want.last_hidden_state.numpy()[keep]) < 1e-5 if hasattr(
            want, "last_hidden_state") else True
    if name == "BertModel":
        assert rel_err(got.pooler_output, want.pooler_output.numpy()) < 1e-5
    elif name == "BertForSequenceClassification":
        assert got.logits.shape == (3, 3)
        assert rel_err(got.logits, want.logits.numpy()) < 1e-5
    else:
        assert got.logits.shape == (3, 17, 120)
        assert rel_err(got.logits[keep], want.logits.numpy()[keep]) < 1e-5
    # without a mask or token types
    with torch.no_grad():
        plain = ref(input_ids=torch.tensor(ids))
    out = model(ids)
    key = "pooler_output" if name == "BertModel" else "logits"
    assert rel_err(out[key], getattr(plain, key).numpy()) < 1e-5


@pytest.mark.parametrize("dtype", [None, "float32", "bfloat16", "int8"])
def test_bert_weight_dtypes(bert_dirs, dtype):
    d, ref = bert_dirs["BertForMaskedLM"]
    model = BertForMaskedLM.from_pretrained(d, dtype=dtype)
    assert model.weights_dtype == dtype
    ids, mask, types = bert_inputs()
    want, got = hf(ref, ids, mask, types), model(ids, mask, types)
    keep = mask.astype(bool)
    err = rel_err(got.logits[keep], want.logits.numpy()[keep])
    if dtype in ("bfloat16", "int8"):
        assert 1e-5 < err < 3e-2  # narrow weights: visibly used, still close
    else:
        assert err < 1e-5
    # the state dict is the checkpoint's float32 tensors whatever the compute dtype
    sd = model.state_dict()
    for k, v in ref.state_dict().items():
        if k in sd:
            assert np.array_equal(sd[k], v.numpy()), k


def test_bert_hidden_states_of_a_task_checkpoint(bert_dirs):
    d, ref = bert_dirs["BertForSequenceClassification"]
    base = BertModel.from_pretrained(d)  # the head is left out, the encoder is loaded
    ids, mask, types = bert_inputs()
    want = hf(ref.bert, ids, mask, types)
    assert rel_err(base(ids, mask, types).pooler_output, want.pooler_output.numpy()) < 1e-5


def test_bert_encoder_of_a_checkpoint_without_pooler(bert_dirs):
    d, ref = bert_dirs["BertForMaskedLM"]  # saved without a pooler: the error says how to load it
    with pytest.raises(ValueError, match=r"missing tensors: pooler.dense.bias, pooler.dense.weight "
                                         r"\(.*add_pooling_layer=False"):
        BertModel.from_pretrained(d)
    base = BertModel.from_pretrained(d, add_pooling_layer=False)
    ids, mask, types = bert_inputs()
    out = base(ids, mask, types)
    want = hf(ref.bert, ids, mask, types).last_hidden_state.numpy()
    real = mask.astype(bool)
    assert out.pooler_output is None and rel_err(out.last_hidden_state[real], want[real]) < 1e-5


def test_bert_errors(bert_dirs, tmp_path):
    d, _ = bert_dirs["BertModel"]
    with pytest.raises(ValueError, match="missing tensors: classifier.bias, classifier.weight"):
        BertForSequenceClassification.from_pretrained(d)
    model = BertModel.from_pretrained(d)
    ids, mask, _ = bert_inputs()
    with pytest.raises(IndexError, match=r"input_ids\[0, 0\] is 2\d\d, outside the vocabulary \[0, "):
        model(ids + 200, mask)
    with pytest.raises(IndexError, match=r"token_type_ids\[1, 2\] is 2, outside the token types \[0, 2\)"):
        bad_types = np.zeros_like(ids)
        bad_types[1, 2] = 2
        model(ids, mask, bad_types)
    with pytest.raises(ValueError, match="40 \\(max_position_embeddings\\)"):
        model(np.zeros((1, 41), np.int64))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(ids, mask[:, :5])
    with pytest.raises(TypeError, match="integer"):
        model(ids.astype(np.float32))
    with pytest.raises(ValueError, match="at least one token"):
        model(np.zeros((2, 0), np.int64))
    # a folder without config / weights, an unsupported model_type, bad tensors, a corrupt file
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        BertModel.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertModel.from_pretrained(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        BertModel.from_pretrained(bad)
    shutil.copy(d / "model.safetensors", bad / "model.safetensors")
    cfg = json.loads((d / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "roberta"}))
    with pytest.raises(ValueError, match="'roberta'"):
        BertModel.from_pretrained(bad)
    for key in ("is_decoder", "add_cross_attention"):
        (bad / "config.json").write_text(json.dumps({**cfg, key: True}))
        with pytest.raises(ValueError, match="decoder"):
            BertModel.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"num_hidden_layers=3 but the weights hold 2 layers \(missing tensors from layer 2"):
        BertModel.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match="unexpected tensors: encoder.layer.1"):
        BertModel.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(ValueError, match="shape"):
        BertModel.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    blob = (d / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated"):
        BertModel.from_pretrained(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        BertModel.from_pretrained(bad)


# ---------------------------------------------------------------- GPT-2

def prompts():
    rng = np.random.default_rng(7)
    return [rng.integers(1, 211, n) for n in (13, 5, 9)]


def left_pad(rows, pad=0):
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def test_gpt2_logits_match_transformers(gpt2):
    _, ref, model = gpt2
    ids, mask = left_pad(prompts())
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids[:1])).logits.numpy()
        pos = torch.tensor(np.where(mask, mask.cumsum(1) - 1, 0))
        want_b = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=pos).logits.numpy()
    assert rel_err(model(ids[:1]).logits, want) < 1e-5
    got_b = model(ids, mask).logits
    keep = mask.astype(bool)
    assert rel_err(got_b[keep], want_b[keep]) < 1e-5
    # the cache: the prompt, then one token at a time, gives the full forward's logits
    cache = model.new_cache(1, 4)  # too small: it must grow
    parts = [model(ids[:1, :6], cache=cache).logits] + [model(ids[:1, i:i + 1], cache=cache).logits
                                                        for i in range(6, ids.shape[1])]
    assert rel_err(np.concatenate(parts, axis=1), want) < 1e-5
    assert model(ids[:1], logits_to_keep=1).logits.shape == (1, 1, 211)


@pytest.mark.parametrize("dtype", [None, "bfloat16", "int8"])
def test_gpt2_weight_dtypes(gpt2, tmp_path, dtype):
    d, ref, packed_f32 = gpt2
    model = GPT2LMHeadModel.from_pretrained(d, dtype=dtype)
    assert model.weights_dtype == dtype and packed_f32.weights_dtype == "float32"
    ids, _ = left_pad(prompts())
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids[:1])).logits.numpy()
    err = rel_err(model(ids[:1]).logits, want)
    assert (1e-5 < err < 5e-2) if dtype in ("bfloat16", "int8") else err < 1e-5
    # Conv1D weights come back in torch's (out, in) layout, equal to the checkpoint's, and save/load round-trips
    hf_sd = ref.state_dict()
    for ours in (model, packed_f32):
        w = ours.state_dict()["transformer.h.1.mlp.c_fc.weight"]
        assert np.array_equal(w, hf_sd["transformer.h.1.mlp.c_fc.weight"].numpy().T)
    model.save(tmp_path / "w.safetensors")
    again = GPT2LMHeadModel(model.config).load(tmp_path / "w.safetensors")
    assert rel_err(again(ids[:1]).logits, want) < 1e-5
    if dtype is not None:
        got = model.generate(ids[:1], max_new_tokens=8, eos_token_id=[])
        assert got.shape == (1, ids.shape[1] + 8)


def test_gpt2_greedy_50_tokens_identical_alone_and_in_a_left_padded_batch(gpt2):
    _, ref, model = gpt2
    rows = prompts()
    alone = []
    for r in rows:
        with torch.no_grad():
            want = ref.generate(torch.tensor(r[None]), max_new_tokens=50, do_sample=False, eos_token_id=None,
                                pad_token_id=0).numpy()
        got = model.generate(r[None], max_new_tokens=50, eos_token_id=[])
        np.testing.assert_array_equal(got, want)
        assert len(set(got[0, len(r):].tolist())) > 5  # a continuation that says something
        alone.append(got[0])
    ids, mask = left_pad(rows)
    with torch.no_grad():
        want = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=50,
                            do_sample=False, eos_token_id=None, pad_token_id=0).numpy()
    got = model.generate(ids, mask, max_new_tokens=50, eos_token_id=[])
    np.testing.assert_array_equal(got, want)
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(got[i, ids.shape[1] - len(r):], alone[i])


def test_gpt2_right_padding_and_the_repetition_penalty_leave_each_row_as_alone(gpt2):
    # The Tokenizer pads on the right by default: generate moves each row's tokens to the right end
    # (the new tokens still start at column `width`), and the repetition penalty does not count a
    # row's padding as seen. The padding id is a token the short row picks first on its own, so
    # counting it would change that row.
    _, _, model = gpt2
    rows = prompts()
    width = max(len(r) for r in rows)
    for kw in (dict(), dict(repetition_penalty=1.5)):
        alone = [model.generate(r[None], max_new_tokens=20, eos_token_id=[], **kw)[0] for r in rows]
        pad = int(alone[1][len(rows[1])])
        assert pad not in rows[1]
        left, lmask = left_pad(rows, pad)
        right, rmask = np.full_like(left, pad), np.zeros_like(lmask)
        for i, r in enumerate(rows):
            right[i, :len(r)] = r
            rmask[i, :len(r)] = 1
        for ids, mask in ((left, lmask), (right, rmask)):
            got = model.generate(ids, mask, max_new_tokens=20, eos_token_id=[], **kw)
            assert got.shape == (len(rows), width + 20)
            for i, r in enumerate(rows):
                np.testing.assert_array_equal(got[i, width - len(r):], alone[i])
                assert not mask[i].all() or np.array_equal(got[i, :width], ids[i])


def test_gpt2_repetition_penalty_greedy_matches_transformers(gpt2):
    _, ref, model = gpt2
    r = prompts()[0]
    with torch.no_grad():
        want = ref.generate(torch.tensor(r[None]), max_new_tokens=30, do_sample=False, repetition_penalty=1.5,
                            eos_token_id=None, pad_token_id=0).numpy()
    np.testing.assert_array_equal(model.generate(r[None], max_new_tokens=30, repetition_penalty=1.5,
                                                 eos_token_id=[]), want)


def test_sampling_filters_match_transformers_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((4, 97)) * 3).astype(np.float32)
    ids = rng.integers(0, 97, (4, 9))
    for temp, k, p, pen in [(0.7, 10, 0.9, 1.3), (1.5, None, 0.5, 1.0), (1.0, 3, None, 0.8), (0.3, None, 0.99, 1.0)]:
        s = torch.tensor(logits)
        ti = torch.tensor(ids)
        if pen != 1.0:
            s = RepetitionPenaltyLogitsProcessor(pen)(ti, s)
        s = TemperatureLogitsWarper(temp)(ti, s)
        if k:
            s = TopKLogitsWarper(k)(ti, s)
        if p:
            s = TopPLogitsWarper(p)(ti, s)
        got = NextToken(True, temp, k, p, pen).scores(logits, ids)
        want = s.numpy()
        assert np.array_equal(np.isinf(got), np.isinf(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=1e-6)


def test_top_p_over_a_large_vocabulary():
    # top-p looks for the nucleus among the 256 (then 4096) largest scores before it sorts a whole row:
    # each way must keep exactly the tokens the sort keeps (ties: the stable ascending sort removes the
    # lower index first), and match transformers' warper where no ties make its unstable sort ambiguous
    from transformers.generation.logits_process import TopPLogitsWarper

    def by_sort(row, top_p):
        order = np.argsort(row, kind="stable")
        p = np.exp(row[order].astype(np.float64) - row.max())
        remove = np.cumsum(p / p.sum()) <= 1.0 - top_p
        remove[-1] = False
        out = row.copy()
        out[order[remove]] = -np.inf
        return out

    rng = np.random.default_rng(4)
    sizes = []
    for trial in range(120):
        v = (50257, 5000, 300)[trial % 3]
        row = (rng.standard_normal(v) * (0.5, 3, 8, 20)[trial % 4]).astype(np.float32)
        if trial % 5 == 0:
            row = np.round(row, 1)  # many ties, some at the nucleus' edge
        if trial % 7 == 0:
            row[rng.integers(0, v, v // 2)] = -np.inf  # as after top-k
        top_p = (0.1, 0.5, 0.9, 0.95, 0.99)[trial % 5]
        got = NextToken(True, 1.0, None, top_p).scores(row[None], np.zeros((1, 0), np.int64))[0]
        want = by_sort(row, top_p)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")
        sizes.append(int(np.isfinite(got).sum()))
        if trial % 5 != 0:
            ref = TopPLogitsWarper(top_p)(None, torch.tensor(row[None])).numpy()[0]
            np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
    # every path taken: nuclei within the first 256, within 4096, and wider
    assert min(sizes) < 256 and any(256 < n < 4096 for n in sizes) and max(sizes) > 4096


def test_gpt2_sampling_is_reproducible_with_a_seed(gpt2):
    _, _, model = gpt2
    ids, mask = left_pad(prompts())
    kw = dict(max_new_tokens=40, do_sample=True, temperature=0.9, top_k=50, top_p=0.95, eos_token_id=[])
    a = model.generate(ids, mask, seed=11, **kw)
    b = model.generate(ids, mask, seed=11, **kw)
    c = model.generate(ids, mask, seed=12, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # top_k=1 sampling is greedy
    np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=20, do_sample=True, top_k=1, seed=3,
                                                 eos_token_id=[]),
                                  model.generate(ids, mask, max_new_tokens=20, eos_token_id=[]))


def test_gpt2_rows_stop_at_eos_and_streamers_see_every_token(gpt2):
    _, ref, model = gpt2
    ids, mask = left_pad(prompts())
    free = model.generate(ids, mask, max_new_tokens=30, eos_token_id=[])
    p = ids.shape[1]
    eos = int(free[0, p + 4])  # row 0 makes this token at step 5: make it the EOS
    seen: list[Any] = []
    got = model.generate(ids, mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=7, streamer=seen.append)
    with torch.no_grad():
        want = ref.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=30,
                            do_sample=False, eos_token_id=eos, pad_token_id=7).numpy()
    np.testing.assert_array_equal(got, want)
    row0 = got[0, p:]
    stop = int(np.argmax(row0 == eos))
    assert stop <= 4 and np.all(row0[stop + 1:] == 7)
    np.testing.assert_array_equal(np.stack(seen, axis=1), got[:, p:])
    # an iterator streamer, consumed from another thread
    streamer = TokenStreamer(timeout=60)
    th = threading.Thread(target=model.generate, args=(ids, mask),
                          kwargs=dict(max_new_tokens=12, eos_token_id=[], streamer=streamer))
    th.start()
    steps = list(streamer)
    th.join()
    np.testing.assert_array_equal(np.stack(steps, axis=1), free[:, p:p + 12])


def test_gpt2_pad_token_that_is_no_token(gpt2, tmp_path):
    # pad_token_id only marks the returned ids (-1, or a tiny model's config EOS of 50256 outside its
    # vocabulary): generate moved right padding into the model and fed it to stopped rows, and the
    # embedding (or the repetition penalty's lookup) raised IndexError for an id no caller had passed.
    _, _, model = gpt2
    rows = prompts()
    width = max(len(r) for r in rows)
    right, rmask = np.zeros((len(rows), width), np.int64), np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        right[i, :len(r)] = r
        rmask[i, :len(r)] = 1
    free = model.generate(right, rmask, max_new_tokens=12, eos_token_id=[], pad_token_id=5)
    eos = int(free[1, width + 2])  # row 1 makes this token at step 3: it stops there
    for kw in (dict(), dict(repetition_penalty=1.3)):
        want = model.generate(right, rmask, max_new_tokens=12, eos_token_id=eos, pad_token_id=5, **kw)
        for pad in (-1, 211, 50256):
            seen: list[Any] = []
            got = model.generate(right, rmask, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad,
                                 streamer=seen.append, **kw)
            np.testing.assert_array_equal(got != pad, want != 5)
            np.testing.assert_array_equal(got[got != pad], want[want != 5])
            np.testing.assert_array_equal(np.stack(seen, axis=1), got[:, width:])
            assert (got[1, width + 3:] == pad).all() and (got[:, :width] == pad).sum() == (rmask == 0).sum()
    # a config whose EOS (the default pad) is outside the vocabulary, as tiny test configs often have
    cfg = json.loads((gpt2[0] / "config.json").read_text())
    d = tmp_path / "eos_outside"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**cfg, "eos_token_id": 50256, "bos_token_id": 50256}))
    (d / "model.safetensors").symlink_to(gpt2[0] / "model.safetensors")
    other = type(model).from_pretrained(d)
    got = other.generate(right, rmask, max_new_tokens=6)
    alone = [model.generate(r[None], max_new_tokens=6, eos_token_id=[])[0] for r in rows]
    for i, r in enumerate(rows):
        np.testing.assert_array_equal(got[i, width - len(r):], alone[i])
        assert (got[i, :width - len(r)] == 50256).all()


def test_gpt2_errors(gpt2, tmp_path):
    d, _, model = gpt2
    with pytest.raises(IndexError, match=r"input_ids\[0, 1\] is 300, outside the vocabulary"):
        model.generate(np.array([[5, 300]]), max_new_tokens=2)
    # typed before any work: a string where a number or a flag goes, a streamer that cannot take ids
    typed: list[tuple[dict[str, Any], str]] = [(dict(temperature="hot"), "temperature must be a real number"),
                      (dict(do_sample="no"), "do_sample must be a bool"),
                      (dict(streamer=5), "streamer must be None, a callable"),
                      (dict(pad_token_id=2.5), "pad_token_id must be an integer")]
    for kw, match in typed:
        with pytest.raises(TypeError, match=match):
            model.generate(np.array([[1, 2]]), **{"max_new_tokens": 3, **kw})
    with pytest.raises(ValueError, match="n_positions"):
        model.generate(np.arange(150)[None] % 200, max_new_tokens=20)
    with pytest.raises(ValueError, match="n_positions"):
        model(np.zeros((1, 161), np.int64))
    ranged: list[tuple[dict[str, Any], str]] = [
        (dict(temperature=0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=1.5), "top_p"),
        (dict(max_new_tokens=-1), "max_new_tokens"), (dict(repetition_penalty=0), "repetition")]
    for kw, match in ranged:
        with pytest.raises(ValueError, match=match):
            model.generate(np.array([[1, 2]]), **{"max_new_tokens": 3, **kw})
    with pytest.raises(ValueError, match="no tokens"):
        model.generate(np.array([[1, 2]]), attention_mask=np.array([[0, 0]]))
    with pytest.raises(TypeError, match="eos_token_id"):
        model.generate(np.array([[1, 2]]), max_new_tokens=2, eos_token_id=[3, 4.5])
    with pytest.raises(ValueError, match="model_type"):
        BertModel.from_pretrained(d)
    bad = tmp_path / "g"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "n_embd": 32}))
    with pytest.raises(ValueError, match="shape"):
        GPT2LMHeadModel.from_pretrained(bad)


# ---------------------------------------------------------------- encoder-decoder

def torch_transformer(d, h, ff, layers, norm_first, bias=True):
    tr = torch.nn.Transformer(d, h, layers, layers, ff, dropout=0.0, batch_first=True, norm_first=norm_first,
                              bias=bias)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in tr.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else p.shape[-1] ** -0.5))
    return tr.eval()


@pytest.mark.parametrize("norm_first,bias", [(False, True), (True, True), (False, False)])
def test_transformer_matches_torch_nn_transformer(norm_first, bias):
    d, h, ff, layers, vs, vt = 32, 4, 48, 2, 40, 45
    tr = torch_transformer(d, h, ff, layers, norm_first, bias)
    nn.manual_seed(0)
    model = Transformer(vs, vt, d, h, layers, layers, ff, norm_first=norm_first, bias=bias)
    sd = {k: v for k, v in tr.state_dict().items()}
    model.encoder.load_state_dict({k[8:]: v for k, v in sd.items() if k.startswith("encoder.")})
    model.decoder.load_state_dict({k[8:]: v for k, v in sd.items() if k.startswith("decoder.")})
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(0, vs, (2, 11)), rng.integers(0, vt, (2, 7))
    spad = np.zeros((2, 11), bool)
    spad[1, 8:] = True

    def emb(table, ids):
        return torch.tensor((table[ids] * np.sqrt(d) + model.positions.encodings(0, ids.shape[1])).astype(np.float32))

    with torch.no_grad():
        hid = tr(emb(model.src_embed.weight, src), emb(model.tgt_embed.weight, tgt),
                 tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(7), tgt_is_causal=True,
                 src_key_padding_mask=torch.tensor(spad), memory_key_padding_mask=torch.tensor(spad)).numpy()
    assert model.generator.weight is not None
    want = hid @ model.generator.weight.T.astype(np.float64) + model.generator.bias
    got = model(src, tgt, src_padding_mask=spad).logits
    assert rel_err(got, want) < 1e-5


@pytest.fixture(scope="module")
def small_translator():
    nn.manual_seed(2)
    m = Transformer(30, 6, d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=40)
    for name, p in m.named_parameters():  # sharper distributions than the default init
        p.data *= 3.0 if name.startswith(("tgt_embed", "generator")) else 1.0
    return m


def test_transformer_greedy_matches_full_recompute(small_translator):
    m = small_translator
    src = np.random.default_rng(1).integers(3, 30, (3, 9))
    spad = np.zeros((3, 9), bool)
    spad[2, 5:] = True
    got = m.generate(src, 15, bos_token_id=1, src_padding_mask=spad)
    memory = m.encode(src, spad)
    seq = np.ones((3, 1), np.int64)
    for _ in range(15):
        seq = np.concatenate([seq, m.decode(seq, memory, spad)[:, -1].argmax(1)[:, None]], axis=1)
    np.testing.assert_array_equal(got, seq)


def test_transformer_beam_search_finds_the_exhaustive_best(small_translator):
    # with 6 target tokens, 3 steps and 36 beams, beam search keeps every 2-token prefix: its best
    # must be the best of all 6**3 sequences, scored by the full (uncached) forward
    m = small_translator
    src = np.random.default_rng(2).integers(3, 30, (2, 7))
    got = m.generate(src, 3, bos_token_id=1, num_beams=36, length_penalty=0.0)
    memory = m.encode(src)
    for i in range(2):
        best, best_seq = -np.inf, None
        for tail in itertools.product(range(6), repeat=3):
            seq = np.array([[1, *tail]])
            lg = m.decode(seq, memory[i:i + 1])[0].astype(np.float64)
            lp = lg - np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)) - lg.max(1, keepdims=True)
            score = sum(lp[j, tail[j]] for j in range(3))
            if score > best:
                best, best_seq = score, seq[0]
        np.testing.assert_array_equal(got[i], best_seq)


def test_transformer_beam_search_eos_and_padding(small_translator):
    m = small_translator
    src = np.random.default_rng(3).integers(3, 30, (4, 8))
    out = m.generate(src, 12, bos_token_id=1, eos_token_id=2, num_beams=4, pad_token_id=0)
    assert out.shape[0] == 4 and np.all(out[:, 0] == 1)
    for row in out:
        if 2 in row[1:]:
            stop = 1 + int(np.argmax(row[1:] == 2))
            assert np.all(row[stop + 1:] == 0)
    greedy = m.generate(src, 12, bos_token_id=1, eos_token_id=2)
    assert greedy.shape[0] == 4
    with pytest.raises(IndexError, match="bos_token_id"):
        m.generate(src, 3, bos_token_id=6)
    with pytest.raises(ValueError, match="num_beams"):
        m.generate(src, 3, bos_token_id=1, num_beams=0)
    with pytest.raises(TypeError, match="bos_token_id"):
        m.generate(src, 3, bos_token_id=1.5)
    with pytest.raises(TypeError, match="eos_token_id"):
        m.generate(src, 3, bos_token_id=1, eos_token_id=2.5)
    with pytest.raises(TypeError, match="length_penalty must be a real number"):
        m.generate(src, 3, bos_token_id=1, num_beams=2, length_penalty="long")
    with pytest.raises(ValueError, match="length_penalty must be finite"):
        m.generate(src, 3, bos_token_id=1, num_beams=2, length_penalty=float("nan"))
    with pytest.raises(ValueError, match="at least one token"):
        m.generate(src[:, :0], 3, bos_token_id=1)
    with pytest.raises(IndexError, match=r"src_ids\[0, 0\] is 99, outside the vocabulary"):
        m.generate(np.full_like(src, 99), 3, bos_token_id=1)
    with warnings.catch_warnings():  # no new token: the BOS alone, without a 0/0 in the length penalty
        warnings.simplefilter("error")
        np.testing.assert_array_equal(m.generate(src, 0, bos_token_id=1, num_beams=3), np.ones((len(src), 1)))


def test_transformer_pad_token_that_is_no_token(small_translator):
    # a stopped row fed its pad id back to the decoder: pad_token_id=-1 raised IndexError there
    m = small_translator
    for beams, seed in ((1, 4), (3, 5)):  # sources where some rows stop at EOS 2 and others run on
        src = np.random.default_rng(seed).integers(3, 30, (4, 8))
        eos = 2
        want = m.generate(src, 10, bos_token_id=1, eos_token_id=eos, num_beams=beams, pad_token_id=0)
        got = m.generate(src, 10, bos_token_id=1, eos_token_id=eos, num_beams=beams, pad_token_id=-1)
        assert (got == -1).any() and not (want == -1).any()
        np.testing.assert_array_equal(np.where(got == -1, 0, got), want)


def test_tied_heads_follow_a_replaced_embedding(gpt2, bert_dirs):
    # A tied head's packed copy is made from another module's parameter; assigning a new array to that
    # parameter must reach the head (it once kept multiplying by the old packed copy).
    rng = np.random.default_rng(9)
    d, _, _ = gpt2
    packed, plain = GPT2LMHeadModel.from_pretrained(d), GPT2LMHeadModel.from_pretrained(d, dtype=None)
    ids = rng.integers(0, 211, (2, 7))
    before = packed(ids).logits
    new = (packed.transformer.wte.weight * -1.5).astype(np.float32)
    packed.transformer.wte.weight = new
    plain.transformer.wte.weight = new.copy()
    after = packed(ids).logits
    assert rel_err(after, plain(ids).logits) < 1e-5 and not np.allclose(after, before)
    d, _ = bert_dirs["BertForMaskedLM"]
    mlm = BertForMaskedLM.from_pretrained(d)
    ids = rng.integers(0, 120, (2, 9))
    before = mlm(ids).logits
    emb = mlm.bert.embeddings.word_embeddings
    emb.weight = np.ascontiguousarray(emb.weight[::-1])
    assert rel_err(mlm(ids).logits, BertForMaskedLM.from_pretrained(d, dtype=None).load_state_dict(
        mlm.state_dict())(ids).logits) < 1e-5
    assert not np.allclose(mlm(ids).logits, before)
    tr = Transformer(20, 12, d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=24,
                     tie_embeddings=True).pack_weights()
    src, tgt = rng.integers(0, 20, (1, 5)), rng.integers(0, 12, (1, 4))
    tr.tgt_embed.weight = (tr.tgt_embed.weight * 2).astype(np.float32)
    assert rel_err(tr(src, tgt).logits, tr.unpack_weights()(src, tgt).logits) < 1e-5


def test_models_pickle_and_deepcopy(gpt2):
    # what a worker process or a copy of a model needs; a config key that is not there is an
    # AttributeError (a KeyError from __getattr__ broke copy.deepcopy)
    import copy
    import pickle
    _, _, model = gpt2
    ids = np.array([[5, 7, 9]])
    want = model.generate(ids, max_new_tokens=8)
    for back in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        np.testing.assert_array_equal(back.generate(ids, max_new_tokens=8), want)
    packed = copy.deepcopy(model).pack_weights("bfloat16")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(packed)).generate(ids, max_new_tokens=8),
                                  packed.generate(ids, max_new_tokens=8))
    assert not hasattr(model.config, "no_such_setting")
    with pytest.raises(AttributeError, match="no_such_setting"):
        model.config.no_such_setting


def test_from_pretrained_checks_layer_count_first_and_draws_no_random_weights(gpt2, tmp_path):
    # A config.json layer count the weights do not have is refused before any layer is built (n_layer
    # 10**30 built layers until the memory ran out); loading draws no random initial weights (GPT-2
    # small's cost 1.6 s and 500 MB, all overwritten): the layers' random generator is left untouched.
    d, _, model = gpt2
    bad = tmp_path / "g"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    for n, match in [(10 ** 30, f"n_layer={10 ** 30} but the weights hold 3 layers"),
                     ("3", "n_layer must be an integer >= 0"), (-1, "n_layer must be an integer >= 0")]:
        (bad / "config.json").write_text(json.dumps({**cfg, "n_layer": n}))
        with pytest.raises(ValueError, match=match):
            GPT2LMHeadModel.from_pretrained(bad)
    nn.manual_seed(11)
    want = nn.Linear(4, 3).weight
    nn.manual_seed(11)
    loaded = GPT2LMHeadModel.from_pretrained(d)
    np.testing.assert_array_equal(nn.Linear(4, 3).weight, want)
    ids = np.array([[3, 1, 4, 1, 5]])
    np.testing.assert_array_equal(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize("key,value,what", [("n_embd", "64", "an integer >= 1"), ("n_head", 0, "an integer >= 1"),
                                            ("vocab_size", None, "an integer >= 1"), ("n_inner", 64.5, "an integer"),
                                            ("activation_function", [], "a string"),
                                            ("layer_norm_epsilon", "1e-5", "a finite number"),
                                            ("tie_word_embeddings", "yes", "true or false"),
                                            ("eos_token_id", 2.5, "a token id")])
def test_config_values_of_the_wrong_kind_are_value_errors(gpt2, bert_dirs, tmp_path, key, value, what):
    # config.json is a file like the weights: a value of the wrong kind surfaced as TypeError or
    # ZeroDivisionError from inside the layers (n_head 0: integer modulo by zero); now ValueError naming it
    d, _, _ = gpt2
    bad = tmp_path / "g"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValueError, match=f"config: {key} must be {what}"):
        GPT2LMHeadModel.from_pretrained(bad)
    b, _ = bert_dirs["BertModel"]
    bad = tmp_path / "b"
    shutil.copytree(b, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 0, "hidden_act": 5}))
    with pytest.raises(ValueError, match="config: num_attention_heads must be an integer >= 1, got 0"):
        BertModel.from_pretrained(bad)


def test_config_features_not_built_are_named_and_harmless_ones_load(gpt2, bert_dirs, tmp_path):
    # an activation the layers lack surfaced as nn.Linear's "activation must be one of" (no field named);
    # GPT-2 with cross-attention as a list of unexpected tensors; reorder_and_upcast_attn, which only
    # reorders float32 arithmetic, was refused
    d, ref, model = gpt2
    cfg = json.loads((d / "config.json").read_text())
    for extra, msg in (({"activation_function": "silu"}, "config: activation_function 'silu' is not supported"),
                       ({"add_cross_attention": True}, "config: add_cross_attention=True")):
        bad = tmp_path / f"g{len(msg)}"
        shutil.copytree(d, bad)
        (bad / "config.json").write_text(json.dumps({**cfg, **extra}))
        with pytest.raises(ValueError, match=msg):
            GPT2LMHeadModel.from_pretrained(bad)
    ok = tmp_path / "reorder"
    shutil.copytree(d, ok)
    (ok / "config.json").write_text(json.dumps({**cfg, "reorder_and_upcast_attn": True}))
    ref2 = transformers.GPT2LMHeadModel.from_pretrained(ok).eval()
    ids = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        want = ref2(torch.tensor(ids)).logits.numpy()
    assert rel_err(GPT2LMHeadModel.from_pretrained(ok)(ids).logits, want) < 1e-5
    b, _ = bert_dirs["BertModel"]
    bad = tmp_path / "b"
    shutil.copytree(b, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_act": "tanh"}))
    with pytest.raises(ValueError, match="config: hidden_act 'tanh' is not supported"):
        BertModel.from_pretrained(bad)


def test_one_model_shared_by_threads(gpt2, bert_dirs):
    # a server hands one loaded model to many request threads: each call must give what it gives alone
    # (no scratch or KV cache shared between calls in flight)
    bert = BertModel.from_pretrained(bert_dirs["BertModel"][0])
    model = gpt2[2]
    rng = np.random.default_rng(5)
    jobs = []
    for i in range(6):
        s = int(rng.integers(4, 30))
        ids, mask = rng.integers(0, 120, (3, s)), np.ones((3, s), np.int64)
        mask[i % 3, s // 2:] = 0
        jobs.append(lambda ids=ids, mask=mask: bert(ids, mask).last_hidden_state)
        jobs.append(lambda ids=ids, mask=mask: model.generate(ids, mask, max_new_tokens=6, eos_token_id=[]))
    alone = [job() for job in jobs]
    errors = []
    start = threading.Barrier(len(jobs))

    def worker(i):
        start.wait()
        for _ in range(4):
            if not np.array_equal(jobs[i](), alone[i]):
                errors.append(i)
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads) and errors == []
