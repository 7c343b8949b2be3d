"""pytest-benchmark cases, one group per op and shape, coreformer beside its peers:

    pip install ".[test]" && pytest bench/ --benchmark-only --benchmark-group-by=group

`coreformer bench` is the interleaved, ratio-reporting runner behind bench/RESULTS.md; these cases
are for pytest-benchmark's statistics and its --benchmark-compare between commits.
"""
import math

import numpy as np
import pytest

from coreformer import ops

from conftest import randn

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the peers are optional
    torch = F = None

PEERS = ["coreformer", "numpy", "torch"]


def skip_missing(peer):
    if peer == "torch" and torch is None:
        pytest.skip("torch not installed")


def bench_linear(benchmark, peer, x, w, b):
    """``w``: a float32 (out, in) array, or for coreformer also a PackedWeight."""
    if peer.startswith("coreformer"):
        benchmark(ops.linear, x, w, b)
    elif peer == "numpy":
        wt = np.ascontiguousarray(w.T)
        benchmark(lambda: x @ wt + b)
    else:
        tx, tw, tb = map(torch.from_numpy, (x, w, b))
        benchmark(F.linear, tx, tw, tb)


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("m,k,n", [(1024, 768, 3072), (1024, 3072, 768), (1024, 768, 768), (1, 768, 50257)])
def test_linear(benchmark, rng, peer, m, k, n):
    skip_missing(peer)
    benchmark.group = f"linear {m}x{k}->{n}"
    bench_linear(benchmark, peer, randn(rng, m, k), randn(rng, n, k, scale=0.05), randn(rng, n))


@pytest.mark.parametrize("peer", ["coreformer", "coreformer-bf16", "numpy", "torch"])
@pytest.mark.parametrize("m,k,n", [(32, 768, 3072), (1, 768, 50257)])
def test_linear_packed(benchmark, rng, peer, m, k, n):
    """A layer's weight packed once (ops.pack_weight), float32 or bfloat16, against the peers' GEMM on
    the float32 weight."""
    skip_missing(peer)
    benchmark.group = f"linear packed {m}x{k}->{n}"
    x, w, b = randn(rng, m, k), randn(rng, n, k, scale=0.05), randn(rng, n)
    weight = ops.pack_weight(w, "bfloat16") if peer == "coreformer-bf16" else ops.pack_weight(w) if peer == "coreformer" else w
    bench_linear(benchmark, peer, x, weight, b)


@pytest.mark.parametrize("peer", ["coreformer", "torch"])
@pytest.mark.parametrize("b,h,s,d,causal", [(1, 12, 2048, 64, False), (1, 12, 2048, 64, True), (8, 12, 128, 64, False)])
def test_sdpa(benchmark, rng, peer, b, h, s, d, causal):
    skip_missing(peer)
    benchmark.group = f"sdpa ({b},{h},{s},{d}){' causal' if causal else ''}"
    q, k, v = (randn(rng, b, h, s, d) for _ in range(3))
    if peer == "coreformer":
        benchmark(ops.scaled_dot_product_attention, q, k, v, is_causal=causal)
    else:
        tq, tk, tv = map(torch.from_numpy, (q, k, v))
        benchmark(F.scaled_dot_product_attention, tq, tk, tv, is_causal=causal)


ELEMENTWISE = {
    "layer_norm": (lambda x, w, b: ops.layer_norm(x, w, b),
                   lambda x, w, b: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b,
                   lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b)),
    "softmax": (lambda x, w, b: ops.softmax(x),
                lambda x, w, b: (lambda e: e / e.sum(-1, keepdims=True))(np.exp(x - x.max(-1, keepdims=True))),
                lambda x, w, b: torch.softmax(x, -1)),
    "gelu": (lambda x, w, b: ops.gelu(x), None, lambda x, w, b: F.gelu(x)),
    "gelu_tanh": (lambda x, w, b: ops.gelu(x, approximate="tanh"),
                  lambda x, w, b: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
                  lambda x, w, b: F.gelu(x, approximate="tanh")),
    "relu": (lambda x, w, b: ops.relu(x), lambda x, w, b: np.maximum(x, 0), lambda x, w, b: torch.relu(x)),
}


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_memory_bound(benchmark, rng, peer, op):
    skip_missing(peer)
    benchmark.group = f"{op} 8192x768"
    fn = ELEMENTWISE[op][PEERS.index(peer)]
    if fn is None:
        pytest.skip(f"no {peer} version of {op}")
    args = (randn(rng, 8192, 768), randn(rng, 768), randn(rng, 768))
    if peer == "torch":
        args = tuple(map(torch.from_numpy, args))
    benchmark(fn, *args)


@pytest.mark.parametrize("peer", ["coreformer", "torch"])
def test_multi_head_attention(benchmark, rng, peer):
    skip_missing(peer)
    benchmark.group = "multi_head_attention B=8 S=128 E=768 H=12"
    x = randn(rng, 8, 128, 768)
    iw, ib, ow, ob = randn(rng, 2304, 768, scale=0.03), randn(rng, 2304), randn(rng, 768, 768, scale=0.03), randn(rng, 768)
    if peer == "coreformer":
        benchmark(ops.multi_head_attention, x, x, x, 12, iw, ib, ow, ob)
    else:
        m = torch.nn.MultiheadAttention(768, 12, batch_first=True).eval()
        tx = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                return m(tx, tx, tx, need_weights=False)
        benchmark(run)


@pytest.mark.parametrize("peer", ["coreformer", "torch"])
@pytest.mark.parametrize("b,s,e,h,f", [(8, 128, 768, 12, 3072), (1, 32, 384, 12, 1536)])
def test_encoder_layer(benchmark, rng, peer, b, s, e, h, f):
    """A post-LN GELU encoder layer: ours (weights packed once) against torch's fast path."""
    skip_missing(peer)
    benchmark.group = f"encoder_layer B={b} S={s} E={e} F={f}"
    x = randn(rng, b, s, e)
    shapes = [(3 * e, e), (3 * e,), (e, e), (e,), (f, e), (f,), (e, f), (e,)]
    w = [randn(rng, *sh, scale=0.05) for sh in shapes] + [np.ones(e, np.float32), np.zeros(e, np.float32)] * 2
    if peer == "coreformer":
        args = [ops.pack_weight(a) if i in (0, 2, 4, 6) else a for i, a in enumerate(w)]
        benchmark(ops.transformer_encoder_layer, x, h, *args, activation="gelu")
        return
    layer = torch.nn.TransformerEncoderLayer(e, h, f, dropout=0.0, activation="gelu", batch_first=True).eval()
    with torch.no_grad():
        for p, a in zip(layer.parameters(), w):  # the same order as the op's arguments
            p.copy_(torch.from_numpy(a))
    tx = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return layer(tx)
    benchmark(run)
