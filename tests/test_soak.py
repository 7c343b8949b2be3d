"""Soaks, short enough for CI: memory is returned (RSS flat over 20,000 calls of every op and 2,000 of
each model call, error paths included) and threads do not race (16 callers while the thread count
flips, every answer bit-identical to the single-threaded one). Each runs tests/soak_calls.py in a
fresh interpreter, so what it measures is ours; the calls themselves are listed there."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SLACK = 1 << 20  # RSS may move by allocator bookkeeping; a lost result array per call is far more


def run(*args, timeout=600):
    r = subprocess.run([sys.executable, os.path.join(HERE, "soak_calls.py"), *map(str, args)], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def grew(rss):
    """Bytes gained from the second tenth of the calls to the last: the first tenths fill pools and caches."""
    return rss[-1] - rss[2]


def test_rss_stays_flat_over_every_op_and_model(bert_dirs, gpt2):
    got = run("leak", 20000, 2000, bert_dirs["BertModel"][0], gpt2[0])
    assert got["ops"] >= 40 and got["models"] == 3
    assert grew(got["rss"]) < SLACK, f"RSS grew {grew(got['rss']) / 1e6:.2f} MB over {got['calls']} calls: {got['rss']}"


def test_the_leak_measurement_sees_a_leak():
    # the same measurement with one call that keeps 1 KiB per call: must be flagged
    got = run("leak-selfcheck", 4000, 0)
    assert grew(got["rss"]) > 2 * SLACK, got["rss"]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_sixteen_threads_with_flipping_thread_counts(bert_dirs, gpt2):
    got = run("threads", 8, 16, bert_dirs["BertModel"][0], gpt2[0])
    assert got["hung"] == 0
    assert got["mismatches"] == [], got
    assert got["calls"] > 2000 and got["kinds"] >= 43
