"""``coreformer bench --train``: training against PyTorch, by the same method as the kernel benchmarks
(interleaved rounds, a settle pause and an untimed warm-up before each sample, medians).

Two tables: the backward kernels (and the optimiser step) against torch's autograd on the same shapes,
and whole training steps -- forward, loss, backward, AdamW -- of models built the same way in both
(transformers' GPT-2 and BERT with dropout 0, random weights, one batch). The step's rate is
6 x parameters x tokens (+ attention) FLOP per second.
"""
from __future__ import annotations

import tempfile
from typing import Any, Callable

import numpy as np

from . import ops, optim
from .bench import Case, _rand, _try_torch, environment, format_table, run
from .nn import Parameter


# One function per case, as in bench.py: each timed closure sees only its own case's arrays.

def _attention_backward(rng: np.random.Generator, quick: bool, causal: bool) -> Case:
    torch, F = _try_torch()
    s = 1024 if quick else 2048
    q, k, v, do = (_rand(rng, 1, 12, s, 64) for _ in range(4))
    out, lse = ops.scaled_dot_product_attention_forward(q, k, v, is_causal=causal)
    impls: dict[str, Callable[[], object]] = {
        "coreformer": lambda: ops.scaled_dot_product_attention_backward(do, q, k, v, out, lse, is_causal=causal)}
    if torch is not None:
        tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
        to = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        tdo = torch.from_numpy(do)
        impls["torch"] = lambda: torch.autograd.grad(to, (tq, tk, tv), tdo, retain_graph=True)
    flops = 10.0 * 12 * s * s * 64 * (0.5 if causal else 1.0)  # five S x S x D products
    return Case("sdpa backward" + (" causal" if causal else ""), f"(1,12,{s},64)", flops, "GFLOP/s", impls)


def _linear_backward(rng: np.random.Generator, quick: bool) -> Case:
    torch, F = _try_torch()
    m, kk, n = (512 if quick else 1024), 768, 3072
    x, w, dy = _rand(rng, m, kk), _rand(rng, n, kk, scale=0.05), _rand(rng, m, n)
    z = ops.linear(x, w)
    impls: dict[str, Callable[[], object]] = {"coreformer": lambda: ops.linear_backward(dy, x, w, "gelu", z)}
    if torch is not None:
        tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
        ty = F.gelu(F.linear(tx, tw))
        tdy = torch.from_numpy(dy)
        impls["torch"] = lambda: torch.autograd.grad(ty, (tx, tw), tdy, retain_graph=True)
    return Case("linear+gelu backward", f"{m}x{kk}->{n}", 4.0 * m * kk * n, "GFLOP/s", impls)


def _layer_norm_backward(rng: np.random.Generator, quick: bool) -> Case:
    torch, F = _try_torch()
    rows = 4096 if quick else 8192
    x, dy, g = _rand(rng, rows, 768), _rand(rng, rows, 768), _rand(rng, 768)
    impls: dict[str, Callable[[], object]] = {"coreformer": lambda: ops.layer_norm_backward(dy, x, g)}
    if torch is not None:
        tx, tg = torch.tensor(x, requires_grad=True), torch.tensor(g, requires_grad=True)
        tb = torch.zeros(768, requires_grad=True)
        ty = F.layer_norm(tx, (768,), tg, tb)
        tdy = torch.from_numpy(dy)
        impls["torch"] = lambda: torch.autograd.grad(ty, (tx, tg, tb), tdy, retain_graph=True)
    return Case("layer_norm backward", f"{rows}x768", 3.0 * x.nbytes, "GB/s", impls)


def _gelu_backward(rng: np.random.Generator, quick: bool) -> Case:
    torch, F = _try_torch()
    rows = 2048 if quick else 4096
    x, dy = _rand(rng, rows, 3072), _rand(rng, rows, 3072)
    impls: dict[str, Callable[[], object]] = {"coreformer": lambda: ops.gelu_backward(dy, x)}
    if torch is not None:
        tx = torch.tensor(x, requires_grad=True)
        ty = F.gelu(tx)
        tdy = torch.from_numpy(dy)
        impls["torch"] = lambda: torch.autograd.grad(ty, tx, tdy, retain_graph=True)
    return Case("gelu backward", f"{rows}x3072", 3.0 * x.nbytes, "GB/s", impls)


