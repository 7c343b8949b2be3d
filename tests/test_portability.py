"""The build runs on any x86-64: under qemu-user's emulated CPUs without AVX-512, AVX2 or even AVX,
the dispatcher picks the path the CPU has and the kernels give right answers (no AVX instruction
leaks into the baseline code). Skips where qemu-user is not installed (.ci/run installs it)."""
import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

QEMU = shutil.which("qemu-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64", reason="needs qemu-user on x86-64")

CHILD = r"""
import json, numpy as np, coreformer
from coreformer import ops
rng = np.random.default_rng(0)
x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((20, 33), (17, 33), (17,)))
q = rng.standard_normal((1, 2, 40, 16)).astype(np.float32)
ref = x.astype(np.float64) @ w.T.astype(np.float64) + b
s = q.astype(np.float64) @ q.transpose(0, 1, 3, 2) / 4.0
p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
print(json.dumps({"isa": coreformer.info()["isa"],
                  "linear": float(np.abs(ops.linear(x, w, b) - ref).max()),
                  "sdpa": float(np.abs(ops.scaled_dot_product_attention(q, q, q) - p @ q).max()),
                  "gelu": float(np.abs(ops.gelu(x)[0, 0] - ops.gelu(x[:1, :1])[0, 0]))}))
"""


@pytest.mark.parametrize("cpu,isa", [("Nehalem", "scalar"), ("SandyBridge", "scalar"), ("Haswell", "avx2")])
def test_runs_on_older_cpus(cpu, isa):
    assert QEMU is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}  # a forced OpenBLAS core
    env.pop("COREFORMER_ISA", None)                                              # would SIGILL numpy itself
    r = subprocess.run([QEMU, "-cpu", cpu, sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["isa"] == isa
    assert got["linear"] < 1e-4 and got["sdpa"] < 1e-5 and got["gelu"] == 0.0
