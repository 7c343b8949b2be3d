"""Kernel micro-benchmarks against numpy and, when installed, PyTorch (``coreformer bench``).

Method: every implementation of a case runs once to warm up, then for each of ``rounds`` rounds
each implementation is timed in turn (the order rotates each round, so drift of the machine
hits all of them alike); a sample is the mean of enough calls to fill ``min_sample`` seconds,
taken after a short idle pause (so the previous engine's spinning threads are off the cores) and
an untimed warm-up of the same engine (so the cores are back to speed). The table gives medians over rounds and each peer's time divided by ours (> 1: we are faster).
The machine's copy bandwidth is measured the same way, as the ceiling for memory-bound ops.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import _core, ops


@dataclass
class Case:
    op: str
    shape: str
    work: float          # flops (unit GFLOP/s) or bytes moved (unit GB/s)
    unit: str
    impls: dict[str, Callable[..., object]] = field(default_factory=dict)  # each called with no argument
    scale: float = 1e9   # rate = work / seconds / scale (1e9 for GFLOP/s and GB/s)


def _try_torch():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None, None
    return torch, F


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# One function per op: each builds its cases in its own scope, so no timed closure can see
# another case's arrays.

def _copy_cases(rng, torch, F, quick):
    src = _rand(rng, 8192, 768)
    dst = np.empty_like(src)
    return [Case("copy (limit)", "8192x768", 2 * src.nbytes, "GB/s", {"numpy": lambda: np.copyto(dst, src)})]


def _linear_cases(rng, torch, F, quick):
    shapes = [(1024, 768, 3072, "gelu"), (1024, 3072, 768, None), (1024, 768, 768, None), (1, 768, 50257, None)]
    if quick:
        shapes = [(1024, 768, 3072, "gelu"), (1, 768, 50257, None)]
    cases = []
    for m, k, n, act in shapes:
        x, w, b = _rand(rng, m, k), _rand(rng, n, k, scale=0.05), _rand(rng, n)
        wt = np.ascontiguousarray(w.T)
        impls: dict[str, Callable[..., object]] = {"coreformer": (lambda x=x, w=w, b=b, act=act: ops.linear(x, w, b, act))}
        # numpy: the plain GEMM (no bias, no activation) -- the most favourable time for the peer.
        impls["numpy"] = lambda x=x, wt=wt: x @ wt
        if torch is not None:
            tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            if act == "gelu":
                impls["torch"] = lambda tx=tx, tw=tw, tb=tb: F.gelu(F.linear(tx, tw, tb))
            else:
                impls["torch"] = lambda tx=tx, tw=tw, tb=tb: F.linear(tx, tw, tb)
        label = f"{m}x{k}->{n}" + (f" +bias+{act}" if act else " +bias")
        if m == 1:
            cases.append(Case("linear (gemv)", label, 4.0 * n * k, "GB/s", impls))
        else:
            cases.append(Case("linear", label, 2.0 * m * n * k, "GFLOP/s", impls))
    # a layer's weight packed once (ops.pack_weight), as the models use it: few rows (one sentence,
    # decoding) and the GEMV with bfloat16 weights (half the bytes streamed; rate = those bytes)
    packed = [(32, 768, 3072, "gelu", "float32"), (1, 768, 50257, None, "float32"), (1, 768, 50257, None, "bfloat16")]
    if quick:
        packed = packed[:1] + packed[2:]
    for m, k, n, act, dt in packed:
        x, w, b = _rand(rng, m, k), _rand(rng, n, k, scale=0.05), _rand(rng, n)
        pw, wt = ops.pack_weight(w, dt), np.ascontiguousarray(w.T)
        impls = {"coreformer": (lambda x=x, pw=pw, b=b, act=act: ops.linear(x, pw, b, act)),
                 "numpy": (lambda x=x, wt=wt: x @ wt)}
        if torch is not None:
            tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
            impls["torch"] = ((lambda tx=tx, tw=tw, tb=tb: F.gelu(F.linear(tx, tw, tb))) if act else
                              (lambda tx=tx, tw=tw, tb=tb: F.linear(tx, tw, tb)))
        label = f"{m}x{k}->{n}" + (f" +bias+{act}" if act else " +bias") + f", {dt} weights"
        if m == 1:
            cases.append(Case("linear packed (gemv)", label, (2.0 if dt == "bfloat16" else 4.0) * n * k, "GB/s", impls))
        else:
            cases.append(Case("linear packed", label, 2.0 * m * n * k, "GFLOP/s", impls))
    return cases


def _attention_cases(rng, torch, F, quick):
    shapes = [(1, 12, 2048, 64, False), (1, 12, 2048, 64, True), (8, 12, 128, 64, False)]
    if quick:
        shapes = [(1, 12, 1024, 64, False), (1, 12, 1024, 64, True), (8, 12, 128, 64, False)]
    cases = []
    for b, h, s, d, causal in shapes:
        q, k, v = (_rand(rng, b, h, s, d) for _ in range(3))
        # causal: count the half of the score matrix that is computed
        flops = 4.0 * b * h * s * s * d * (0.5 if causal else 1.0)
        impls: dict[str, Callable[..., object]] = {"coreformer": lambda q=q, k=k, v=v, c=causal: ops.scaled_dot_product_attention(q, k, v, is_causal=c)}
        if not causal and s <= 512:
            impls["numpy"] = lambda q=q, k=k, v=v, d=d: _np_softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)) @ v
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
            impls["torch"] = lambda tq=tq, tk=tk, tv=tv, c=causal: F.scaled_dot_product_attention(tq, tk, tv, is_causal=c)
        cases.append(Case("sdpa" + (" causal" if causal else ""), f"({b},{h},{s},{d})", flops, "GFLOP/s", impls))
    # decoding one token against a KV cache: memory-bound, so GB/s of K and V read
    b, h, sk, d = 1, 12, 1024, 64
    q, k, v = _rand(rng, b, h, 1, d), _rand(rng, b, h, sk, d), _rand(rng, b, h, sk, d)
    impls = {"coreformer": lambda: ops.scaled_dot_product_attention(q, k, v, is_causal=True)}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        impls["torch"] = lambda: F.scaled_dot_product_attention(tq, tk, tv)  # one query: nothing to mask
    cases.append(Case("sdpa decode", f"({b},{h},1,{d}) vs Sk={sk}", k.nbytes + v.nbytes, "GB/s", impls))
    return cases


def _mha_cases(rng, torch, F, quick):
    b, s, e, nh = 8, 128, 768, 12
    x = _rand(rng, b, s, e)
    iw, ib, ow, ob = _rand(rng, 3 * e, e, scale=0.03), _rand(rng, 3 * e), _rand(rng, e, e, scale=0.03), _rand(rng, e)
    flops = 2.0 * b * s * e * 3 * e + 4.0 * b * s * s * e + 2.0 * b * s * e * e
    impls: dict[str, Callable[..., object]] = {"coreformer": lambda: ops.multi_head_attention(x, x, x, nh, iw, ib, ow, ob)}
    if torch is not None:
        m = torch.nn.MultiheadAttention(e, nh, batch_first=True).eval()
        with torch.no_grad():
            m.in_proj_weight.copy_(torch.from_numpy(iw))
            m.in_proj_bias.copy_(torch.from_numpy(ib))
            m.out_proj.weight.copy_(torch.from_numpy(ow))
            m.out_proj.bias.copy_(torch.from_numpy(ob))
        tx = torch.from_numpy(x)

        def torch_mha():
            with torch.inference_mode():
                return m(tx, tx, tx, need_weights=False)[0]
        impls["torch"] = torch_mha
    return [Case("multi_head_attention", f"B={b} S={s} E={e} H={nh}", flops, "GFLOP/s", impls)]


def _encoder_layer_cases(rng, torch, F, quick):
    """One post-LN encoder layer (GELU), ours with its weights packed once as models run it, against
    torch.nn.TransformerEncoderLayer in eval/inference mode (torch's fast path,
    _transformer_encoder_layer_fwd): a BERT-base layer, and a MiniLM layer on one 32-token sentence."""
    shapes = [(1, 32, 384, 12, 1536)] if quick else [(8, 128, 768, 12, 3072), (1, 32, 384, 12, 1536)]
    cases = []
    for b, s, e, nh, f in shapes:
        x = _rand(rng, b, s, e)
        w = {"in_weight": _rand(rng, 3 * e, e, scale=e ** -0.5), "in_bias": _rand(rng, 3 * e, scale=0.1),
             "out_weight": _rand(rng, e, e, scale=e ** -0.5), "out_bias": _rand(rng, e, scale=0.1),
             "linear1_weight": _rand(rng, f, e, scale=e ** -0.5), "linear1_bias": _rand(rng, f, scale=0.1),
             "linear2_weight": _rand(rng, e, f, scale=f ** -0.5), "linear2_bias": _rand(rng, e, scale=0.1),
             "norm1_weight": np.ones(e, np.float32), "norm1_bias": np.zeros(e, np.float32),
             "norm2_weight": np.ones(e, np.float32), "norm2_bias": np.zeros(e, np.float32)}
        args = [ops.pack_weight(v) if k.endswith("weight") and not k.startswith("norm") else v for k, v in w.items()]
        t = b * s
        flops = 2.0 * t * e * 4 * e + 4.0 * b * s * s * e + 4.0 * t * e * f
        impls: dict[str, Callable[..., object]] = {"coreformer": lambda x=x, args=args, nh=nh: ops.transformer_encoder_layer(x, nh, *args,
                                                                                           activation="gelu",
                                                                                           eps=1e-12)}
        if torch is not None:
            layer = torch.nn.TransformerEncoderLayer(e, nh, f, dropout=0.0, activation="gelu", batch_first=True,
                                                     layer_norm_eps=1e-12).eval()
            with torch.no_grad():
                for name, key in (("self_attn.in_proj_weight", "in_weight"), ("self_attn.in_proj_bias", "in_bias"),
                                  ("self_attn.out_proj.weight", "out_weight"), ("self_attn.out_proj.bias", "out_bias"),
                                  ("linear1.weight", "linear1_weight"), ("linear1.bias", "linear1_bias"),
                                  ("linear2.weight", "linear2_weight"), ("linear2.bias", "linear2_bias")):
                    layer.get_parameter(name).copy_(torch.from_numpy(w[key]))
            tx = torch.from_numpy(x)

            def torch_layer(layer=layer, tx=tx):
                with torch.inference_mode():
                    return layer(tx)
            impls["torch"] = torch_layer
        cases.append(Case("encoder_layer", f"B={b} S={s} E={e} H={nh} F={f} gelu", flops, "GFLOP/s", impls))
    return cases


def _additive_cases(rng, torch, F, quick):
    b, sq, sk, dd, a = 8, 64, 128, 256, 128
    q, k, v = _rand(rng, b, sq, dd), _rand(rng, b, sk, dd), _rand(rng, b, sk, dd)
    wq, wk, vv = _rand(rng, a, dd, scale=0.05), _rand(rng, a, dd, scale=0.05), _rand(rng, a)

    def np_additive():
        qp, kp = q @ wq.T, k @ wk.T
        sc = np.tanh(qp[:, :, None, :] + kp[:, None, :, :]) @ vv
        return _np_softmax(sc) @ v
    # projections + (add, tanh, dot) per score + the weighted sum
    flops = 2.0 * b * (sq + sk) * dd * a + 3.0 * b * sq * sk * a + 2.0 * b * sq * sk * dd
    return [Case("additive_attention", f"B={b} Sq={sq} Sk={sk} D={dd} A={a}", flops, "GFLOP/s",
                 {"coreformer": lambda: ops.additive_attention(q, k, v, wq, wk, vv), "numpy": np_additive})]


ROWS, COLS = 8192, 768


def _layer_norm_cases(rng, torch, F, quick):
    x, res, w, b = _rand(rng, ROWS, COLS), _rand(rng, ROWS, COLS), _rand(rng, COLS), _rand(rng, COLS)

    def np_ln():
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    plain = {"coreformer": lambda: ops.layer_norm(x, w, b), "numpy": np_ln}
    fused = {"coreformer": lambda: ops.layer_norm(x, w, b, residual=res)}
    if torch is not None:
        tx, tr, tw, tb = (torch.from_numpy(a) for a in (x, res, w, b))
        plain["torch"] = lambda: F.layer_norm(tx, (COLS,), tw, tb)
        fused["torch"] = lambda: F.layer_norm(tx + tr, (COLS,), tw, tb)
    return [Case("layer_norm", f"{ROWS}x{COLS}", 2 * x.nbytes, "GB/s", plain),
            Case("layer_norm +residual", f"{ROWS}x{COLS}", 3 * x.nbytes, "GB/s", fused)]


def _softmax_cases(rng, torch, F, quick):
    x = _rand(rng, ROWS, COLS)
    impls: dict[str, Callable[..., object]] = {"coreformer": lambda: ops.softmax(x), "numpy": lambda: _np_softmax(x)}
    if torch is not None:
        tx = torch.from_numpy(x)
        impls["torch"] = lambda: torch.softmax(tx, -1)
    return [Case("softmax", f"{ROWS}x{COLS}", 2 * x.nbytes, "GB/s", impls)]


def _gelu_cases(rng, torch, F, quick):
    x = _rand(rng, ROWS, COLS)
    tx = torch.from_numpy(x) if torch is not None else None
    cases = []
    for approx in ("none", "tanh"):
        impls: dict[str, Callable[..., object]] = {"coreformer": lambda a=approx: ops.gelu(x, a)}
        if approx == "tanh":
            impls["numpy"] = lambda: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))
        if torch is not None:
            impls["torch"] = lambda a=approx: F.gelu(tx, approximate=a)
        cases.append(Case(f"gelu ({'erf' if approx == 'none' else 'tanh'})", f"{ROWS}x{COLS}", 2 * x.nbytes, "GB/s",
                          impls))
    return cases


def _relu_cases(rng, torch, F, quick):
    x = _rand(rng, ROWS, COLS)
    impls: dict[str, Callable[..., object]] = {"coreformer": lambda: ops.relu(x), "numpy": lambda: np.maximum(x, 0)}
    if torch is not None:
        tx = torch.from_numpy(x)
        impls["torch"] = lambda: torch.relu(tx)
    return [Case("relu", f"{ROWS}x{COLS}", 2 * x.nbytes, "GB/s", impls)]


def _embedding_cases(rng, torch, F, quick):
    table = _rand(rng, 30522, 768)
    ids = rng.integers(0, 30522, size=(32, 512)).astype(np.int64)
    impls: dict[str, Callable[..., object]] = {"coreformer": lambda: ops.embedding(ids, table), "numpy": lambda: table[ids]}
    if torch is not None:
        tt, ti = torch.from_numpy(table), torch.from_numpy(ids)
        impls["torch"] = lambda: F.embedding(ti, tt)
    return [Case("embedding", "32x512 ids, 30522x768", 2 * ids.size * 768 * 4, "GB/s", impls)]


OPS = {
    "copy": _copy_cases,
    "linear": _linear_cases,
    "attention": _attention_cases,
    "mha": _mha_cases,
    "encoder_layer": _encoder_layer_cases,
    "additive_attention": _additive_cases,
    "layer_norm": _layer_norm_cases,
    "softmax": _softmax_cases,
    "gelu": _gelu_cases,
    "relu": _relu_cases,
    "embedding": _embedding_cases,
}


def build_cases(quick: bool, select: set[str] | None = None) -> list[Case]:
    unknown = (select or set()) - set(OPS)
    if unknown:
        raise ValueError(f"unknown op(s) {sorted(unknown)}; choose from {sorted(OPS)}")
    rng = np.random.default_rng(0)
    torch, F = _try_torch()
    cases: list[Case] = []
    for name, make in OPS.items():
        if select is None or name in select:
            cases.extend(make(rng, torch, F, quick))
    return cases


def _sample(fn, min_sample: float) -> float:
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_sample:
            return elapsed / reps


# Before each sample: an idle pause, then the engine runs untimed for a moment. Thread pools keep
# spinning after a call (ONNX Runtime's by default, OpenMP's for a while), so the engine timed next
# would share the cores with them; and after a pause the cores need tens of ms to get back to speed.
# Measured on the one-sentence MiniLM case (ours alone 5.4-6.2 ms): 11.2-11.7 ms right after ONNX
# Runtime's sample, ~11 ms after a bare 0.1-0.3 s pause, 5.8-6.1 ms after the pause and 50 ms of
# untimed calls. Every engine gets the same treatment.
SETTLE_SECONDS = 0.1
WARM_SECONDS = 0.05


def run(cases: list[Case], rounds: int, min_sample: float, progress=None, settle: float = SETTLE_SECONDS) -> list[dict]:
    results = []
    for case in cases:
        names = list(case.impls)
        for fn in case.impls.values():  # warm-up: first-touch, thread pools, caches
            fn()
        samples: dict[str, list[float]] = {k: [] for k in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                if settle and len(names) > 1:
                    time.sleep(settle)
                    _sample(case.impls[name], WARM_SECONDS)
                samples[name].append(_sample(case.impls[name], min_sample))
        med = {k: statistics.median(v) for k, v in samples.items()}
        row = {"op": case.op, "shape": case.shape, "unit": case.unit, "work": case.work, "scale": case.scale,
               "seconds": med, "samples": samples}
        results.append(row)
        if progress:
            progress(row)
    return results


def environment() -> dict:
    env = {"coreformer": _core.info(), "python": platform.python_version(), "numpy": np.__version__,
           "machine": platform.machine(), "processor": _cpu_name()}
    torch, _ = _try_torch()
    if torch is not None:
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def format_table(results: list[dict]) -> str:
    peers = []
    for r in results:
        for k in r["seconds"]:
            if k != "coreformer" and k not in peers:
                peers.append(k)
    head = ["op", "shape", "coreformer ms", "rate"] + [h for p in peers for h in (f"{p} ms", f"{p}/ours")]
    lines = [head]
    for r in results:
        ours = r["seconds"].get("coreformer")
        ref = ours if ours is not None else next(iter(r["seconds"].values()))
        rate = r["work"] / ref / r.get("scale", 1e9)
        row = [r["op"], r["shape"], f"{ours * 1e3:.3f}" if ours else "-", f"{rate:.1f} {r['unit']}"]
        for p in peers:
            t = r["seconds"].get(p)
            row += [f"{t * 1e3:.3f}" if t else "-", f"{t / ours:.2f}x" if t and ours else "-"]
        lines.append(row)
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    out = []
    for j, l in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(l)) + " |")
        if j == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(args) -> int:
    if args.threads:
        _core.set_num_threads(args.threads)
        torch, _ = _try_torch()
        if torch is not None:
            torch.set_num_threads(args.threads)
    select = set(args.ops.split(",")) if args.ops else None
    if getattr(args, "device", "cpu") == "cuda":
        from . import bench_cuda
        return bench_cuda.main(args)
    if getattr(args, "models", False):
        return _main_models(args)
    if getattr(args, "train", False):
        from . import bench_train
        return bench_train.main(args, args.threads or _core.get_num_threads())
    cases = build_cases(args.quick, select)
    rounds = args.rounds or (3 if args.quick else 7)
    min_sample = 0.02 if args.quick else 0.1
    env = environment()
    print(f"coreformer {env['coreformer']['version']} isa={env['coreformer']['isa']} "
          f"threads={env['coreformer']['num_threads']} | numpy {env['numpy']}"
          + (f" | torch {env['torch']} threads={env['torch_threads']}" if "torch" in env else " | torch not installed")
          + f" | {env['processor']}", flush=True)
    print(f"{rounds} rounds, medians; peer/ours > 1 means coreformer is faster", flush=True)
    forced = {k: v for k, v in os.environ.items() if k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    if forced:
        print("note: " + " ".join(f"{k}={v}" for k, v in forced.items()) + " pins numpy's OpenBLAS to a kernel "
              "of its choosing; unset it for a fair numpy column", flush=True)
    results = run(cases, rounds, min_sample,
                  progress=lambda r: print(f"  {r['op']:<24} {r['shape']:<28} done", flush=True) if args.verbose else None)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rounds": rounds, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _main_models(args) -> int:
    from . import bench_models
    env = environment()
    for name in ("transformers", "onnxruntime", "ctranslate2"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    threads = args.threads or _core.get_num_threads()
    print(f"coreformer {env['coreformer']['version']} isa={env['coreformer']['isa']} threads={threads} | "
          + " | ".join(f"{k} {env.get(k) or 'not installed'}" for k in ("torch", "transformers", "onnxruntime",
                                                                          "ctranslate2"))
          + f" | {env['processor']}", flush=True)
    print("medians over interleaved rounds; peer/ours > 1 means coreformer is faster (rate is coreformer's)",
          flush=True)
    results, notes = bench_models.main(args, threads)
    print(format_table(results))
    for n in notes:
        print("note: " + n)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results, "notes": notes}, f, indent=1)
        print(f"wrote {args.json}")
    return 0
