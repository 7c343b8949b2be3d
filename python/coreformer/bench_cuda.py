"""GPU micro-benchmarks (``coreformer bench --device cuda``): coreformer's CUDA kernels against PyTorch
on the same GPU, with bench.py's method (warm-up, interleaved rounds, medians). Each timed call ends
with a device synchronisation, so a sample is the kernel's whole time; the shapes are large enough
(milliseconds) that the ~10 us of a synchronisation does not matter.

Attention is counted in TFLOP/s (4 B H Sq Sk D, half for causal) against
``torch.nn.functional.scaled_dot_product_attention`` (its flash backend for 16-bit types); the
memory-bound ops in GB/s against the device's copy rate, measured here as torch's device-to-device
copy.
"""
from __future__ import annotations

from . import _core, ops
from .bench import Case


def _sync_pair(torch):
    def ours(fn):
        def f():
            r = fn()
            _core.synchronize(0)
            return r
        return f

    def theirs(fn):
        def f():
            r = fn()
            torch.cuda.synchronize()
            return r
        return f
    return ours, theirs


def build_cases(quick: bool) -> list[Case]:
    import torch
    import torch.nn.functional as F

    ours, theirs = _sync_pair(torch)
    g = torch.Generator(device="cuda").manual_seed(0)
    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    cases: list[Case] = []
    big = (8192, 4096) if not quick else (4096, 1024)

    src = torch.randn(*big, device="cuda", generator=g)
    dst = torch.empty_like(src)
    cases.append(Case("copy (limit)", f"{big[0]}x{big[1]} float32", 2 * src.numel() * 4, "GB/s",
                      {"torch": theirs(lambda: dst.copy_(src))}))

    shapes = [(8, 16, 2048, 64), (8, 16, 2048, 128)] if not quick else [(2, 16, 1024, 64)]
    for dt in ("float16", "bfloat16"):
        for (B, H, S, D) in shapes:
            q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=tdt[dt], generator=g) for _ in range(3))
            cq, ck, cv = (_core.from_dlpack(t) for t in (q, k, v))
            for causal in (False, True):
                flops = 4.0 * B * H * S * S * D * (0.5 if causal else 1.0)
                cases.append(Case("attention" + (" causal" if causal else ""), f"({B},{H},{S},{D}) {dt}", flops,
                                  "TFLOP/s", {
                                      "coreformer": ours(lambda cq=cq, ck=ck, cv=cv, c=causal:
                                                         ops.scaled_dot_product_attention(cq, ck, cv, is_causal=c)),
                                      "torch": theirs(lambda q=q, k=k, v=v, c=causal:
                                                      F.scaled_dot_product_attention(q, k, v, is_causal=c)),
                                  }, scale=1e12))

    M, K, N = (8192, 4096, 4096) if not quick else (2048, 1024, 1024)
    for dt in ("float16", "bfloat16"):
        x = torch.randn(M, K, device="cuda", dtype=tdt[dt], generator=g)
        w = torch.randn(N, K, device="cuda", dtype=tdt[dt], generator=g) * K ** -0.5
        b = torch.randn(N, device="cuda", dtype=tdt[dt], generator=g)
        cx, cw, cb = (_core.from_dlpack(t) for t in (x, w, b))
        cases.append(Case("linear", f"{M}x{K}->{N} +bias+gelu {dt}", 2.0 * M * K * N, "TFLOP/s", {
            "coreformer": ours(lambda cx=cx, cw=cw, cb=cb: ops.linear(cx, cw, cb, "gelu")),
            "torch": theirs(lambda x=x, w=w, b=b: F.gelu(F.linear(x, w, b))),
        }, scale=1e12))

    rows, n = (65536, 1024) if not quick else (8192, 1024)
    for dt in ("float32", "bfloat16"):
        x = torch.randn(rows, n, device="cuda", dtype=tdt[dt], generator=g)
        wn = torch.randn(n, device="cuda", dtype=tdt[dt], generator=g)
        bn = torch.randn(n, device="cuda", dtype=tdt[dt], generator=g)
        cx, cwn, cbn = (_core.from_dlpack(t) for t in (x, wn, bn))
        nbytes = 2 * x.numel() * x.element_size()
        cases.append(Case("layer_norm", f"{rows}x{n} {dt}", nbytes, "GB/s", {
            "coreformer": ours(lambda cx=cx, cwn=cwn, cbn=cbn: ops.layer_norm(cx, cwn, cbn)),
            "torch": theirs(lambda x=x, wn=wn, bn=bn: F.layer_norm(x, (n,), wn, bn)),
        }))
        cases.append(Case("softmax", f"{rows}x{n} {dt}", nbytes, "GB/s", {
            "coreformer": ours(lambda cx=cx: ops.softmax(cx)),
            "torch": theirs(lambda x=x: torch.softmax(x, -1)),
        }))
        cases.append(Case("gelu (erf)", f"{rows}x{n} {dt}", nbytes, "GB/s", {
            "coreformer": ours(lambda cx=cx: ops.gelu(cx)),
            "torch": theirs(lambda x=x: F.gelu(x)),
        }))
    return cases


def main(args) -> int:
    from . import bench
    info = _core.info()
    if info["cuda_devices"] == 0:
        why = "this build has no CUDA backend" if not info["cuda_built"] else "no CUDA device is available"
        print(f"coreformer bench --device cuda: {why}")
        return 2
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print("coreformer bench --device cuda: the peer (PyTorch with CUDA) is not available")
        return 2
    rounds = args.rounds or (3 if args.quick else 7)
    min_sample = 0.02 if args.quick else 0.1
    print(f"coreformer {info['version']} | torch {torch.__version__} | {torch.cuda.get_device_name(0)}", flush=True)
    print(f"{rounds} rounds, medians; torch/ours > 1 means coreformer is faster", flush=True)
    results = bench.run(build_cases(args.quick), rounds, min_sample, settle=0.0)
    print(bench.format_table(results))
    copy = next((r for r in results if r["op"] == "copy (limit)"), None)
    if copy:
        limit = copy["work"] / copy["seconds"]["torch"] / 1e9
        for r in results:
            if r["unit"] == "GB/s" and "coreformer" in r["seconds"]:
                rate = r["work"] / r["seconds"]["coreformer"] / 1e9
                print(f"{r['op']} {r['shape']}: {100 * rate / limit:.0f}% of the copy rate ({limit:.0f} GB/s)")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"environment": {"coreformer": info, "torch": torch.__version__,
                                       "device": torch.cuda.get_device_name(0)}, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    return 0
