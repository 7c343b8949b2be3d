import json
import os
import subprocess
import sys

import numpy as np
import pytest

import coreformer
from coreformer import ops


def test_info_keys():
    info = coreformer.info()
    for key in ("version", "isa", "isa_supported", "num_threads", "openmp", "cuda_built", "cuda_devices"):
        assert key in info
    assert info["isa"] in ("scalar", "avx2", "avx512")
    assert info["isa"] in info["isa_supported"] and "scalar" in info["isa_supported"]
    assert isinstance(info["openmp"], bool) and isinstance(info["cuda_built"], bool)
    assert info["cuda_devices"] >= 0
    assert info["version"] == coreformer.__version__


def test_set_num_threads_round_trip():
    before = coreformer.get_num_threads()
    try:
        coreformer.set_num_threads(1)
        assert coreformer.get_num_threads() == 1 and coreformer.info()["num_threads"] == 1
        x = np.ones((300, 300), np.float32)
        np.testing.assert_allclose(ops.linear(x, x), 300.0)
    finally:
        coreformer.set_num_threads(before)


def run_child(code, **env):
    e = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def test_env_num_threads():
    out = run_child("import coreformer; print(coreformer.get_num_threads())", COREFORMER_NUM_THREADS="3")
    assert out.stdout.strip() == "3"
    default = run_child("import coreformer; print(coreformer.get_num_threads())", COREFORMER_NUM_THREADS="")
    assert default.stderr == ""  # empty reads as unset
    for bad in ("two", "0", "5000", "2.5"):  # ignored, as before, but no longer silently
        out = run_child("import coreformer; print(coreformer.get_num_threads())", COREFORMER_NUM_THREADS=bad)
        assert out.stdout == default.stdout
        assert f"ignoring COREFORMER_NUM_THREADS={bad}" in out.stderr


@pytest.mark.parametrize("isa", coreformer.info()["isa_supported"])
def test_env_isa_forces_path(isa):
    code = ("import json, numpy as np, coreformer; from coreformer import ops;"
            "x = np.arange(12, dtype=np.float32).reshape(3, 4);"
            "print(json.dumps([coreformer.info()['isa'], ops.linear(x, x).tolist()]))")
    got_isa, y = json.loads(run_child(code, COREFORMER_ISA=isa).stdout)
    assert got_isa == isa
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(np.array(y, np.float32), x @ x.T)


def test_env_isa_unknown_falls_back_with_message():
    out = run_child("import coreformer; print(coreformer.info()['isa'])", COREFORMER_ISA="sse9")
    assert out.stdout.strip() == coreformer.info()["isa_supported"][-1]
    assert "COREFORMER_ISA" in out.stderr


def test_cli_info():
    out = run_child("from coreformer.cli import main; main(['info'])")
    assert json.loads(out.stdout)["isa"] in ("scalar", "avx2", "avx512")


def test_cli_bench_json(tmp_path, capsys):
    from coreformer.cli import main
    path = tmp_path / "bench.json"
    before = coreformer.get_num_threads()
    try:
        assert main(["bench", "--quick", "--ops", "layer_norm,relu", "--rounds", "1", "--threads", "1",
                     "--json", str(path)]) == 0
    finally:
        coreformer.set_num_threads(before)  # --threads sets the process-wide count
    table = capsys.readouterr().out
    assert "| layer_norm" in table and "numpy/ours" in table
    data = json.loads(path.read_text())
    assert data["environment"]["coreformer"]["num_threads"] == 1
    ops_seen = {r["op"] for r in data["results"]}
    assert {"layer_norm", "relu"} <= ops_seen
    for r in data["results"]:
        assert r["unit"] in ("GB/s", "GFLOP/s") and r["work"] > 0
        assert all(t > 0 for t in r["seconds"].values())


def test_cli_bench_bad_arguments(tmp_path):
    from coreformer.cli import main
    # a --json path that cannot be written is refused before any timing, not after it
    # --rounds below 1 ran the setup and then failed in the median; --ops was ignored by --models and cuda
    for argv in (["bench", "--ops", "nope"], ["bench", "--threads", "0"], ["bench", "--threads", "5000"],
                 ["bench", "--json", str(tmp_path / "missing" / "x.json")], ["bench", "--json", str(tmp_path)],
                 ["bench", "--rounds", "-1"], ["bench", "--rounds", "0", "--quick"],
                 ["bench", "--models", "--ops", "copy"], ["bench", "--device", "cuda", "--ops", "linear"],
                 ["bench", "--train", "--ops", "copy"], ["bench", "--train", "--models"],
                 ["bench", "--train", "--device", "cuda"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
