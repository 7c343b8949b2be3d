"""Attention on a GPU against torch's flash backend, interleaved, for the coreformer on sys.path (or the
folder given first): python bench/gpu_attention_ab.py [DIR] -- medians of CUDA-event timings."""
import sys

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])
import numpy as np
import torch
import torch.nn.functional as F

import coreformer as cf
from coreformer import ops


def event_ms(fn, reps=30):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return float(np.median(out))


print(cf.__file__)
for D in (64, 128):
    for causal in (False, True):
        q, k, v = (torch.randn(8, 16, 2048, D, device="cuda", dtype=torch.float16) for _ in range(3))
        cq, ck, cv = (cf.from_dlpack(t) for t in (q, k, v))
        flops = 4 * 8 * 16 * 2048 * 2048 * D / (2 if causal else 1)
        ours, theirs = [], []
        for _ in range(3):
            ours.append(event_ms(lambda c=(cq, ck, cv), causal=causal:
                                 ops.scaled_dot_product_attention(*c, is_causal=causal)))
            theirs.append(event_ms(lambda t=(q, k, v), causal=causal:
                                   F.scaled_dot_product_attention(*t, is_causal=causal)))
        o, t = np.median(ours), np.median(theirs)
        print(f"D={D} causal={causal}: ours {o:.3f} ms {flops / o / 1e9:.1f} TFLOP/s, torch {t:.3f} ms, "
              f"ratio {t / o:.2f}x")
