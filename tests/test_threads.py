"""Kernels release the GIL and are safe to call from many Python threads at once."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import coreformer
from coreformer import ops

from conftest import randn


def test_eight_threads_same_results():
    rng = np.random.default_rng(7)
    x, w, b = randn(rng, 200, 256), randn(rng, 300, 256), randn(rng, 300)
    q, k, v = randn(rng, 2, 4, 150, 32), randn(rng, 2, 4, 270, 32), randn(rng, 2, 4, 270, 32)
    mask = rng.random((2, 1, 150, 270)) > 0.3
    ln_x = randn(rng, 500, 300)
    e, f = 64, 96  # one encoder layer: each calling thread has its own workspace
    enc_x = randn(rng, 3, 40, e)
    enc_w = [randn(rng, 3 * e, e, scale=0.1), randn(rng, 3 * e), randn(rng, e, e, scale=0.1), randn(rng, e),
             randn(rng, f, e, scale=0.1), randn(rng, f), randn(rng, e, f, scale=0.1), randn(rng, e),
             None, None, None, None]
    cu = np.array([0, 7, 50, 120])
    calls = {
        "linear": lambda: ops.linear(x, w, b, "gelu"),
        "gemv": lambda: ops.linear(x[:3], w, b),
        "sdpa": lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True),
        "layer_norm": lambda: ops.layer_norm(ln_x, residual=ln_x),
        "softmax": lambda: ops.softmax(ln_x, axis=0),
        "gelu": lambda: ops.gelu(ln_x),
        "encoder_layer": lambda: ops.transformer_encoder_layer(enc_x, 8, *enc_w, activation="gelu"),
        "encoder_layer_packed": lambda: ops.transformer_encoder_layer(enc_x.reshape(120, e), 4, *enc_w,
                                                                      cu_seqlens=cu),
    }
    expect = {name: f() for name, f in calls.items()}
    errors = []
    start = threading.Barrier(8)

    def worker(seed):
        start.wait()
        order = list(calls)
        np.random.default_rng(seed).shuffle(order)
        for _ in range(3):
            for name in order:
                got = calls[name]()
                if not np.array_equal(got, expect[name]):
                    errors.append(name)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert errors == []


def test_gil_is_released():
    # While a long kernel runs in one thread, Python code keeps running in another.
    rng = np.random.default_rng(3)
    q = randn(rng, 1, 8, 2048, 64)
    done = threading.Event()
    ticks_during = 0

    def work():
        for _ in range(3):
            ops.scaled_dot_product_attention(q, q, q)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks_during += 1
    t.join()
    assert ticks_during > 10000


FORK_SCRIPT = r"""
import os, sys, warnings
import numpy as np
import coreformer
from coreformer import ops
coreformer.set_num_threads(2)
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 512), dtype=np.float32)
w = rng.standard_normal((512, 512), dtype=np.float32)
q = rng.standard_normal((1, 4, 200, 32), dtype=np.float32)
if sys.argv[1] == "team":  # the parent runs kernels on two threads before forking
    want = ops.linear(x, w), ops.scaled_dot_product_attention(q, q, q), ops.pack_weight(w, "int8").unpack()
r, wfd = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coreformer.set_num_threads(2)
    got = ops.linear(x, w), ops.scaled_dot_product_attention(q, q, q), ops.pack_weight(w, "int8").unpack()
    same = sys.argv[1] != "team" or all(np.array_equal(a, b) for a, b in zip(got, want))
    os.write(wfd, f"{coreformer.get_num_threads()} {len(caught)} {same}".encode())
    os._exit(0)
os.close(wfd)
os.waitpid(pid, 0)
print(os.read(r, 100).decode())
"""


@pytest.mark.skipif(not coreformer.info()["openmp"] or (os.cpu_count() or 1) < 2, reason="needs OpenMP and two cores")
@pytest.mark.parametrize("parent", ["team", "idle"])
def test_fork_after_threads_runs_on_one_thread(parent):
    # multiprocessing's default on Linux forks; after the parent ran a team, GNU OpenMP's next parallel
    # region in the child waited forever. The child now runs each kernel on one thread (and says so when
    # asked for more); a parent that never ran a team leaves its children their threads. In a subprocess
    # with a timeout, so a regression fails instead of hanging the suite.
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT, parent], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    threads, warned, same = out.stdout.split()
    if parent == "team":
        assert (threads, warned, same) == ("1", "1", "True")
    else:
        assert (threads, warned) == ("2", "0")
