"""The calls the soak tests repeat (tests/test_soak.py): every op on small arrays -- its strided, masked,
packed, cached and Tensor forms, and calls that raise -- and a few whole-model calls. Each entry is a
zero-argument function; the same seed gives the same inputs, so each call's answer is fixed.

Run as a script, it is the child process of the soak tests (a fresh interpreter, so its RSS is ours):
    python soak_calls.py leak CALLS_PER_OP MODEL_CALLS [MODEL_DIR...]
    python soak_calls.py leak-selfcheck CALLS_PER_OP 0   (the same with one call that leaks 1 KiB a call)
    python soak_calls.py threads SECONDS THREADS [MODEL_DIR...]
and prints one JSON line of what it measured."""
import functools
import json
import os
import pickle
import sys
import threading
import time
from typing import Any, Callable

import numpy as np

import coreformer
from coreformer import nn, ops


def op_calls(seed: int = 0) -> dict[str, Callable[[], Any]]:
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, w, b = r(37, 64), r(48, 64), r(48)
    packed = {dt: ops.pack_weight(w, dt) for dt in ("float32", "bfloat16", "int8")}
    q, k, v = r(2, 4, 33, 16), r(2, 4, 40, 16), r(2, 4, 40, 16)
    mask = rng.random((2, 1, 33, 40)) > 0.2
    fmask = np.where(mask, 0.0, -np.inf).astype(np.float32)
    qkv = r(2, 33, 3, 4, 16).transpose(2, 0, 3, 1, 4)  # heads split out of a packed projection: strided views
    E, H, F = 32, 4, 48
    enc = nn.TransformerEncoderLayer(E, H, F, activation="gelu")
    pre = nn.TransformerEncoderLayer(E, H, F, norm_first=True)
    dec = nn.TransformerDecoderLayer(E, H, F)
    mha = nn.MultiHeadAttention(E, H)
    add = nn.AdditiveAttention(E, E, 16)
    xe, mem = r(3, 11, E), r(3, 7, E)
    cu = np.array([0, 4, 11, 20, 33])
    pad = np.zeros((3, 11), bool)
    pad[1, 8:] = True
    ids = rng.integers(0, 48, (5, 9))
    t = coreformer.tensor(x)

    def cached_decoder():
        cache = dec.new_cache(3, 12, 7)
        y = dec(xe[:, :4], mem, cache=cache, tgt_is_causal=True)
        return np.concatenate([y, dec(xe[:, 4:5], None, cache=cache)], axis=1)

    def gpt_block():  # the encoder layer as a decoder-only block appending to a KV cache
        kc, vc = np.zeros((3, H, 16, E // H), np.float32), np.zeros((3, H, 16, E // H), np.float32)
        sa = enc.self_attn
        args = (sa._weight("in_proj_weight"), sa.in_proj_bias, sa.out_proj.weight, sa.out_proj.bias,
                enc.linear1.weight, enc.linear1.bias, enc.linear2.weight, enc.linear2.bias, enc.norm1.weight,
                enc.norm1.bias, enc.norm2.weight, enc.norm2.bias)
        y = ops.transformer_encoder_layer(xe, H, *args, norm_first=True, is_causal=True, k_cache=kc, v_cache=vc)
        return np.concatenate([y, ops.transformer_encoder_layer(xe[:, :1], H, *args, norm_first=True, k_cache=kc,
                                                                v_cache=vc, cache_length=11)], axis=1)

    def raises(f, *errors):
        def call():
            try:
                f()
            except errors as e:
                return type(e).__name__
            raise AssertionError(f"{f} did not raise")
        return call

    return {
        "linear": lambda: ops.linear(x, w, b, "gelu", residual=r_res(x, w)),
        "linear_gemv": lambda: ops.linear(x[:1], w, b),
        "linear_packed_f32": lambda: ops.linear(x, packed["float32"], b, "relu"),
        "linear_packed_bf16": lambda: ops.linear(x[:3], packed["bfloat16"], b),
        "linear_packed_int8": lambda: ops.linear(x[:2], packed["int8"], b, "gelu_tanh"),
        "linear_float64_reversed": lambda: ops.linear(x.astype(np.float64)[::-1], w, b),
        "pack_weight": lambda: ops.pack_weight(w.T, "int8", transposed=True).unpack(),
        "packed_slice_pickle": lambda: pickle.loads(pickle.dumps(packed["bfloat16"][5:30])).unpack(),
        "sdpa": lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "sdpa_causal_float_mask": lambda: ops.scaled_dot_product_attention(q, k, v, attn_mask=fmask, is_causal=True),
        "sdpa_decode": lambda: ops.scaled_dot_product_attention(q[:, :, :1], k, v, is_causal=True),
        "sdpa_strided": lambda: ops.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True),
        "sdpa_gqa": lambda: ops.scaled_dot_product_attention(q, k[:, :2], v[:, :2], enable_gqa=True),
        "mha": lambda: mha(xe, key_padding_mask=pad),
        "encoder_layer": lambda: enc(xe, src_key_padding_mask=pad),
        "encoder_layer_pre_ln_causal": lambda: pre(xe, is_causal=True),
        "encoder_layer_packed_sequences": lambda: ops.transformer_encoder_layer(
            r_rows(xe, 33), H, enc.self_attn.in_proj_weight, enc.self_attn.in_proj_bias,
            enc.self_attn.out_proj.weight, enc.self_attn.out_proj.bias, enc.linear1.weight, enc.linear1.bias,
            enc.linear2.weight, enc.linear2.bias, None, None, None, None, cu_seqlens=cu),
        "encoder_layer_kv_cache": gpt_block,
        "decoder_layer": lambda: dec(xe, mem, tgt_is_causal=True, memory_key_padding_mask=pad[:, :7]),
        "decoder_layer_cached": cached_decoder,
        "additive": lambda: add(xe, mem, mem, mask=~pad[:, :7], return_weights=True)[0],
        "layer_norm": lambda: ops.layer_norm(x, w[0], w[1]),
        "layer_norm_residual": lambda: ops.layer_norm(x, residual=x[::-1], return_sum=True)[1],
        "softmax": lambda: ops.softmax(x),
        "softmax_axis0_in_place": lambda: ops.softmax(x.copy(), axis=0),
        "gelu": lambda: ops.gelu(x),
        "gelu_tanh_out": lambda: ops.gelu(x, "tanh", out=np.empty_like(x)),
        "relu": lambda: ops.relu(x),
        "embedding": lambda: ops.embedding(ids, w),
        "embedding_int32": lambda: ops.embedding(ids.astype(np.int32), w),
        "argmax": lambda: ops.argmax(x),
        "sinusoidal": lambda: ops.sinusoidal_positions(40, 24),
        "tensor_roundtrip": lambda: coreformer.from_dlpack(np.from_dlpack(ops.gelu(t))).reshape(-1).numpy(),
        "tensor_ops": lambda: ops.linear(t, coreformer.tensor(w), coreformer.tensor(b)).to("cpu", "float16").numpy(),
        "tensor_pickle": lambda: pickle.loads(pickle.dumps(t)).numpy(),
        # the backward ops (training): several gradients each, compared as one flat array
        "gelu_backward": lambda: ops.gelu_backward(x[::-1], x, "tanh"),
        "relu_backward": lambda: ops.relu_backward(x[::-1], x),
        "softmax_backward": lambda: ops.softmax_backward(x[::-1], ops.softmax(x, axis=0), axis=0),
        "layer_norm_backward": lambda: flat(*ops.layer_norm_backward(x[::-1], x, w[0], residual=x)),
        "embedding_backward": lambda: ops.embedding_backward(r_rows(x, 45)[:45].reshape(5, 9, 64), ids, 48, 0),
        "cross_entropy": lambda: flat(*ops.cross_entropy(x, ids.ravel()[:37], label_smoothing=0.1,
                                                          return_grad=True)),
        "linear_backward": lambda: flat(*ops.linear_backward(r_rows(x, 37)[:, :48], x, w, "gelu",
                                                             ops.linear(x, w, b))),
        "sdpa_forward_lse": lambda: flat(*ops.scaled_dot_product_attention_forward(q, k, v, fmask, True)),
        "sdpa_backward": lambda: flat(*ops.scaled_dot_product_attention_backward(
            q, q, k, v, attn_mask=mask, is_causal=True)),
        "sdpa_backward_gqa": lambda: flat(*ops.scaled_dot_product_attention_backward(
            q, q, k[:, :2], v[:1, :2], enable_gqa=True)),
        "additive_backward": lambda: flat(*ops.additive_attention_backward(
            xe[:, :7], xe[:, :7], mem, mem, add.w_query, add.w_key, add.v, ~pad[:, :7])),
        "dropout": lambda: flat(*ops.dropout(x, 0.3, seed=11, offset=5, return_mask=True)),
        "dropout_backward": lambda: ops.dropout_backward(x, 0.3, seed=11, offset=5),
        "error_shape": raises(lambda: ops.linear(x, w[:, :5]), ValueError),
        "error_dtype": raises(lambda: ops.softmax(np.array(["a"])), TypeError),
        "error_ids": raises(lambda: ops.embedding(ids + 100, w), IndexError),
        "error_memory": raises(lambda: ops.gelu(np.broadcast_to(np.float64(1), (2 ** 29, 2 ** 30))), MemoryError),
        "error_mask": raises(lambda: ops.scaled_dot_product_attention(q, k, v, mask[..., :3]), ValueError),
        "error_cache": raises(lambda: ops.transformer_encoder_layer(
            xe, H, enc.self_attn.in_proj_weight, None, enc.self_attn.out_proj.weight, None, enc.linear1.weight,
            None, enc.linear2.weight, None, None, None, None, None, k_cache=np.zeros((3, H, 2, 8), np.float32),
            v_cache=np.zeros((3, H, 2, 8), np.float32)), ValueError),
    }


def flat(*arrays):
    return np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays if a is not None])


