"""Shape sweeps behind bench/gemm_notes.md, beyond `coreformer bench`'s fixed cases:
ours against the peer, interleaved, three rounds of medians.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/sweep.py gemm gemv decode
"""
import argparse
import statistics
import time

import numpy as np

import coreformer
from coreformer import ops


def median_seconds(fn, samples=7, min_sample=0.05):
    fn()
    times = []
    for _ in range(samples):
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < min_sample:
            fn()
            n += 1
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def compare(ours, peer, rounds=3):
    a, b = [], []
    for _ in range(rounds):
        a.append(median_seconds(ours))
        b.append(median_seconds(peer))
    return statistics.median(a), statistics.median(b)


def gemm(rng):
    for m, k, n in [(1024, 768, 3072), (1024, 3072, 768), (1024, 768, 768), (128, 768, 768), (32, 768, 3072)]:
        x, w, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((n, k), np.float32), np.zeros(n, np.float32)
        wt = np.ascontiguousarray(w.T)
        ta, tb = compare(lambda: ops.linear(x, w, b), lambda: x @ wt)
        f = 2.0 * m * n * k
        print(f"gemm {m}x{k}->{n}: ours {f / ta / 1e9:.0f} GFLOP/s, numpy {f / tb / 1e9:.0f}, numpy/ours {tb / ta:.2f}")


def gemv(rng):
    w = rng.standard_normal((50257, 768), np.float32)
    wt = np.ascontiguousarray(w.T)
    b = np.zeros(50257, np.float32)
    for m in (1, 2, 4, 8, 16):
        x = rng.standard_normal((m, 768), np.float32)
        ta, tb = compare(lambda: ops.linear(x, w, b), lambda: x @ wt)
        print(f"gemv M={m} 768->50257: ours {ta * 1e3:.2f} ms ({w.nbytes / ta / 1e9:.1f} GB/s), numpy {tb * 1e3:.2f} ms, "
              f"numpy/ours {tb / ta:.2f}")


def decode(rng):
    import torch
    torch.set_num_threads(coreformer.get_num_threads())
    for sq, sk in [(1, 128), (1, 1024), (1, 4096), (2, 4096), (4, 1024), (8, 1024)]:
        q, k, v = (rng.standard_normal((1, 12, s, 64), np.float32) for s in (sq, sk, sk))
        tq, tk, tv = map(torch.from_numpy, (q, k, v))
        # bottom-right causal for ours; torch's top-left causal differs when Sq < Sk, so it attends to all
        ta, tb = compare(lambda: ops.scaled_dot_product_attention(q, k, v, is_causal=True),
                         lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv))
        print(f"attention Sq={sq} Sk={sk}: ours {ta * 1e6:.0f} us, torch {tb * 1e6:.0f} us, torch/ours {tb / ta:.2f}")


def main():
    sweeps = {"gemm": gemm, "gemv": gemv, "decode": decode}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", nargs="+", choices=sorted(sweeps))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    coreformer.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    for name in args.sweep:
        sweeps[name](rng)


if __name__ == "__main__":
    main()
