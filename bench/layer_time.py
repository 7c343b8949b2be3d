"""One MiniLM-shaped encoder layer (1 x 32 tokens, E=384, 12 heads, F=1536, GELU, packed float32
weights) in a loop: best of 7 means over 300 calls, in microseconds. Run it with two builds alternately
(each first on PYTHONPATH) to compare them."""
import time, numpy as np
from coreformer import ops
rng = np.random.default_rng(0)
E, F, H = 384, 1536, 12
x = rng.standard_normal((1, 32, E)).astype(np.float32)
P = [rng.standard_normal(s).astype(np.float32) * 0.05 for s in [(3*E, E), (3*E,), (E, E), (E,), (F, E), (F,), (E, F), (E,), (E,), (E,), (E,), (E,)]]
W = [ops.pack_weight(p) if p.ndim == 2 else p for p in P]
out = np.empty_like(x)
best = 1e9
for _ in range(7):
    t = time.perf_counter()
    for _ in range(300):
        ops.transformer_encoder_layer(x, H, *W, activation="gelu", out=out)
    best = min(best, (time.perf_counter() - t) / 300 * 1e6)
print(f"{best:.1f} us")