def r_res(x, w):
    """A residual of linear(x, w)'s shape, from the inputs (fixed by them)."""
    return np.resize(x, (x.shape[0], w.shape[0])).astype(np.float32)


def r_rows(x, n):
    """n rows of x's width, from x (packed sequences)."""
    return np.resize(x, (n, x.shape[-1])).astype(np.float32)


def model_calls(dirs):
    """Whole-model calls on the checkpoints in `dirs` (folders of config.json + model.safetensors)."""
    from coreformer.models import BertModel, GPT2LMHeadModel, Transformer
    calls: dict[str, Callable[[], Any]] = {}
    rng = np.random.default_rng(5)
    for d in dirs:
        kind = json.load(open(os.path.join(d, "config.json")))["model_type"]
        if kind == "bert":
            bert = BertModel.from_pretrained(d)
            ids = rng.integers(0, bert.config.vocab_size, (3, 12))
            am = np.ones((3, 12), np.int64)
            am[1, 7:] = 0
            calls["bert"] = functools.partial(lambda m, i, a: m(i, a).last_hidden_state, bert, ids, am)
        elif kind == "gpt2":
            gpt = GPT2LMHeadModel.from_pretrained(d)
            ids = rng.integers(0, gpt.config.vocab_size, (2, 5))
            calls["gpt2_generate"] = functools.partial(gpt.generate, ids, max_new_tokens=6)
    tr = Transformer(30, 31, d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=40)
    src = rng.integers(3, 30, (2, 7))
    calls["transformer_beams"] = lambda: tr.generate(src, 5, bos_token_id=1, eos_token_id=2, num_beams=3)
    return calls


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def leak(calls_per_op, model_calls_n, dirs, selfcheck=False):
    """RSS after a warm-up and after each tenth of the calls; every op runs calls_per_op times."""
    import gc
    ops_ = op_calls()
    if selfcheck:  # proves the measurement sees a leak of the size a lost result array would be
        kept = []
        ops_["leaks_1KiB"] = lambda: kept.append(np.ones(256, np.float32))
    models = model_calls(dirs)
    for f in list(ops_.values()) + list(models.values()):  # warm-up: caches, pools, lazy imports
        for _ in range(20):
            f()
    gc.collect()
    marks = [rss_bytes()]
    for tenth in range(10):
        for f in ops_.values():
            for _ in range(calls_per_op // 10):
                f()
        for f in models.values():
            for _ in range(model_calls_n // 10):
                f()
        gc.collect()
        marks.append(rss_bytes())
    return {"rss": marks, "ops": len(ops_), "models": len(models),
            "calls": len(ops_) * calls_per_op + len(models) * model_calls_n}


def threads(seconds, n_threads, dirs):
    """n_threads callers in random order for `seconds` while another thread flips set_num_threads; every
    answer must equal the single-threaded one, bit for bit."""
    calls = {**op_calls(), **model_calls(dirs)}
    coreformer.set_num_threads(1)
    want = {name: f() for name, f in calls.items()}
    names = sorted(calls)
    mismatches, counts, stop = [], [0] * n_threads, threading.Event()

    def same(a, b):
        if isinstance(a, str):
            return a == b
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)

    def caller(i):
        rng = np.random.default_rng(i)
        while not stop.is_set():
            name = names[rng.integers(len(names))]
            if not same(calls[name](), want[name]):
                mismatches.append(name)
            counts[i] += 1

    def flipper():
        rng = np.random.default_rng(99)
        while not stop.is_set():
            coreformer.set_num_threads(int(rng.integers(1, 5)))
            time.sleep(0.002)

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(n_threads)] + [threading.Thread(target=flipper)]
    for t in workers:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in workers:
        t.join(timeout=120)
    return {"calls": sum(counts), "mismatches": sorted(set(mismatches)), "kinds": len(names),
            "hung": sum(t.is_alive() for t in workers)}


if __name__ == "__main__":
    mode, a, b, *model_dirs = sys.argv[1:]
    if mode.startswith("leak"):
        result = leak(int(a), int(b), model_dirs, selfcheck=mode == "leak-selfcheck")
    else:
        result = threads(float(a), int(b), model_dirs)
    print(json.dumps(result))
