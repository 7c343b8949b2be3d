"""Few-row GEMMs against packed weights with the weights cold (MiniLM's 24 layer GEMMs at M = 32, 42 MB
cycled, as one sentence meets them) and hot (one layer's four weights, six times). Run it with two
builds of coreformer alternately (each first on PYTHONPATH) to compare them; prints the median ms and
GFLOP/s of 9 rounds."""
import time

import numpy as np
from coreformer import ops

M = 32
SHAPES = [(1152, 384), (384, 384), (1536, 384), (384, 1536)]  # (out, in) of one MiniLM layer


def main():
    rng = np.random.default_rng(0)
    layers = [[(ops.pack_weight(rng.standard_normal(s, dtype=np.float32)), s[1]) for s in SHAPES]
              for _ in range(6)]
    xs = {k: rng.standard_normal((M, k), dtype=np.float32) for k in (384, 1536)}
    flop = 6 * sum(2 * M * n * k for n, k in SHAPES)

    def cold():
        for layer in layers:
            for w, k in layer:
                ops.linear(xs[k], w)

    def hot():
        for _ in range(6):
            for w, k in layers[0]:
                ops.linear(xs[k], w)

    cases = {"cold": cold, "hot": hot}
    for f in cases.values():
        for _ in range(30):
            f()
    times = {name: [] for name in cases}
    for _ in range(9):
        for name, f in cases.items():
            t = time.perf_counter()
            for _ in range(50):
                f()
            times[name].append((time.perf_counter() - t) / 50)
    for name, v in times.items():
        med = float(np.median(v))
        print(f"{name} ms {med * 1e3:.3f} GFLOP/s {flop / med / 1e9:.1f}")


if __name__ == "__main__":
    main()
