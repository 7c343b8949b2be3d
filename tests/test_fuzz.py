"""Random input, seeded: every op called with arrays of random rank, size, dtype and layout (views that
are reversed, transposed, strided), and safetensors files with random bytes changed or cut. Whatever
comes in, the answer is a result or ValueError / TypeError / IndexError -- never another exception,
never a crash (a crash fails the whole run). The checks of each case's numbers are the other tests'."""
import json
import random
import struct
from typing import Any

import numpy as np
import pytest

from coreformer import ops
from coreformer import safetensors as st

ALLOWED = (ValueError, TypeError, IndexError)
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_, np.int8]


@pytest.mark.parametrize("seed", range(4))
def test_ops_on_random_inputs(seed):
    rng, pick = np.random.default_rng(seed), random.Random(seed)

    def arr() -> Any:
        shape = tuple(pick.choice([0, 1, 2, 3, 4, 7, 8, 16]) for _ in range(pick.randint(0, 5)))
        a: Any = (rng.standard_normal(shape) * 3).astype(pick.choice(DTYPES))
        r = pick.random()
        if a.ndim and r < 0.15:
            a = a[..., ::-1]
        elif a.ndim and r < 0.3:
            a = np.swapaxes(a, 0, -1)
        elif a.ndim and a.shape[0] > 1 and r < 0.4:
            a = a[::2]
        return a

    def maybe():
        return None if pick.random() < 0.4 else arr()

    def same3() -> tuple[Any, Any, Any]:
        x = arr()
        return x, x, x

    calls = [
        lambda: ops.linear(arr(), arr(), maybe(), pick.choice([None, "relu", "gelu", "gelu_tanh"])),
        lambda: ops.scaled_dot_product_attention(arr(), arr(), arr(), maybe(), pick.random() < 0.5),
        lambda: ops.multi_head_attention(*same3(), pick.choice([1, 2, 4]), arr(), maybe(), arr(), maybe(), maybe(),
                                         maybe(), is_causal=pick.random() < 0.5),
        lambda: ops.additive_attention(arr(), arr(), arr(), arr(), arr(), arr(), maybe(), pick.random() < 0.5),
        lambda: ops.layer_norm(arr(), maybe(), maybe(), 1e-5, maybe(), return_sum=pick.random() < 0.5),
        lambda: ops.softmax(arr(), pick.randint(-3, 3)),
        lambda: ops.gelu(arr(), pick.choice(["none", "tanh"])),
        lambda: ops.relu(arr()),
        lambda: ops.embedding(arr(), arr()),
        lambda: ops.argmax(arr()),
        lambda: ops.pack_weight(arr(), pick.choice(["float32", "bfloat16", "int8"]), transposed=pick.random() < 0.5),
        lambda: ops.linear(arr(), ops.pack_weight(arr(), pick.choice(["float32", "bfloat16", "int8"])), maybe()),
        lambda: ops.transformer_encoder_layer(arr(), pick.choice([1, 2]), arr(), maybe(), arr(), maybe(), arr(),
                                              maybe(), arr(), maybe(), maybe(), maybe(), maybe(), maybe()),
    ]
    for _ in range(500):
        try:
            pick.choice(calls)()
        except ALLOWED:
            pass


def test_safetensors_with_random_damage(tmp_path):
    good = tmp_path / "good.safetensors"
    st.save_file({"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.int64),
                  "c": np.zeros((2, 2), np.float16)}, good)
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    pick = random.Random(0)
    blobs = [raw[:cut] for cut in range(0, len(raw), 7)]
    for _ in range(400):
        b = bytearray(raw)
        for _ in range(pick.randint(1, 4)):
            b[pick.randrange(len(b))] = pick.randrange(256)
        blobs.append(bytes(b))
    value: Any
    for value in (None, True, -1, 2 ** 70, 0.5, "0", [], [1], [0, 48], [[0]], {}, ["0", "48"], [48, 0], [0, 1e30]):
        for key in ("dtype", "shape", "data_offsets"):
            h = json.loads(json.dumps(header))
            h["a"][key] = value
            js = json.dumps(h).encode()
            js += b" " * (-len(js) % 8)
            blobs.append(struct.pack("<Q", len(js)) + js + raw[8 + n:])
    path = tmp_path / "x.safetensors"
    for blob in blobs:
        path.write_bytes(blob)
        try:
            st.load_file(path)
        except ValueError:
            pass
