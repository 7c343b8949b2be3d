"""Where a GPT-2-small greedy decode step goes on a GPU: the whole step, and its parts each timed with a
synchronize after it (random weights; run on a machine with a GPU: python bench/gpu_decode_profile.py)."""
import sys
import tempfile
import time

import numpy as np
import transformers

import coreformer as cf
from coreformer import _core, ops
from coreformer.models import GPT2LMHeadModel


def timed(fn, n=20):
    fn()
    _core.synchronize(0)
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        _core.synchronize(0)
        t.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(t))


def main(dtype="float32"):
    with tempfile.TemporaryDirectory() as d:
        transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(d)
        m = GPT2LMHeadModel.from_pretrained(d).to("cuda", dtype)
    print(cf.info())
    ids = np.random.default_rng(0).integers(0, 50257, (1, 32))
    t0 = time.perf_counter()
    m.generate(ids, max_new_tokens=64)
    t1 = time.perf_counter()
    m.generate(ids, max_new_tokens=64)
    t2 = time.perf_counter()
    print(f"{dtype}: generate 32+64: {1e3 * (t1 - t0):.1f} ms cold, {1e3 * (t2 - t1):.1f} ms warm "
          f"({64 / (t2 - t1):.1f} tok/s)")
    dev = m.__dict__["_device"]
    cache = m.new_cache(1, 200)
    m._forward_device(ids, None, np.arange(32)[None], cache, 1)
    step = np.array([[5]])

    def one_step():
        for lc in cache.layers:  # the cache would grow by one each call: back to the prompt's length
            lc.length = 32
        out = m._forward_device(step, None, np.array([[32]]), cache, 1)
        ops.argmax(out.reshape(1, -1)).numpy()

    x = _core.tensor(np.random.rand(1, 1, 768).astype(np.float32), "cuda", dtype)
    blk = dev["blocks"][0]
    lc = cache.layers[0]

    def one_layer():
        ops.transformer_encoder_layer(x, blk["heads"], *blk["weights"], activation=blk["act"], norm_first=True,
                                      eps=blk["eps"], is_causal=True, scale=blk["scale"], out=x,
                                      k_cache=lc.k, v_cache=lc.v, cache_length=32)

    h = _core.tensor(np.random.rand(1, 768).astype(np.float32), "cuda", dtype)
    parts = {
        "whole step (ids up, 12 layers, head, argmax, id down)": one_step,
        "one fused layer call": one_layer,
        "ids up (tensor from numpy)": lambda: _core.tensor(step, "cuda"),
        "embedding (with its id check)": lambda: ops.embedding(_core.tensor(step, "cuda"), dev["wte"]),
        "LM head linear 1x768->50257": lambda: ops.linear(h, dev["head"]),
        "argmax + id down": lambda: ops.argmax(ops.linear(h, dev["head"])).numpy(),
        "linear 1x768->3072": lambda: ops.linear(h, blk["weights"][4]),
    }
    for name, fn in parts.items():
        print(f"  {name:58s} {timed(fn):8.3f} ms")


if __name__ == "__main__":
    for dt in sys.argv[1:] or ["float32", "float16"]:
        main(dt)
