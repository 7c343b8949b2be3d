"""The kernels a change touched, for two builds of coreformer in alternated processes (each installed with
``pip install --target DIR``): layer_norm (a float64 row sum since session 14), scaled_dot_product_attention
(the scan of each packed value block for inf/NaN, the float mask's -inf test) and the encoder layer
that runs both.

    python bench/ab_kernels.py DIR_A DIR_B [--rounds 8] [--isa avx2]

Each round runs A then B (B then A on odd rounds), each in a fresh process that warms up and then takes
the median of 15 calls, with 0.2 s of idle before each case (OpenBLAS's and OpenMP's spinning workers).
Prints per case the median time of each build and the median of the paired ratios B/A."""
import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys; sys.path.insert(0, sys.argv[1])
import statistics, time, numpy as np, coreformer
from coreformer import ops
coreformer.set_num_threads(2)
rng = np.random.default_rng(0)
r = lambda *s: rng.standard_normal(s).astype(np.float32)
x, res = r(8192, 768), r(8192, 768)
g, b = r(768), r(768)
q1, k1, v1 = r(1, 12, 2048, 64), r(1, 12, 2048, 64), r(1, 12, 2048, 64)
q8, k8, v8 = r(8, 12, 128, 64), r(8, 12, 128, 64), r(8, 12, 128, 64)
fmask = np.where(rng.random((8, 1, 1, 128)) > 0.1, 0.0, -np.inf).astype(np.float32)
e, ff = 768, 3072
xe = r(8, 128, e)
w = [r(3 * e, e) * 0.02, r(3 * e), r(e, e) * 0.02, r(e), r(ff, e) * 0.02, r(ff), r(e, ff) * 0.02, r(e), g, b, g, b]
pw = [ops.pack_weight(a) if a.ndim == 2 else a for a in w]
cases = {
    "layer_norm 8192x768": lambda: ops.layer_norm(x, g, b),
    "layer_norm +residual 8192x768": lambda: ops.layer_norm(x, g, b, residual=res),
    "sdpa (1,12,2048,64)": lambda: ops.scaled_dot_product_attention(q1, k1, v1),
    "sdpa causal (1,12,2048,64)": lambda: ops.scaled_dot_product_attention(q1, k1, v1, is_causal=True),
    "sdpa (8,12,128,64)": lambda: ops.scaled_dot_product_attention(q8, k8, v8),
    "sdpa float mask (8,12,128,64)": lambda: ops.scaled_dot_product_attention(q8, k8, v8, attn_mask=fmask),
    "encoder_layer B=8 S=128 E=768": lambda: ops.transformer_encoder_layer(xe, 12, *pw, activation="gelu"),
}
out = []
for name, f in cases.items():
    time.sleep(0.2)
    for _ in range(3):
        f()
    ts = []
    for _ in range(15):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    out.append(statistics.median(ts) * 1e3)
print(coreformer.info()["isa"], " ".join(f"{v:.4f}" for v in out))
print("|".join(cases))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--isa", default=None, help="COREFORMER_ISA for both builds (default: the CPU's best)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    if args.isa:
        env["COREFORMER_ISA"] = args.isa
    res = {args.a: [], args.b: []}
    names, isa = [], None
    for r in range(args.rounds):
        for d in (args.a, args.b) if r % 2 == 0 else (args.b, args.a):
            o = subprocess.run([sys.executable, "-c", CHILD, d], capture_output=True, text=True, env=env, check=True)
            first, second = o.stdout.strip().splitlines()[-2:]
            isa, *times = first.split()
            names = second.split("|")
            res[d].append([float(t) for t in times])
    print(f"isa {isa}, {args.rounds} rounds; A = {args.a}, B = {args.b}")
    print(f"| case | A ms | B ms | B/A (median of paired ratios) |\n|---|---|---|---|")
    for i, name in enumerate(names):
        a, b = [t[i] for t in res[args.a]], [t[i] for t in res[args.b]]
        ratio = statistics.median(y / x for x, y in zip(a, b))
        print(f"| {name} | {statistics.median(a):.3f} | {statistics.median(b):.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