def _softmax_backward(rng: np.random.Generator, quick: bool) -> Case:
    torch, _ = _try_torch()
    y = ops.softmax(_rand(rng, 48 if quick else 96, 512, 512))
    dy = _rand(rng, *y.shape)
    impls: dict[str, Callable[[], object]] = {"coreformer": lambda: ops.softmax_backward(dy, y)}
    if torch is not None:
        tz = torch.tensor(np.log(np.maximum(y, 1e-30)), requires_grad=True)
        ty = torch.softmax(tz, -1)
        tdy = torch.from_numpy(dy)
        impls["torch"] = lambda: torch.autograd.grad(ty, tz, tdy, retain_graph=True)
    return Case("softmax backward", "x".join(map(str, y.shape)), 3.0 * y.nbytes, "GB/s", impls)


def _cross_entropy(rng: np.random.Generator, quick: bool) -> Case:
    torch, F = _try_torch()
    rows = 512 if quick else 1024
    logits, labels = _rand(rng, rows, 50257), rng.integers(0, 50257, rows)
    impls: dict[str, Callable[[], object]] = {"coreformer": lambda: ops.cross_entropy(logits, labels, return_grad=True)}
    if torch is not None:
        tl = torch.tensor(logits, requires_grad=True)
        tlab = torch.from_numpy(labels)
        impls["torch"] = lambda: torch.autograd.grad(F.cross_entropy(tl, tlab), tl)
    return Case("cross_entropy fwd+bwd", f"{rows}x50257", 2.0 * logits.nbytes, "GB/s", impls)


def _adamw(rng: np.random.Generator, quick: bool) -> Case:
    torch, _ = _try_torch()
    n = 10_000_000 if quick else 124_000_000
    ps = [Parameter(_rand(rng, k, scale=0.02)) for k in (n // 4, n // 4, n - n // 2)]
    for p in ps:
        p.grad = _rand(rng, *p.shape, scale=0.01)
    opt = optim.AdamW(ps, lr=1e-4)
    impls: dict[str, Callable[[], object]] = {"coreformer": opt.step}
    if torch is not None:
        tps = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in ps]
        for tp, p in zip(tps, ps):
            tp.grad = torch.from_numpy(np.array(p.grad))
        impls["torch fused"] = torch.optim.AdamW(tps, lr=1e-4, fused=True).step
    return Case("AdamW step", f"{n / 1e6:.0f}M params", 28.0 * n, "GB/s", impls)  # reads 4, writes 3 floats


def _kernel_cases(rng: np.random.Generator, quick: bool) -> list[Case]:
    return [_attention_backward(rng, quick, False), _attention_backward(rng, quick, True), _linear_backward(rng, quick),
            _layer_norm_backward(rng, quick), _gelu_backward(rng, quick), _softmax_backward(rng, quick),
            _cross_entropy(rng, quick), _adamw(rng, quick)]


def _gpt2_case(rng: np.random.Generator, name: str, layers: int, dim: int, heads: int, vocab: int, ctx: int,
               batch: int) -> Case:
    import transformers

    from .models import GPT2LMHeadModel
    torch, _ = _try_torch()
    cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=dim, n_layer=layers, n_head=heads, n_positions=ctx,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    ref = transformers.GPT2LMHeadModel(cfg).train()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = GPT2LMHeadModel.from_pretrained(d).train()
    ids = rng.integers(0, vocab, (batch, ctx))
    return _step_case(name, f"{layers}x{dim}, {batch}x{ctx}", ours, ref, torch,
                      lambda: ours(ids, labels=ids), lambda: ref(torch.from_numpy(ids), labels=torch.from_numpy(ids)),
                      batch * ctx, layers, batch * ctx * ctx, dim, lookup_only=ours.transformer.wpe.weight.size)


def _bert_case(rng: np.random.Generator, quick: bool) -> Case:
    import transformers

    from .models import BertForSequenceClassification
    torch, _ = _try_torch()
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                  intermediate_size=1536, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                  num_labels=5)
    ref = transformers.BertForSequenceClassification(cfg).train()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = BertForSequenceClassification.from_pretrained(d).train()
    b, s = (8, 128) if quick else (32, 128)
    ids = rng.integers(1000, 30522, (b, s))
    mask = (np.arange(s)[None] < rng.integers(40, s + 1, b)[:, None]).astype(np.int64)  # lengths 40..128
    labels = rng.integers(0, 5, b)
    t = {k: torch.from_numpy(v) for k, v in (("ids", ids), ("mask", mask), ("labels", labels))}
    return _step_case("train step: MiniLM-shaped classifier", f"6x384, {b}x{s} padded", ours, ref, torch,
                      lambda: ours(ids, attention_mask=mask, labels=labels),
                      lambda: ref(t["ids"], attention_mask=t["mask"], labels=t["labels"]),
                      int(mask.sum()), 6, int((mask.sum(1) ** 2).sum()), 384,
                      lookup_only=sum(m.weight.size for m in (ours.bert.embeddings.word_embeddings,
                                                              ours.bert.embeddings.position_embeddings,
                                                              ours.bert.embeddings.token_type_embeddings)))


