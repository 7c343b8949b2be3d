"""The fuzz corpus (tests/fuzz/corpus/<target>/: the seeds, and every input a fuzzer run found that
crashed, hung, allocated out of proportion or raised an untyped error before its fix) replayed through
its target: each ends in a load or in ValueError / FileNotFoundError / IndexError. No atheris needed;
under tools/sanitize.sh this runs against the instrumented build too. tests/fuzz/fuzz_files.py fuzzes."""
import os
import subprocess
import sys

import pytest

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")
sys.path.insert(0, FUZZ)
import fuzz_files  # noqa: E402

pytest.importorskip("tokenizers")

CASES = sorted((target, name) for target in fuzz_files.TARGETS
               for name in os.listdir(os.path.join(fuzz_files.CORPUS, target)))


def test_every_target_has_a_corpus():
    assert {t for t, _ in CASES} == set(fuzz_files.TARGETS)
    assert sum(name.startswith("found-") for _, name in CASES) >= 7  # the findings are kept


@pytest.mark.parametrize("target,name", CASES, ids=[f"{t}/{n}" for t, n in CASES])
def test_corpus_input(target, name):
    with open(os.path.join(fuzz_files.CORPUS, target, name), "rb") as f:
        fuzz_files.check(target, f.read())


@pytest.mark.parametrize("target,name", [(t, n) for t, n in CASES if n.startswith("seed")],
                         ids=[f"{t}/{n}" for t, n in CASES if n.startswith("seed")])
def test_seeds_load(target, name):
    # the seeds themselves are valid files: they load without any error (else the fuzzer starts nowhere)
    with open(os.path.join(fuzz_files.CORPUS, target, name), "rb") as f:
        fuzz_files.TARGETS[target](f.read())


def test_corpus_within_the_memory_cap():
    # the same inputs in a fresh process whose address space is capped 1 GiB above its own, as under the
    # fuzzer: an allocation out of proportion to a few-KB file fails here instead of passing on a big machine
    r = subprocess.run([sys.executable, os.path.join(FUZZ, "fuzz_files.py"), "--replay"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
