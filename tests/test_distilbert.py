"""DistilBERT against transformers on random small checkpoints, a DistilBERT sentence-transformers
folder against sentence-transformers, and token classification for the three encoders."""
import json
import subprocess
import sys

import numpy as np
import pytest

from coreformer.models import BertModel, DistilBertForSequenceClassification, DistilBertModel, SentenceEncoder

from conftest import minilm_tokenizer_into, rel_err, save_randomised

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def config(**kw):
    return transformers.DistilBertConfig(**{**dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, hidden_dim=40,
                                                   max_position_embeddings=40, num_labels=3), **kw})


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_distilbert_matches_transformers(tmp_path, activation):
    ref = transformers.DistilBertModel(config(activation=activation))
    d = save_randomised(ref, tmp_path / "m")
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(3, 97, (3, 12)), np.ones((3, 12), np.int64)
    ids[1, 8:], mask[1, 8:] = 0, 0
    with torch.no_grad():
        want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = DistilBertModel.from_pretrained(d)
    real = mask.astype(bool)
    got = ours(ids, mask, token_type_ids=np.ones_like(ids))  # token types (a pair's) are ignored: it has none
    assert got.pooler_output is None and rel_err(got.last_hidden_state[real], want[real]) < 1e-5
    dev = DistilBertModel.from_pretrained(d)._use_tensors("cpu", "float32")(ids, mask)
    assert rel_err(dev.last_hidden_state[real], want[real]) < 1e-5
    with pytest.raises(ValueError, match="supports model_type 'bert'.*'distilbert'"):
        BertModel.from_pretrained(d)
    with pytest.raises(ValueError, match="no pooler"):
        DistilBertModel(ours.config, add_pooling_layer=True)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "n_layers": 3}))
    with pytest.raises(ValueError, match=r"n_layers=3 but the weights hold 2 layers"):
        DistilBertModel.from_pretrained(d)
    # config errors name DistilBERT's fields, as its config.json has them
    for bad, match in (({"dim": "x"}, "config: dim must be an integer"), ({"n_heads": 0}, "config: n_heads must be"),
                       ({"activation": "silu"}, "config: activation 'silu' is not supported"),
                       ({"dim": 30}, r"dim \(30\) must be divisible by n_heads \(4\)")):
        (d / "config.json").write_text(json.dumps({**cfg, **bad}))
        with pytest.raises(ValueError, match=match):
            DistilBertModel.from_pretrained(d)


def test_distilbert_classifier_and_the_cli(tmp_path):
    d = minilm_tokenizer_into(tmp_path / "clf")  # its WordPiece vocabulary is BERT's, as DistilBERT's
    ref = transformers.DistilBertForSequenceClassification(config(vocab_size=30522, max_position_embeddings=64,
                                                                  num_labels=2, id2label={0: "neg", 1: "pos"}))
    save_randomised(ref, d, seed=1)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(d))
    texts = ["a fine day", "a dreadful, long and boring day"]
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = ref(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()
    ours = DistilBertForSequenceClassification.from_pretrained(d)
    assert rel_err(ours(enc["input_ids"].numpy(), enc["attention_mask"].numpy()).logits, want) < 1e-5
    dev = DistilBertForSequenceClassification.from_pretrained(d)._use_tensors("cpu", "float32")
    assert rel_err(dev(enc["input_ids"].numpy(), enc["attention_mask"].numpy()).logits, want) < 1e-5
    r = subprocess.run([sys.executable, "-m", "coreformer", "classify", "--model", str(d), *texts],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    p = np.exp(want) / np.exp(want).sum(axis=1, keepdims=True)
    for line, row in zip(r.stdout.strip().splitlines(), p):
        label, prob, _ = line.split("\t")
        assert label == ("neg", "pos")[int(row.argmax())] and abs(float(prob) - row.max()) < 1e-4


def test_distilbert_sentence_encoder(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    tdir = minilm_tokenizer_into(tmp_path / "distilbert")
    save_randomised(transformers.DistilBertModel(config(vocab_size=30522, max_position_embeddings=128)), tdir, seed=2)
    from sentence_transformers import models
    ref = st.SentenceTransformer(modules=[models.Transformer(str(tdir), max_seq_length=100),
                                          models.Pooling(32, "mean")], device="cpu")
    sd = tmp_path / "st"
    ref.save(str(sd))
    sents = ["hello world", "the quick brown fox jumps over the lazy dog", "word " * 200, ""]
    got, want = SentenceEncoder.from_pretrained(sd).encode(sents), ref.encode(sents)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.99999 and rel_err(got, want) < 1e-4


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_token_classification_matches_transformers(tmp_path, family):
    # named entities / part of speech: a classifier on every token; padding positions are not compared
    # (ours gives the classifier's bias there, transformers whatever its padded rows computed)
    from coreformer import models
    hf_cls, ours, cfg = {
        "bert": (transformers.BertForTokenClassification, models.BertForTokenClassification,
                 transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=40, max_position_embeddings=40, num_labels=5)),
        "roberta": (transformers.RobertaForTokenClassification, models.RobertaForTokenClassification,
                    transformers.RobertaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=40,
                                               max_position_embeddings=40, num_labels=5)),
        "distilbert": (transformers.DistilBertForTokenClassification, models.DistilBertForTokenClassification,
                       config(num_labels=5))}[family]
    ref = hf_cls(cfg)
    d = save_randomised(ref, tmp_path / family, seed=5)
    rng = np.random.default_rng(1)
    ids, mask = rng.integers(3, 97, (3, 11)), np.ones((3, 11), np.int64)
    ids[2, 7:], mask[2, 7:] = cfg.pad_token_id, 0
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = ours.from_pretrained(d)
    got = model(ids, mask).logits
    real = mask.astype(bool)
    assert got.shape == (3, 11, 5) and rel_err(got[real], want[real]) < 1e-5
    dev = ours.from_pretrained(d)._use_tensors("cpu", "float32")(ids, mask).logits
    assert rel_err(dev[real], want[real]) < 1e-5