def _step_case(op: str, shape: str, ours: Any, ref: Any, torch: Any, fwd: Callable[[], Any],
               ref_fwd: Callable[[], Any], tokens: int, layers: int, attn_pairs: int, dim: int,
               lookup_only: int) -> Case:
    """The rate counts 6 x parameters x tokens, less ``lookup_only`` parameters (embedding tables no product
    reads), plus attention's two S x S products forward and backward over ``attn_pairs`` (query, key)
    pairs per layer (B S^2 for a GPT; the sum of the squared real lengths for a packed padded batch)."""
    opt = optim.AdamW(ours.parameters(), lr=1e-5)

    def step() -> None:
        out = fwd()
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    impls: dict[str, Callable[[], object]] = {"coreformer": step}
    if torch is not None:
        topt = torch.optim.AdamW(ref.parameters(), lr=1e-5)

        def torch_step() -> None:
            out = ref_fwd()
            out.loss.backward()
            topt.step()
            topt.zero_grad()
        impls["torch"] = torch_step
    n = sum(p.size for p in ours.parameters()) - lookup_only
    flops = 6.0 * n * tokens + 12.0 * layers * attn_pairs * dim
    return Case(op, shape, flops, "GFLOP/s", impls)


# Peak memory: each engine trains in a process of its own (VmHWM is an address space's high-water mark), from
# the same checkpoint and batch saved by the parent: the whole process, as its user sees it (interpreter,
# imports, weights, optimiser state, activations).

