"""The C++ harnesses in bench/ (gemm_driver_harness.cpp, gelu_cycles.cpp) include the kernels' headers
directly, so a change to csrc/cpu/simd.h or microkernel.h could leave them unbuildable without anyone
noticing until the next person needs them. Each is compiled here (syntax and types only, with the
command its header gives). Skips without a C++ compiler or outside a source checkout."""
import pathlib
import platform
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None or platform.machine() != "x86_64" or not (ROOT / "csrc").is_dir(),
                                reason="needs a C++ compiler, x86-64 and the source tree")


@pytest.mark.parametrize("harness", ["gemm_driver_harness.cpp", "gelu_cycles.cpp"])
def test_harness_compiles(harness):
    src = ROOT / "bench" / harness
    assert CXX is not None
    cmd = [CXX, "-fsyntax-only", "-std=c++17", "-mavx2", "-mfma", "-DCF_ISA_AVX2=1", "-DCF_ISA_NS=avx2",
           f"-I{ROOT / 'csrc'}", str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"-Icsrc bench/{harness}" in src.read_text(), "the header should give the command that builds it"
