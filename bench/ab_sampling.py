"""GPT-2-small-shaped decoding per token with greedy, plain sampling and top-p sampling, for two builds
of coreformer in alternated processes (each build installed with ``pip install --target DIR``).

    python bench/ab_sampling.py DIR_A DIR_B [--rounds 6] [--peak 25]

The random model's final layer norm is scaled by ``--peak`` so the next-token distribution is peaked,
as a trained model's is (unscaled random weights give nearly uniform logits, whose nucleus is most of
the vocabulary). Prints, per case, the median ms per token of each build and the median of the paired
ratios B/A."""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CASES = ({}, {"do_sample": True, "seed": 0}, {"do_sample": True, "top_p": 0.9, "seed": 0})

CHILD = """
import sys; sys.path.insert(0, sys.argv[1])
import time, numpy as np, coreformer
from coreformer.models import GPT2LMHeadModel
coreformer.set_num_threads(2)
m = GPT2LMHeadModel.from_pretrained(sys.argv[2])
ids = np.random.default_rng(0).integers(0, 50000, (1, 32))
out = []
for kw in {cases}:
    m.generate(ids, max_new_tokens=4, **kw)
    ts = []
    for _ in range(3):
        t = time.perf_counter(); m.generate(ids, max_new_tokens=32, eos_token_id=[], **kw)
        ts.append(time.perf_counter() - t)
    out.append(min(ts) / 32 * 1e3)
print(" ".join(f"{{x:.3f}}" for x in out))
""".format(cases=repr(CASES))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--peak", type=float, default=25.0)
    args = ap.parse_args()
    import torch
    import transformers
    model = tempfile.mkdtemp()
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    with torch.no_grad():
        m.transformer.ln_f.weight.mul_(args.peak)
    m.save_pretrained(model)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    res = {args.a: [], args.b: []}
    for r in range(args.rounds):
        for d in (args.a, args.b) if r % 2 == 0 else (args.b, args.a):
            o = subprocess.run([sys.executable, "-c", CHILD, d, model], capture_output=True, text=True, env=env,
                               check=True)
            res[d].append([float(x) for x in o.stdout.split()])
    for i, kw in enumerate(CASES):
        a, b = [x[i] for x in res[args.a]], [x[i] for x in res[args.b]]
        ratio = statistics.median(y / x for x, y in zip(a, b))
        print(f"{kw or 'greedy'}: A {statistics.median(a):.2f} ms, B {statistics.median(b):.2f} ms per token, "
              f"paired B/A {ratio:.3f}")


if __name__ == "__main__":
    main()