def _memory_child(folder: str, kind: str, engine: str, threads: int, steps: int = 2) -> None:
    """Run in a child process: ``steps`` training steps of checkpoint ``folder`` (a transformers class
    name ``kind``) with ``engine`` ("coreformer", "coreformer+ckpt" or "torch"); prints the peak RSS in MB."""
    import json
    import resource
    batch = dict(np.load(f"{folder}/batch.npz"))
    if engine == "torch":
        import torch
        import transformers
        torch.set_num_threads(threads)
        ref = getattr(transformers, kind).from_pretrained(folder).train()
        topt = torch.optim.AdamW(ref.parameters(), lr=1e-5)
        tb = {k: torch.from_numpy(v) for k, v in batch.items()}
        for _ in range(steps):
            ref(**tb).loss.backward()
            topt.step()
            topt.zero_grad()
    else:
        from . import models, set_num_threads
        set_num_threads(threads)
        ours = getattr(models, kind).from_pretrained(folder)
        if engine.endswith("ckpt"):
            ours.gradient_checkpointing_enable()
        ours.train()
        opt = optim.AdamW(ours.parameters(), lr=1e-5)
        for _ in range(steps):
            ours(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
    # VmHWM: this address space's high-water mark (ru_maxrss would carry the parent's over fork + exec)
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux: the process's own figure
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": kb / 1024.0}))


def _memory(rng: np.random.Generator, quick: bool, threads: int) -> list[dict[str, Any]]:
    import json
    import subprocess
    import sys

    import torch
    import transformers
    drop = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    specs: list[tuple[str, str, Any, int, int]] = [
        ("char GPT", "GPT2LMHeadModel", transformers.GPT2Config(vocab_size=65, n_embd=384, n_layer=6, n_head=6,
                                                                n_positions=256, **drop), 8, 256)]
    if not quick:
        specs.append(("GPT-2 small", "GPT2LMHeadModel",
                      transformers.GPT2Config(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=256,
                                              **drop), 4, 256))
    rows = []
    for name, kind, cfg, b, s in specs:
        with tempfile.TemporaryDirectory() as d:
            torch.manual_seed(0)
            getattr(transformers, kind)(cfg).save_pretrained(d)
            ids = rng.integers(0, cfg.vocab_size, (b, s))
            np.savez(f"{d}/batch.npz", input_ids=ids, labels=ids)
            peak = {}
            for engine in ("coreformer", "coreformer+ckpt", "torch"):
                code = (f"from coreformer.bench_train import _memory_child; "
                        f"_memory_child({d!r}, {kind!r}, {engine!r}, {threads})")
                done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
                if done.returncode != 0:
                    raise RuntimeError(f"the {engine} memory run failed:\n{done.stderr[-2000:]}")
                peak[engine] = json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
        rows.append({"case": f"{name}, {b}x{s}", **peak})
    return rows


def _memory_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'train step, 2 steps':<28} {'coreformer MB':>14} {'+checkpointing':>15} {'torch MB':>10} "
             f"{'ours/torch':>11} {'ckpt/torch':>11}"]
    for r in rows:
        lines.append(f"{r['case']:<28} {r['coreformer']:>14.0f} {r['coreformer+ckpt']:>15.0f} {r['torch']:>10.0f} "
                     f"{r['coreformer'] / r['torch']:>11.2f} {r['coreformer+ckpt'] / r['torch']:>11.2f}")
    return "\n".join(lines)


def main(args: Any, threads: int) -> int:
    rng = np.random.default_rng(0)
    env = environment()
    print(f"coreformer {env['coreformer']['version']} isa={env['coreformer']['isa']} threads={threads} | "
          + (f"torch {env['torch']}" if "torch" in env else "torch not installed") + f" | {env['processor']}",
          flush=True)
    print("medians over interleaved rounds; peer/ours > 1 means coreformer is faster", flush=True)
    rounds = args.rounds or (2 if args.quick else 5)
    kernels = run(_kernel_cases(rng, args.quick), rounds, 0.02 if args.quick else 0.1)
    print("backward kernels and the optimiser step")
    print(format_table(kernels))
    steps: list[Case] = []
    try:
        import transformers  # noqa: F401
        have_models = _try_torch()[0] is not None
    except ImportError:
        have_models = False
    if have_models:
        import transformers
        transformers.logging.set_verbosity_error()  # its notes on configs made here are not the user's concern
        transformers.utils.logging.disable_progress_bar()
        steps.append(_gpt2_case(rng, "train step: char GPT", 6, 384, 6, 65, 256, 4 if args.quick else 8))
        steps.append(_bert_case(rng, args.quick))
        if not args.quick:
            steps.append(_gpt2_case(rng, "train step: GPT-2 small", 12, 768, 12, 50257, 256, 4))
        # seconds-long samples: no settle pause or untimed warm-up call per sample (one warm-up per engine)
        results = run(steps, 1 if args.quick else max(1, rounds - 2), 0.0, settle=0.0)
        print("training steps (forward + loss + backward + AdamW), dropout 0")
        print(format_table(results))
        memory = _memory(rng, args.quick, threads)
        print("peak resident memory of a process training 2 steps (each engine in its own process)")
        print(_memory_table(memory))
    else:
        results, memory = [], []
        print("note: the training steps compare against transformers + torch; install both for that table")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"environment": env, "kernels": kernels, "steps": results, "peak_rss_mb": memory}, f, indent=1)
        print(f"wrote {args.json}")
    return 0

