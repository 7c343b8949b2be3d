"""float64 numpy references for every op. They take the same float32 arrays the kernels get."""
import math

import numpy as np

_erfc = np.frompyfunc(math.erfc, 1, 1)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def linear(x, w, b=None, activation=None, residual=None):
    y = f64(x) @ f64(w).T
    if b is not None:
        y = y + f64(b)
    y = act(y, activation)
    if residual is not None:
        y = y + f64(residual)
    return y


def act(y, activation):
    if activation is None:
        return y
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "gelu":
        return gelu(y)
    if activation == "gelu_tanh":
        return gelu_tanh(y)
    raise ValueError(activation)


def gelu(x):
    # x * Phi(x) with Phi(x) = erfc(-x / sqrt 2) / 2: no cancellation in the negative tail
    x = f64(x)
    return 0.5 * x * np.asarray(_erfc(-x / math.sqrt(2.0)), np.float64)


def gelu_tanh(x):
    # 0.5 x (1 + tanh u) = x / (1 + exp(-2u)): no cancellation in the negative tail
    x = f64(x)
    u = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-2.0 * u))


def softmax(x, axis=-1):
    x = f64(x)
    m = np.max(x, axis=axis, keepdims=True)
    all_masked = np.isneginf(m)
    e = np.exp(x - np.where(all_masked, 0.0, m))
    s = e.sum(axis=axis, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1.0), 0.0)


def sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """torch's semantics plus ours: bottom-right causal, fully masked rows give zeros."""
    q, k, v = f64(q), f64(k), f64(v)
    d = q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    sq, sk = q.shape[-2], k.shape[-2]
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        s = np.where(m, s, -np.inf) if m.dtype == bool else s + f64(m)
    if is_causal:
        i = np.arange(sq)[:, None]
        j = np.arange(sk)[None, :]
        s = np.where(j <= i + (sk - sq), s, -np.inf)
    return softmax(s) @ v


def additive(q, k, v, wq, wk, vv, mask=None):
    qp, kp = f64(q) @ f64(wq).T, f64(k) @ f64(wk).T
    s = np.tanh(qp[:, :, None, :] + kp[:, None, :, :]) @ f64(vv)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.ndim == 2:
            m = m[:, None, :]
        s = np.where(m, s, -np.inf)
    p = softmax(s)
    return p @ f64(v), p


def layer_norm(x, w=None, b=None, eps=1e-5, residual=None):
    s = f64(x) + (f64(residual) if residual is not None else 0.0)
    mu = s.mean(-1, keepdims=True)
    y = (s - mu) / np.sqrt(((s - mu) ** 2).mean(-1, keepdims=True) + eps)
    if w is not None:
        y = y * f64(w)
    if b is not None:
        y = y + f64(b)
    return y, s


def sinusoidal(n, dim):
    pos = np.arange(n, dtype=np.float64)[:, None]
    c = np.arange(dim)
    freq = 10000.0 ** (-(c - (c % 2)) / dim)
    ang = pos * freq
    return np.where(c % 2 == 0, np.sin(ang), np.cos(ang))


def mha(query, key, value, num_heads, iw, ib, ow, ob, attn_mask=None, key_padding_mask=None, is_causal=False,
        scale=None):
    """torch.nn.MultiheadAttention(batch_first=True) in float64: bool masks True = NOT allowed."""
    q, k, v = f64(query), f64(key), f64(value)
    B, Sq, E = q.shape
    Sk = k.shape[1]
    h = num_heads
    dh = E // h
    iw, ib = f64(iw), f64(ib) if ib is not None else np.zeros(3 * E)
    Q = q @ iw[:E].T + ib[:E]
    K = k @ iw[E:2 * E].T + ib[E:2 * E]
    V = v @ iw[2 * E:].T + ib[2 * E:]
    split = lambda t, s: t.reshape(B, s, h, dh).transpose(0, 2, 1, 3)  # noqa: E731
    add = np.zeros((B, h, Sq, Sk))
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        m = m.reshape(B, h, Sq, Sk) if m.ndim == 3 else m
        add = add + (np.where(m, -np.inf, 0.0) if m.dtype == bool else f64(m))
    if key_padding_mask is not None:
        kp = np.asarray(key_padding_mask)
        add = add + (np.where(kp, -np.inf, 0.0) if kp.dtype == bool else f64(kp))[:, None, None, :]
    ctx = sdpa(split(Q, Sq), split(K, Sk), split(V, Sk), attn_mask=add, is_causal=is_causal, scale=scale)
    ctx = ctx.transpose(0, 2, 1, 3).reshape(B, Sq, E)
    return ctx @ f64(ow).T + (f64(ob) if ob is not None else 0.0)


def encoder_layer(x, num_heads, p, activation="relu", norm_first=False, eps=1e-5, **masks):
    """torch.nn.TransformerEncoderLayer(batch_first=True) in float64; p holds the weights by the names
    of ops.transformer_encoder_layer (in_weight, ..., norm2_bias); eps: both norms' or a pair."""
    eps1, eps2 = (eps, eps) if np.ndim(eps) == 0 else eps
    def sa(h):
        return mha(h, h, h, num_heads, p["in_weight"], p["in_bias"], p["out_weight"], p["out_bias"], **masks)

    def ff(h):
        return linear(linear(h, p["linear1_weight"], p["linear1_bias"], activation), p["linear2_weight"],
                      p["linear2_bias"])

    def n1(h):
        return layer_norm(h, p["norm1_weight"], p["norm1_bias"], eps1)[0]

    def n2(h):
        return layer_norm(h, p["norm2_weight"], p["norm2_bias"], eps2)[0]

    x = f64(x)
    if norm_first:
        x1 = x + sa(n1(x))
        return x1 + ff(n2(x1))
    x1 = n1(x + sa(x))
    return n2(x1 + ff(x1))


def decoder_layer(x, memory, num_heads, p, activation="relu", norm_first=False, eps=1e-5, tgt_is_causal=False,
                  memory_key_padding_mask=None):
    """torch.nn.TransformerDecoderLayer(batch_first=True) in float64; p holds the weights by the names of
    ops.transformer_decoder_layer (self_in_weight, ..., norm3_bias)."""
    def sa(h):
        return mha(h, h, h, num_heads, p["self_in_weight"], p["self_in_bias"], p["self_out_weight"],
                   p["self_out_bias"], is_causal=tgt_is_causal)

    def ca(h):
        return mha(h, memory, memory, num_heads, p["cross_in_weight"], p["cross_in_bias"], p["cross_out_weight"],
                   p["cross_out_bias"], key_padding_mask=memory_key_padding_mask)

    def ff(h):
        return linear(linear(h, p["linear1_weight"], p["linear1_bias"], activation), p["linear2_weight"],
                      p["linear2_bias"])

    def n(i, h):
        return layer_norm(h, p[f"norm{i}_weight"], p[f"norm{i}_bias"], eps)[0]

    x = f64(x)
    if norm_first:
        x1 = x + sa(n(1, x))
        x2 = x1 + ca(n(2, x1))
        return x2 + ff(n(3, x2))
    x1 = n(1, x + sa(x))
    x2 = n(2, x1 + ca(x1))
    return n(3, x2 + ff(x2))
