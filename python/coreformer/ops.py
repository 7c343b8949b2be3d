"""Functions over numpy arrays, each one call into the C++ core with the GIL released.

Inputs: float32 C-contiguous arrays are read without a copy; other real dtypes (float64, ints,
bool) and strided arrays are converted to float32 C-contiguous first; complex, string and object
arrays raise ``TypeError``.

Every op also takes ``coreformer.Tensor`` arguments and then returns Tensors on the same device: on a
GPU (``device="cuda"``) in float32, float16 or bfloat16 (one dtype for all the float arguments of a
call; masks bool or float32; ids int32/int64; weights Tensors, not ``PackedWeight``, which is CPU
memory). Arguments on different devices raise ``ValueError``. Results are new float32 arrays, or are written into ``out=`` where an
op takes one (``out`` must be float32, C-contiguous and must not overlap the inputs; the
elementwise ops accept ``out=x`` for in-place). Mismatched shapes raise ``ValueError`` naming the
argument and the shapes; out-of-range ids raise ``IndexError``.
"""
from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np

from . import _core
from ._args import flag as _flag, float_arg as _float, int_arg as _int
from ._log import logger
from ._typing import ArrayIn, ArrayLike, FloatArray, IntArray, Result, WeightIn

__all__ = [
    "PackedWeight",
    "Tensor",
    "pack_weight",
    "linear",
    "scaled_dot_product_attention",
    "multi_head_attention",
    "transformer_encoder_layer",
    "transformer_decoder_layer",
    "additive_attention",
    "layer_norm",
    "softmax",
    "gelu",
    "relu",
    "embedding",
    "sinusoidal_positions",
    "argmax",
    "gelu_backward",
    "relu_backward",
    "softmax_backward",
    "layer_norm_backward",
    "embedding_backward",
    "cross_entropy",
    "linear_backward",
    "scaled_dot_product_attention_forward",
    "scaled_dot_product_attention_backward",
    "dropout",
    "dropout_backward",
    "additive_attention_backward",
]


PackedWeight = _core.PackedWeight
Tensor = _core.Tensor


def _ndim(x: Any) -> int:
    return x.ndim if isinstance(x, Tensor) else np.ndim(x)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if isinstance(x, Tensor) else np.shape(x)


def _batched(x: Any) -> Any:
    """x with a leading batch axis of 1 (a view: no copy, on whatever device x is)."""
    return x.reshape(1, *x.shape) if isinstance(x, Tensor) else np.asarray(x)[None]


def _norm_eps(eps: Any, n: int) -> tuple[float, ...]:
    """A fused layer's eps: one float for its n norms, or one each."""
    if np.ndim(eps) == 0:
        return (_float("eps", eps),) * n
    if np.shape(eps) == (n,):
        return tuple(_float("eps", e) for e in eps)
    which = "a pair (norm1's, norm2's)" if n == 2 else "a triple (norm1's, norm2's, norm3's)"
    raise ValueError(f"eps must be a float or {which}, got {eps!r}")


def _unbatched(r: Any) -> Any:
    return r.reshape(*r.shape[1:]) if isinstance(r, Tensor) else r[0]


def _packed_weight_from_state(state: tuple) -> PackedWeight:
    """pickle's reconstructor of a PackedWeight (its ``__reduce__``): the stored bytes, as they were."""
    w = _core._packed_weight_from_state(state)
    if w.panel_width != _core._gemm_panel_width():
        logger.warning("a PackedWeight %s was packed for GEMM panels of %d columns (another CPU's ISA); this one "
                       "uses %d, so it is unpacked at every use: ops.pack_weight(w.unpack(), w.dtype) packs it for "
                       "full speed", w.shape, w.panel_width, _core._gemm_panel_width())
    return w


def pack_weight(weight: ArrayIn, dtype: str = "float32", *, transposed: bool = False) -> PackedWeight:
    """Pack a Linear weight ``(out, in)`` once for ``linear`` / ``multi_head_attention``.

    ``linear`` with a plain array repacks the weight into the GEMM's panel layout on every call
    (as BLAS does); a layer whose weight does not change packs it once here instead. ``dtype``
    ``"bfloat16"`` stores half the bytes (rounded to nearest even) and ``"int8"`` a quarter
    (symmetric, one float32 scale per output row: ``max|row| / 127``; the weight must be finite);
    products and sums stay float32. What bounds decoding one token at a time is streaming the
    weights from memory. With
    ``transposed=True`` the array is ``(in, out)`` (GPT-2's Conv1D layout), packed without a
    transposed copy. The result is immutable and may be shared by threads; ``.shape`` is
    ``(out, in)``, ``.unpack()`` gives the float32 weight back (bfloat16 widened exactly, int8
    times its row's scale); ``pw[a:b]`` takes rows (sharing memory when ``a`` starts a panel).
    """
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be 'float32', 'bfloat16' or 'int8', got {type(dtype).__name__} {dtype!r}")
    return _core.pack_weight(weight, dtype, _flag("transposed", transposed))


@overload
def linear(x: Tensor, weight: WeightIn, bias: ArrayIn | None = ..., activation: str | None = ..., *,
           residual: ArrayIn | None = ..., out: Tensor | None = ...) -> Tensor: ...
@overload
def linear(x: ArrayLike, weight: WeightIn, bias: ArrayIn | None = ..., activation: str | None = ..., *,
           residual: ArrayIn | None = ..., out: FloatArray | None = ...) -> FloatArray: ...
@overload
def linear(x: ArrayIn, weight: WeightIn, bias: ArrayIn | None = ..., activation: str | None = ..., *,
           residual: ArrayIn | None = ..., out: Result | None = ...) -> Result: ...
def linear(x: ArrayIn, weight: WeightIn, bias: ArrayIn | None = None, activation: str | None = None, *,
           residual: ArrayIn | None = None, out: Result | None = None) -> Result:
    """``activation(x @ weight.T + bias) + residual`` in one GEMM with a fused epilogue.

    x ``(..., in)``, weight ``(out, in)`` (PyTorch's layout) or a ``PackedWeight``, bias
    ``(out,)``; activation is ``None``, ``"relu"``, ``"gelu"`` (erf) or ``"gelu_tanh"``;
    residual ``(..., out)`` is added after the activation. Returns ``(..., out)``.
    """
    return _core.linear(x, weight, bias, activation, residual, out)


@overload
def scaled_dot_product_attention(query: Tensor, key: ArrayIn, value: ArrayIn, attn_mask: ArrayIn | None = ...,
                                 is_causal: bool = ..., scale: float | None = ..., *, out: Tensor | None = ...,
                                 enable_gqa: bool = ...) -> Tensor: ...
@overload
def scaled_dot_product_attention(query: ArrayLike, key: ArrayIn, value: ArrayIn, attn_mask: ArrayIn | None = ...,
                                 is_causal: bool = ..., scale: float | None = ..., *, out: FloatArray | None = ...,
                                 enable_gqa: bool = ...) -> FloatArray: ...
@overload
def scaled_dot_product_attention(query: ArrayIn, key: ArrayIn, value: ArrayIn, attn_mask: ArrayIn | None = ...,
                                 is_causal: bool = ..., scale: float | None = ..., *, out: Result | None = ...,
                                 enable_gqa: bool = ...) -> Result: ...
def scaled_dot_product_attention(query: ArrayIn, key: ArrayIn, value: ArrayIn, attn_mask: ArrayIn | None = None,
                                 is_causal: bool = False, scale: float | None = None, *, out: Result | None = None,
                                 enable_gqa: bool = False) -> Result:
    """``softmax(query @ key.T * scale + mask) @ value``, as ``torch.nn.functional.scaled_dot_product_attention``.

    query ``(B, H, Sq, D)``, key ``(B, H, Sk, D)``, value ``(B, H, Sk, Dv)``, or the same without B;
    as in torch, key and value may have size 1 on the batch or head axis (broadcast, read without a
    copy), and with ``enable_gqa=True`` fewer heads than the query (grouped-query attention: each
    of their ``Hk`` heads serves ``H / Hk`` consecutive query heads). ``attn_mask`` is bool (True =
    may attend) or float (added to the scores), broadcastable to ``(B, H, Sq, Sk)``. ``scale``
    defaults to ``1/sqrt(D)``.

    Two deliberate differences from PyTorch: ``is_causal`` with ``Sq < Sk`` aligns to the bottom
    right (query i sees keys up to ``i + Sk - Sq``, what a KV cache needs), and a query row with
    no key left to attend gives zeros, not NaN (a NaN among its scores still gives NaN). The score matrix is never materialised: memory is
    O(S * D) whatever the sequence length.

    Strided float32 views whose last axis is contiguous are read in place (heads split out of a
    packed QKV projection, a prefix of a preallocated KV cache), and ``out`` may be such a view
    too (a ``(B, S, H, Dv)`` buffer seen as ``(B, H, S, Dv)``, so heads merge without a copy).
    """
    query, key, value = _attention_inputs(query, key, value, _flag("enable_gqa", enable_gqa))
    return _core.scaled_dot_product_attention(query, key, value, attn_mask, _flag("is_causal", is_causal),
                                             None if scale is None else _float("scale", scale), out)


def _broadcast_kv(query: np.ndarray, key: np.ndarray, value: np.ndarray, gqa: bool) -> tuple[np.ndarray, np.ndarray]:
    """key and value with query's batch and head axes, where torch's attention would broadcast them:
    a size-1 axis becomes a zero-stride view (the core reads it in place, no copy); with ``gqa``, each
    of Hk heads is repeated for H / Hk query heads (torch's repeat_interleave). Shapes it cannot fit
    are left for the core to report."""
    if not 3 <= query.ndim == key.ndim == value.ndim <= 4:
        return key, value
    lead = query.shape[:-2]
    out = []
    for name, a in (("key", key), ("value", value)):
        if gqa and a.shape[-3] != lead[-1]:
            if a.shape[-3] == 0 or lead[-1] % a.shape[-3]:
                raise ValueError(f"enable_gqa: query's {lead[-1]} heads must be a multiple of {name}'s "
                                 f"{a.shape[-3]}, got shapes {query.shape} and {a.shape}")
            a = np.repeat(a, lead[-1] // a.shape[-3], axis=-3)
        if a.shape[:-2] != lead and all(x in (1, y) for x, y in zip(a.shape[:-2], lead)):
            a = np.broadcast_to(a, lead + a.shape[-2:])
        out.append(a)
    return out[0], out[1]


def scaled_dot_product_attention_forward(query: ArrayIn, key: ArrayIn, value: ArrayIn,
                                         attn_mask: ArrayIn | None = None, is_causal: bool = False,
                                         scale: float | None = None, *, enable_gqa: bool = False,
                                         dropout_p: float = 0.0, seed: int | None = None,
                                         offset: int = 0) -> tuple[FloatArray, FloatArray]:
    """``scaled_dot_product_attention`` for training: ``(output, lse)``, lse ``(..., H, Sq)`` each query row's
    log-sum-exp of its scaled, masked scores (natural log; ``-inf`` for a row with nothing to attend) --
    what :func:`scaled_dot_product_attention_backward` recomputes the probabilities from. Same arguments and
    rules as the forward.

    ``dropout_p`` (as torch's): each probability is dropped with that chance and the kept ones scaled by
    ``1 / (1 - p)``, after the softmax (its normaliser, and lse, are the undropped row's). The mask is
    :func:`dropout`'s over the ``(B, H, Sq, Sk)`` probabilities, from ``seed`` and ``offset``: element
    ``((b H + h) Sq + i) Sk + j`` uses word ``offset + that`` of the stream, so the backward, given the same
    three, recomputes it -- nothing is stored. CPU only so far."""
    q, k, v = _attention_inputs(query, key, value, _flag("enable_gqa", enable_gqa))
    out, lse = _core.scaled_dot_product_attention_forward(q, k, v, attn_mask, _flag("is_causal", is_causal),
                                                          None if scale is None else _float("scale", scale),
                                                          **_attention_dropout(dropout_p, seed, offset))
    return out, lse


def _attention_dropout(dropout_p: Any, seed: Any, offset: Any) -> dict[str, Any]:
    p = _float("dropout_p", dropout_p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {p}")
    if p > 0 and seed is None:
        raise ValueError("dropout_p > 0 needs a seed (the mask is recomputed from seed and offset in the backward)")
    return {"dropout_p": p, "seed": 0 if seed is None else _seed("seed", seed), "offset": _seed("offset", offset)}


def scaled_dot_product_attention_backward(grad_output: ArrayIn, query: ArrayIn, key: ArrayIn, value: ArrayIn,
                                          output: ArrayIn | None = None, lse: ArrayIn | None = None,
                                          attn_mask: ArrayIn | None = None, is_causal: bool = False,
                                          scale: float | None = None, *, enable_gqa: bool = False,
                                          dropout_p: float = 0.0, seed: int | None = None,
                                          offset: int = 0) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The gradients ``(dquery, dkey, dvalue)`` of ``scaled_dot_product_attention(query, key, value,
    attn_mask, is_causal, scale)`` from ``grad_output`` (the output's shape), FlashAttention-2's way: the
    probabilities are recomputed tile by tile from the forward's ``output`` and ``lse`` (from
    :func:`scaled_dot_product_attention_forward`; without them the forward is run again), never stored --
    memory O(S * D). Every mask kind, ``is_causal`` (bottom-right aligned, as the forward), broadcast key and
    value (their gradients summed back to their shapes) and ``enable_gqa`` (each key/value head's gradient
    the sum over the query heads it serves). Keys a row gives zero weight (masked, causal, underflow) add
    nothing to any gradient, so inf/NaN in a masked key's row does not leak; a row with nothing to attend has
    zero gradients. ``dropout_p``, ``seed``, ``offset``: the forward's, whose mask is recomputed. Deterministic:
    the same result on any thread count. CPU only so far."""
    gqa = _flag("enable_gqa", enable_gqa)
    k_shape = np.shape(key) if isinstance(key, np.ndarray) else None
    v_shape = np.shape(value) if isinstance(value, np.ndarray) else None
    q, k, v = _attention_inputs(query, key, value, gqa)
    dq, dk, dv = _core.scaled_dot_product_attention_backward(
        grad_output, q, k, v, output, lse, attn_mask, _flag("is_causal", is_causal),
        None if scale is None else _float("scale", scale), **_attention_dropout(dropout_p, seed, offset))
    return dq, _unbroadcast_kv(dk, k_shape), _unbroadcast_kv(dv, v_shape)


def _attention_inputs(query: ArrayIn, key: ArrayIn, value: ArrayIn, gqa: bool) -> tuple[Any, Any, Any]:
    if isinstance(query, np.ndarray) and isinstance(key, np.ndarray) and isinstance(value, np.ndarray):
        key, value = _broadcast_kv(query, key, value, gqa)
    elif gqa:
        raise ValueError("enable_gqa takes numpy arrays; for Tensors, repeat the key and value heads first")
    return query, key, value


def _unbroadcast_kv(grad: FloatArray, shape: tuple[int, ...] | None) -> FloatArray:
    """The gradient of key or value expanded by _broadcast_kv, summed back to the caller's shape: over a
    broadcast batch axis, and over each group of query heads that a key/value head (GQA, or a size-1 head
    axis) served."""
    if shape is None or grad.shape == shape or grad.ndim != len(shape) or grad.ndim < 3:
        return grad
    if grad.ndim == 4 and shape[0] == 1 and grad.shape[0] != 1:
        grad = grad.sum(axis=0, keepdims=True, dtype=np.float32)
    h, hk = grad.shape[-3], shape[-3]
    if hk != h and hk > 0 and h % hk == 0:
        grad = grad.reshape(grad.shape[:-3] + (hk, h // hk) + grad.shape[-2:]).sum(axis=-3, dtype=np.float32)
    return np.ascontiguousarray(grad)


@overload
def multi_head_attention(query: Tensor, key: ArrayIn, value: ArrayIn, num_heads: int, in_weight: WeightIn,
                         in_bias: ArrayIn | None, out_weight: WeightIn, out_bias: ArrayIn | None,
                         attn_mask: ArrayIn | None = ..., key_padding_mask: ArrayIn | None = ...,
                         is_causal: bool = ...) -> Tensor: ...
@overload
def multi_head_attention(query: ArrayLike, key: ArrayIn, value: ArrayIn, num_heads: int, in_weight: WeightIn,
                         in_bias: ArrayIn | None, out_weight: WeightIn, out_bias: ArrayIn | None,
                         attn_mask: ArrayIn | None = ..., key_padding_mask: ArrayIn | None = ...,
                         is_causal: bool = ...) -> FloatArray: ...
@overload
def multi_head_attention(query: ArrayIn, key: ArrayIn, value: ArrayIn, num_heads: int, in_weight: WeightIn,
                         in_bias: ArrayIn | None, out_weight: WeightIn, out_bias: ArrayIn | None,
                         attn_mask: ArrayIn | None = ..., key_padding_mask: ArrayIn | None = ...,
                         is_causal: bool = ...) -> Result: ...
def multi_head_attention(query: ArrayIn, key: ArrayIn, value: ArrayIn, num_heads: int, in_weight: WeightIn,
                         in_bias: ArrayIn | None, out_weight: WeightIn, out_bias: ArrayIn | None,
                         attn_mask: ArrayIn | None = None, key_padding_mask: ArrayIn | None = None,
                         is_causal: bool = False) -> Result:
    """The forward of ``torch.nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)`` (inference).

    query ``(B, Sq, E)``, key and value ``(B, Sk, E)`` (or unbatched ``(S, E)``); ``in_weight``
    ``(3E, E)`` and ``in_bias`` ``(3E,)`` are torch's packed ``in_proj_weight``/``in_proj_bias``,
    ``out_weight`` ``(E, E)``/``out_bias`` ``(E,)`` its ``out_proj`` (either weight may be a
    ``PackedWeight``). As in torch, a bool
    ``attn_mask`` (``(Sq, Sk)`` or ``(B*num_heads, Sq, Sk)``) is True where attending is NOT
    allowed, a float one is added; ``key_padding_mask`` ``(B, Sk)`` is True at padding.
    ``is_causal`` applies the causal mask (bottom-right aligned). Passing the same array as
    query, key and value runs one fused QKV projection. Returns the attention output only
    (torch's ``need_weights=False``); a fully masked query row gives ``out_bias``, not NaN.
    """
    unbatched = _ndim(query) == 2
    if unbatched:
        # add the batch axis once per distinct object, so query is key (is value) stays true and the
        # core still runs the fused projection
        batched: dict[int, Any] = {}
        query, key, value = (batched.setdefault(id(t), _batched(t)) for t in (query, key, value))
        if key_padding_mask is not None:
            key_padding_mask = _batched(key_padding_mask)
    r = _core.multi_head_attention(query, key, value, _int("num_heads", num_heads), in_weight, in_bias, out_weight, out_bias,
                                   attn_mask, key_padding_mask, _flag("is_causal", is_causal))
    return _unbatched(r) if unbatched else r


_Opt = ArrayIn | None  # an optional bias, norm parameter, mask or cache of the fused layers


@overload
def transformer_encoder_layer(x: Tensor, num_heads: int, in_weight: WeightIn, in_bias: _Opt, out_weight: WeightIn,
                              out_bias: _Opt, linear1_weight: WeightIn, linear1_bias: _Opt,
                              linear2_weight: WeightIn, linear2_bias: _Opt, norm1_weight: _Opt, norm1_bias: _Opt,
                              norm2_weight: _Opt, norm2_bias: _Opt, *, activation: str | None = ...,
                              norm_first: bool = ..., eps: float | tuple[float, float] = ..., attn_mask: _Opt = ...,
                              key_padding_mask: _Opt = ..., is_causal: bool = ..., scale: float | None = ...,
                              cu_seqlens: _Opt = ..., k_cache: _Opt = ..., v_cache: _Opt = ...,
                              cache_length: int = ..., out: Tensor | None = ...) -> Tensor: ...
@overload
def transformer_encoder_layer(x: ArrayLike, num_heads: int, in_weight: WeightIn, in_bias: _Opt,
                              out_weight: WeightIn, out_bias: _Opt, linear1_weight: WeightIn, linear1_bias: _Opt,
                              linear2_weight: WeightIn, linear2_bias: _Opt, norm1_weight: _Opt, norm1_bias: _Opt,
                              norm2_weight: _Opt, norm2_bias: _Opt, *, activation: str | None = ...,
                              norm_first: bool = ..., eps: float | tuple[float, float] = ..., attn_mask: _Opt = ...,
                              key_padding_mask: _Opt = ..., is_causal: bool = ..., scale: float | None = ...,
                              cu_seqlens: _Opt = ..., k_cache: _Opt = ..., v_cache: _Opt = ...,
                              cache_length: int = ..., out: FloatArray | None = ...) -> FloatArray: ...
@overload
def transformer_encoder_layer(x: ArrayIn, num_heads: int, in_weight: WeightIn, in_bias: _Opt, out_weight: WeightIn,
                              out_bias: _Opt, linear1_weight: WeightIn, linear1_bias: _Opt,
                              linear2_weight: WeightIn, linear2_bias: _Opt, norm1_weight: _Opt, norm1_bias: _Opt,
                              norm2_weight: _Opt, norm2_bias: _Opt, *, activation: str | None = ...,
                              norm_first: bool = ..., eps: float | tuple[float, float] = ..., attn_mask: _Opt = ...,
                              key_padding_mask: _Opt = ..., is_causal: bool = ..., scale: float | None = ...,
                              cu_seqlens: _Opt = ..., k_cache: _Opt = ..., v_cache: _Opt = ...,
                              cache_length: int = ..., out: Result | None = ...) -> Result: ...
def transformer_encoder_layer(x: ArrayIn, num_heads: int, in_weight: WeightIn, in_bias: _Opt, out_weight: WeightIn,
                              out_bias: _Opt, linear1_weight: WeightIn, linear1_bias: _Opt,
                              linear2_weight: WeightIn, linear2_bias: _Opt, norm1_weight: _Opt, norm1_bias: _Opt,
                              norm2_weight: _Opt, norm2_bias: _Opt, *, activation: str | None = "relu",
                              norm_first: bool = False, eps: float | tuple[float, float] = 1e-5,
                              attn_mask: _Opt = None, key_padding_mask: _Opt = None, is_causal: bool = False,
                              scale: float | None = None, cu_seqlens: _Opt = None, k_cache: _Opt = None,
                              v_cache: _Opt = None, cache_length: int = 0, out: Result | None = None) -> Result:
    """The forward of ``torch.nn.TransformerEncoderLayer(batch_first=True)`` (inference) in one call.

    Post-LN (``norm_first=False``, Vaswani, BERT): ``x1 = norm1(x + self_attn(x))``,
    ``out = norm2(x1 + linear2(act(linear1(x1))))``; pre-LN: ``x1 = x + self_attn(norm1(x))``,
    ``out = x1 + linear2(act(linear1(norm2(x1))))``. The weights are torch's: ``in_weight (3E, E)``
    and ``out_weight (E, E)`` of ``self_attn``, ``linear1_weight (F, E)``, ``linear2_weight (E, F)``
    (each a float32 array or a ``PackedWeight``), their biases, and the norms' ``(E,)`` weights and
    biases (any bias or norm parameter may be None). ``activation``: ``"relu"``, ``"gelu"`` or
    ``"gelu_tanh"``. ``eps``: both norms', or a pair (norm1's, norm2's). ``attn_mask``,
    ``key_padding_mask`` and ``is_causal`` as in ``multi_head_attention``; ``scale`` of the scores
    defaults to ``1/sqrt(E / num_heads)``.

    x is ``(B, S, E)`` or ``(S, E)``; or, with ``cu_seqlens`` (int ``(n + 1,)``: 0, the cumulative
    lengths, T), ``(T, E)`` holding n sequences one after another, each attending within itself --
    a padded batch run without its padding. Returns x's shape; ``out`` may be x itself (in place).

    With a KV cache -- ``k_cache`` and ``v_cache`` float32 ``(B, H, capacity, E / H)``, their first
    ``cache_length`` positions filled -- the layer is a decoder-only (GPT) block: the S new keys
    and values are written at ``[cache_length, cache_length + S)`` and the queries attend to all
    ``cache_length + S`` positions (``is_causal`` aligns bottom-right; masks cover them all). The
    caller counts the S new positions in.
    """
    eps1, eps2 = _norm_eps(eps, 2)
    unbatched = cu_seqlens is None and _ndim(x) == 2
    if unbatched:
        if k_cache is not None:
            raise ValueError(f"x must be (B, S, E) with a KV cache, got shape {_shape(x)}")
        x = _batched(x)
        if key_padding_mask is not None:
            key_padding_mask = _batched(key_padding_mask)
        if out is not None:
            out = _batched(out) if isinstance(out, (np.ndarray, Tensor)) else out
    r = _core.transformer_encoder_layer(x, _int("num_heads", num_heads), in_weight, in_bias, out_weight, out_bias, linear1_weight,
                                        linear1_bias, linear2_weight, linear2_bias, norm1_weight, norm1_bias,
                                        norm2_weight, norm2_bias, activation, _flag("norm_first", norm_first), eps1, eps2,
                                        attn_mask, key_padding_mask, _flag("is_causal", is_causal), cu_seqlens,
                                        None if scale is None else _float("scale", scale), k_cache, v_cache,
                                        _int("cache_length", cache_length), out)
    return _unbatched(r) if unbatched else r


@overload
def transformer_decoder_layer(x: Tensor, memory: _Opt, num_heads: int, self_in_weight: WeightIn, self_in_bias: _Opt,
                              self_out_weight: WeightIn, self_out_bias: _Opt, cross_in_weight: WeightIn,
                              cross_in_bias: _Opt, cross_out_weight: WeightIn, cross_out_bias: _Opt,
                              linear1_weight: WeightIn, linear1_bias: _Opt, linear2_weight: WeightIn,
                              linear2_bias: _Opt, norm1_weight: _Opt, norm1_bias: _Opt, norm2_weight: _Opt,
                              norm2_bias: _Opt, norm3_weight: _Opt, norm3_bias: _Opt, *,
                              activation: str | None = ..., norm_first: bool = ...,
                              eps: float | tuple[float, float, float] = ..., tgt_mask: _Opt = ...,
                              tgt_key_padding_mask: _Opt = ..., memory_mask: _Opt = ...,
                              memory_key_padding_mask: _Opt = ..., tgt_is_causal: bool | None = ...,
                              memory_is_causal: bool | None = ..., k_cache: _Opt = ..., v_cache: _Opt = ...,
                              cache_length: int = ..., memory_k: _Opt = ..., memory_v: _Opt = ...,
                              memory_length: int = ..., out: Tensor | None = ...) -> Tensor: ...
@overload
def transformer_decoder_layer(x: ArrayLike, memory: _Opt, num_heads: int, self_in_weight: WeightIn,
                              self_in_bias: _Opt, self_out_weight: WeightIn, self_out_bias: _Opt,
                              cross_in_weight: WeightIn, cross_in_bias: _Opt, cross_out_weight: WeightIn,
                              cross_out_bias: _Opt, linear1_weight: WeightIn, linear1_bias: _Opt,
                              linear2_weight: WeightIn, linear2_bias: _Opt, norm1_weight: _Opt, norm1_bias: _Opt,
                              norm2_weight: _Opt, norm2_bias: _Opt, norm3_weight: _Opt, norm3_bias: _Opt, *,
                              activation: str | None = ..., norm_first: bool = ...,
                              eps: float | tuple[float, float, float] = ..., tgt_mask: _Opt = ...,
                              tgt_key_padding_mask: _Opt = ..., memory_mask: _Opt = ...,
                              memory_key_padding_mask: _Opt = ..., tgt_is_causal: bool | None = ...,
                              memory_is_causal: bool | None = ..., k_cache: _Opt = ..., v_cache: _Opt = ...,
                              cache_length: int = ..., memory_k: _Opt = ..., memory_v: _Opt = ...,
                              memory_length: int = ..., out: FloatArray | None = ...) -> FloatArray: ...
@overload
def transformer_decoder_layer(x: ArrayIn, memory: _Opt, num_heads: int, self_in_weight: WeightIn,
                              self_in_bias: _Opt, self_out_weight: WeightIn, self_out_bias: _Opt,
                              cross_in_weight: WeightIn, cross_in_bias: _Opt, cross_out_weight: WeightIn,
                              cross_out_bias: _Opt, linear1_weight: WeightIn, linear1_bias: _Opt,
                              linear2_weight: WeightIn, linear2_bias: _Opt, norm1_weight: _Opt, norm1_bias: _Opt,
                              norm2_weight: _Opt, norm2_bias: _Opt, norm3_weight: _Opt, norm3_bias: _Opt, *,
                              activation: str | None = ..., norm_first: bool = ...,
                              eps: float | tuple[float, float, float] = ..., tgt_mask: _Opt = ...,
                              tgt_key_padding_mask: _Opt = ..., memory_mask: _Opt = ...,
                              memory_key_padding_mask: _Opt = ..., tgt_is_causal: bool | None = ...,
                              memory_is_causal: bool | None = ..., k_cache: _Opt = ..., v_cache: _Opt = ...,
                              cache_length: int = ..., memory_k: _Opt = ..., memory_v: _Opt = ...,
                              memory_length: int = ..., out: Result | None = ...) -> Result: ...
def transformer_decoder_layer(x: ArrayIn, memory: _Opt, num_heads: int, self_in_weight: WeightIn,
                              self_in_bias: _Opt, self_out_weight: WeightIn, self_out_bias: _Opt,
                              cross_in_weight: WeightIn, cross_in_bias: _Opt, cross_out_weight: WeightIn,
                              cross_out_bias: _Opt, linear1_weight: WeightIn, linear1_bias: _Opt,
                              linear2_weight: WeightIn, linear2_bias: _Opt, norm1_weight: _Opt, norm1_bias: _Opt,
                              norm2_weight: _Opt, norm2_bias: _Opt, norm3_weight: _Opt, norm3_bias: _Opt, *,
                              activation: str | None = "relu", norm_first: bool = False,
                              eps: float | tuple[float, float, float] = 1e-5, tgt_mask: _Opt = None,
                              tgt_key_padding_mask: _Opt = None, memory_mask: _Opt = None,
                              memory_key_padding_mask: _Opt = None, tgt_is_causal: bool | None = False,
                              memory_is_causal: bool | None = False, k_cache: _Opt = None, v_cache: _Opt = None,
                              cache_length: int = 0, memory_k: _Opt = None, memory_v: _Opt = None,
                              memory_length: int = 0, out: Result | None = None) -> Result:
    """The forward of ``torch.nn.TransformerDecoderLayer(batch_first=True)`` (inference) in one call.

    Post-LN: ``x1 = norm1(x + self_attn(x))``, ``x2 = norm2(x1 + cross_attn(x1, memory))``,
    ``out = norm3(x2 + linear2(act(linear1(x2))))``; pre-LN (``norm_first``): ``x1 = x + self_attn(norm1(x))``,
    ``x2 = x1 + cross_attn(norm2(x1), memory)``, ``out = x2 + linear2(act(linear1(norm3(x2))))``. The
    weights are torch's: ``self_attn``'s and ``multihead_attn``'s packed ``in_proj_weight (3E, E)`` and
    ``out_proj (E, E)`` (arrays, ``PackedWeight``s or, on a GPU, Tensors), ``linear1 (F, E)``,
    ``linear2 (E, F)``, ``norm1..3 (E,)``; any bias or norm parameter may be None. ``eps``: the three
    norms', or a triple. Masks follow ``multi_head_attention`` (bool True = may NOT attend, float added);
    ``tgt_is_causal`` / ``memory_is_causal`` apply the causal mask (bottom-right) to the self- / cross-attention.

    x is ``(B, T, E)`` (or ``(T, E)``), memory ``(B, Sm, E)``. For step-by-step decoding: ``k_cache``/
    ``v_cache`` ``(B, H, capacity, E / H)`` hold the self-attention's first ``cache_length`` positions;
    the T new ones are written after them and attended to with them (the caller counts them in).
    ``memory_k``/``memory_v`` ``(B, H, capacity, E / H)`` keep the cross-attention's keys and values:
    with ``memory_length=0`` they are projected from ``memory`` and written at ``[0, Sm)`` (the caller
    then passes ``memory_length=Sm``); with ``memory_length > 0`` they are used as they are and
    ``memory`` may be None. Returns x's shape; ``out`` may be x itself.
    """
    eps1, eps2, eps3 = _norm_eps(eps, 3)
    unbatched = _ndim(x) == 2
    if unbatched:
        if k_cache is not None or memory_k is not None:
            raise ValueError(f"x must be (B, T, E) with a cache, got shape {_shape(x)}")
        x = _batched(x)
        if memory is not None and _ndim(memory) == 2:
            memory = _batched(memory)
        if tgt_key_padding_mask is not None:
            tgt_key_padding_mask = _batched(tgt_key_padding_mask)
        if memory_key_padding_mask is not None:
            memory_key_padding_mask = _batched(memory_key_padding_mask)
        if out is not None:
            out = _batched(out) if isinstance(out, (np.ndarray, Tensor)) else out
    r = _core.transformer_decoder_layer(x, memory, _int("num_heads", num_heads), self_in_weight, self_in_bias, self_out_weight,
                                        self_out_bias, cross_in_weight, cross_in_bias, cross_out_weight,
                                        cross_out_bias, linear1_weight, linear1_bias, linear2_weight, linear2_bias,
                                        norm1_weight, norm1_bias, norm2_weight, norm2_bias, norm3_weight, norm3_bias,
                                        activation, _flag("norm_first", norm_first), eps1, eps2, eps3, tgt_mask,
                                        tgt_key_padding_mask, memory_mask, memory_key_padding_mask,
                                        _flag("tgt_is_causal", tgt_is_causal, none=True),
                                        _flag("memory_is_causal", memory_is_causal, none=True), k_cache, v_cache,
                                        _int("cache_length", cache_length), memory_k, memory_v,
                                        _int("memory_length", memory_length), out)
    return _unbatched(r) if unbatched else r


@overload
def additive_attention(query: ArrayIn, keys: ArrayIn, values: ArrayIn, w_query: ArrayIn, w_key: ArrayIn, v: ArrayIn,
                       mask: ArrayIn | None = ..., *, return_weights: Literal[True]) -> tuple[Any, Any]: ...
@overload
def additive_attention(query: Tensor, keys: ArrayIn, values: ArrayIn, w_query: ArrayIn, w_key: ArrayIn, v: ArrayIn,
                       mask: ArrayIn | None = ..., return_weights: Literal[False] = ...) -> Tensor: ...
@overload
def additive_attention(query: ArrayLike, keys: ArrayIn, values: ArrayIn, w_query: ArrayIn, w_key: ArrayIn,
                       v: ArrayIn, mask: ArrayIn | None = ...,
                       return_weights: Literal[False] = ...) -> FloatArray: ...
@overload
def additive_attention(query: ArrayIn, keys: ArrayIn, values: ArrayIn, w_query: ArrayIn, w_key: ArrayIn, v: ArrayIn,
                       mask: ArrayIn | None = ..., return_weights: Literal[False] = ...) -> Result: ...
@overload
def additive_attention(query: ArrayIn, keys: ArrayIn, values: ArrayIn, w_query: ArrayIn, w_key: ArrayIn, v: ArrayIn,
                       mask: ArrayIn | None = ..., return_weights: bool = ...) -> Any: ...
def additive_attention(query: ArrayIn, keys: ArrayIn, values: ArrayIn, w_query: ArrayIn, w_key: ArrayIn, v: ArrayIn,
                       mask: ArrayIn | None = None, return_weights: bool = False) -> Any:
    """Additive (Bahdanau, "weighted-sum") attention.

    ``score[b, i, j] = v . tanh(w_query @ query[b, i] + w_key @ keys[b, j])``, softmax over j where
    ``mask`` (bool ``(B, Sk)`` or ``(B, Sq, Sk)``, True = attend) allows, then the weighted sum of
    ``values``. query ``(B, Sq, Dq)``, keys ``(B, Sk, Dk)``, values ``(B, Sk, Dv)``, w_query
    ``(A, Dq)``, w_key ``(A, Dk)``, v ``(A,)``. Returns ``(B, Sq, Dv)``, and the weights
    ``(B, Sq, Sk)`` too when ``return_weights``. A row with no key to attend gives zeros.
    """
    return _core.additive_attention(query, keys, values, w_query, w_key, v, mask,
                                    _flag("return_weights", return_weights))


@overload
def layer_norm(x: ArrayIn, weight: ArrayIn | None = ..., bias: ArrayIn | None = ..., eps: float = ...,
               residual: ArrayIn | None = ..., *, return_sum: Literal[True], out: Result | None = ...) -> tuple[Any, Any]: ...
@overload
def layer_norm(x: Tensor, weight: ArrayIn | None = ..., bias: ArrayIn | None = ..., eps: float = ...,
               residual: ArrayIn | None = ..., *, return_sum: Literal[False] = ...,
               out: Tensor | None = ...) -> Tensor: ...
@overload
def layer_norm(x: ArrayLike, weight: ArrayIn | None = ..., bias: ArrayIn | None = ..., eps: float = ...,
               residual: ArrayIn | None = ..., *, return_sum: Literal[False] = ...,
               out: FloatArray | None = ...) -> FloatArray: ...
@overload
def layer_norm(x: ArrayIn, weight: ArrayIn | None = ..., bias: ArrayIn | None = ..., eps: float = ...,
               residual: ArrayIn | None = ..., *, return_sum: Literal[False] = ...,
               out: Result | None = ...) -> Result: ...
@overload
def layer_norm(x: ArrayIn, weight: ArrayIn | None = ..., bias: ArrayIn | None = ..., eps: float = ...,
               residual: ArrayIn | None = ..., *, return_sum: bool = ..., out: Result | None = ...) -> Any: ...
def layer_norm(x: ArrayIn, weight: ArrayIn | None = None, bias: ArrayIn | None = None, eps: float = 1e-5,
               residual: ArrayIn | None = None, *, return_sum: bool = False, out: Result | None = None) -> Any:
    """LayerNorm over the last axis: ``(s - mean) / sqrt(var + eps) * weight + bias`` with ``s = x (+ residual)``.

    With ``residual`` the sum is normalised in the same pass (a post-LN block's add & norm);
    ``return_sum=True`` also returns the sum ``x + residual`` (a pre-LN block's next residual),
    as ``(normalised, sum)``.
    """
    return _core.layer_norm(x, weight, bias, _float("eps", eps), residual, _flag("return_sum", return_sum), out)


@overload
def softmax(x: Tensor, axis: int = ..., *, out: Tensor | None = ...) -> Tensor: ...
@overload
def softmax(x: ArrayLike, axis: int = ..., *, out: FloatArray | None = ...) -> FloatArray: ...
@overload
def softmax(x: ArrayIn, axis: int = ..., *, out: Result | None = ...) -> Result: ...
def softmax(x: ArrayIn, axis: int = -1, *, out: Result | None = None) -> Result:
    """Softmax along ``axis``. A slice whose every element is -inf gives zeros (as attention does)."""
    return _core.softmax(x, _int("axis", axis), out)


@overload
def gelu(x: Tensor, approximate: str = ..., *, out: Tensor | None = ...) -> Tensor: ...
@overload
def gelu(x: ArrayLike, approximate: str = ..., *, out: FloatArray | None = ...) -> FloatArray: ...
@overload
def gelu(x: ArrayIn, approximate: str = ..., *, out: Result | None = ...) -> Result: ...
def gelu(x: ArrayIn, approximate: str = "none", *, out: Result | None = None) -> Result:
    """GELU: ``x * Phi(x)`` (``approximate="none"``, erf) or the tanh approximation (``"tanh"``)."""
    if not isinstance(approximate, str):
        raise TypeError(f"approximate must be 'none' or 'tanh', got {type(approximate).__name__} {approximate!r}")
    return _core.gelu(x, approximate, out)


@overload
def relu(x: Tensor, *, out: Tensor | None = ...) -> Tensor: ...
@overload
def relu(x: ArrayLike, *, out: FloatArray | None = ...) -> FloatArray: ...
@overload
def relu(x: ArrayIn, *, out: Result | None = ...) -> Result: ...
def relu(x: ArrayIn, *, out: Result | None = None) -> Result:
    """``max(x, 0)``; NaN stays NaN."""
    return _core.relu(x, out)


@overload
def embedding(ids: ArrayIn, table: Tensor) -> Tensor: ...
@overload
def embedding(ids: ArrayIn, table: ArrayLike) -> FloatArray: ...
@overload
def embedding(ids: ArrayIn, table: ArrayIn) -> Result: ...
def embedding(ids: ArrayIn, table: ArrayIn) -> Result:
    """Rows of ``table`` ``(V, D)`` for integer ``ids`` of any shape: ``(*ids.shape, D)``.

    Ids outside ``[0, V)`` (negative ones too) raise ``IndexError``.
    """
    return _core.embedding(ids, table)


def sinusoidal_positions(num_positions: int, dim: int) -> FloatArray:
    """Sinusoidal positional encodings ``(num_positions, dim)``: sin on even columns, cos on odd
    (Vaswani et al. 2017): ``pe[p, 2i] = sin(p / 10000**(2i/dim))``, ``pe[p, 2i+1] = cos(...)``."""
    return _core.sinusoidal_positions(_int("num_positions", num_positions), _int("dim", dim))


@overload
def argmax(x: Tensor) -> Tensor: ...
@overload
def argmax(x: ArrayLike) -> IntArray: ...
@overload
def argmax(x: ArrayIn) -> IntArray | Tensor: ...
def argmax(x: ArrayIn) -> IntArray | Tensor:
    """The index of the largest value along the last axis, int64 of x's shape without that axis (the
    first index on ties; NaN counts as the largest, as ``numpy.argmax``). On a Tensor the result stays
    on its device: greedy decoding on a GPU brings back only the chosen ids."""
    return _core.argmax(x)


# ---- backward (training): the gradient of each forward's input, given the gradient of its output ----


@overload
def gelu_backward(grad_output: Tensor, x: ArrayIn, approximate: str = ...) -> Tensor: ...
@overload
def gelu_backward(grad_output: ArrayLike, x: ArrayIn, approximate: str = ...) -> FloatArray: ...
@overload
def gelu_backward(grad_output: ArrayIn, x: ArrayIn, approximate: str = ...) -> Result: ...
def gelu_backward(grad_output: ArrayIn, x: ArrayIn, approximate: str = "none") -> Result:
    """``grad_output * gelu'(x)``: the gradient of ``gelu(x, approximate)`` with respect to its input x
    (torch's ``gelu_backward``). CPU only so far."""
    if not isinstance(approximate, str):
        raise TypeError(f"approximate must be 'none' or 'tanh', got {type(approximate).__name__} {approximate!r}")
    return _core.gelu_backward(grad_output, x, approximate)


@overload
def relu_backward(grad_output: Tensor, x: ArrayIn) -> Tensor: ...
@overload
def relu_backward(grad_output: ArrayLike, x: ArrayIn) -> FloatArray: ...
@overload
def relu_backward(grad_output: ArrayIn, x: ArrayIn) -> Result: ...
def relu_backward(grad_output: ArrayIn, x: ArrayIn) -> Result:
    """``grad_output`` where ``x > 0``, else 0: the gradient of ``relu(x)``. CPU only so far."""
    return _core.relu_backward(grad_output, x)


@overload
def softmax_backward(grad_output: Tensor, output: ArrayIn, axis: int = ...) -> Tensor: ...
@overload
def softmax_backward(grad_output: ArrayLike, output: ArrayIn, axis: int = ...) -> FloatArray: ...
@overload
def softmax_backward(grad_output: ArrayIn, output: ArrayIn, axis: int = ...) -> Result: ...
def softmax_backward(grad_output: ArrayIn, output: ArrayIn, axis: int = -1) -> Result:
    """``output * (grad_output - sum(grad_output * output, axis))``: the gradient of ``y = softmax(x, axis)``
    with respect to x, from y itself (torch's ``_softmax_backward_data``). The sum is accumulated in float64.
    CPU only so far."""
    return _core.softmax_backward(grad_output, output, _int("axis", axis))


def layer_norm_backward(grad_output: ArrayIn, x: ArrayIn, weight: ArrayIn | None = None, eps: float = 1e-5,
                        residual: ArrayIn | None = None) -> tuple[Any, Any, Any]:
    """The gradients of ``layer_norm(x, weight, bias, eps, residual)``: ``(dx, dweight, dbias)`` --
    dx of x's shape (with a residual, the gradient of the residual too: the norm reads their sum),
    dweight ``(n,)`` (None without a weight) and dbias ``(n,)``. The row statistics are recomputed from
    x exactly as the forward computes them (nothing needs saving); the weight and bias gradients are
    summed over rows in fixed blocks, in order, so they do not depend on the thread count. CPU only so far."""
    return _core.layer_norm_backward(grad_output, x, weight, _float("eps", eps), residual)


@overload
def embedding_backward(grad_output: Tensor, ids: ArrayIn, num_embeddings: int,
                       padding_idx: int | None = ...) -> Tensor: ...
@overload
def embedding_backward(grad_output: ArrayLike, ids: ArrayIn, num_embeddings: int,
                       padding_idx: int | None = ...) -> FloatArray: ...
@overload
def embedding_backward(grad_output: ArrayIn, ids: ArrayIn, num_embeddings: int,
                       padding_idx: int | None = ...) -> Result: ...
def embedding_backward(grad_output: ArrayIn, ids: ArrayIn, num_embeddings: int,
                       padding_idx: int | None = None) -> Result:
    """The gradient of ``embedding(ids, table)`` with respect to the table ``(num_embeddings, D)``, from
    ``grad_output`` ``(*ids.shape, D)``: each row the sum of the gradients of the positions that read it,
    in order (deterministic: one thread owns each row, no atomics); ``padding_idx``'s row gets none, as
    torch's. Ids outside the table raise ``IndexError``. CPU only so far."""
    return _core.embedding_backward(grad_output, ids, _int("num_embeddings", num_embeddings),
                                    None if padding_idx is None else _int("padding_idx", padding_idx))


@overload
def cross_entropy(logits: ArrayIn, labels: ArrayIn, ignore_index: int = ..., label_smoothing: float = ...,
                  reduction: str = ..., *, return_grad: Literal[True],
                  grad_out: FloatArray | None = ...) -> tuple[Any, FloatArray]: ...
@overload
def cross_entropy(logits: ArrayIn, labels: ArrayIn, ignore_index: int = ..., label_smoothing: float = ...,
                  reduction: str = ..., return_grad: Literal[False] = ...) -> Any: ...
def cross_entropy(logits: ArrayIn, labels: ArrayIn, ignore_index: int = -100, label_smoothing: float = 0.0,
                  reduction: str = "mean", return_grad: bool = False, *, grad_out: FloatArray | None = None) -> Any:
    """``torch.nn.functional.cross_entropy(logits, labels, ignore_index=, label_smoothing=, reduction=)``
    over the last axis of logits ``(..., C)`` with integer labels ``(...)``, fused with its gradient: two
    passes over each row of logits (its logsumexp, then the loss and the gradient), never a probability
    matrix. ``reduction`` ``"mean"`` (over the rows whose label is not ``ignore_index``; NaN when there are
    none, as torch) or ``"sum"`` return a float, ``"none"`` the per-row losses (0 at ignored rows). With
    ``return_grad=True``, ``(loss, dlogits)``: the gradient of that float (of the sum of the per-row
    losses for ``"none"``), 0 at ignored rows. Labels outside ``[0, C)`` that are not ``ignore_index``
    raise ``IndexError``. The sum is in float64 in row order (the same whatever the thread count).
    ``grad_out``: a float32 C-contiguous array of logits' shape to write dlogits into (a model's buffer
    reused step after step: a fresh vocabulary-sized array each step costs its page faults). CPU only so far."""
    if not isinstance(reduction, str):
        raise TypeError(f"reduction must be 'mean', 'sum' or 'none', got {type(reduction).__name__}")
    loss, grad = _core.cross_entropy(logits, labels, _int("ignore_index", ignore_index),
                                     _float("label_smoothing", label_smoothing), reduction,
                                     _flag("return_grad", return_grad), grad_out=grad_out)
    return (loss, grad) if return_grad else loss


def linear_backward(grad_output: ArrayIn, x: ArrayIn, weight: ArrayIn, activation: str | None = None,
                    pre_activation: ArrayIn | None = None, *, dweight_out: FloatArray | None = None,
                    dbias_out: FloatArray | None = None) -> tuple[Any, Any, Any]:
    """The gradients of ``y = linear(x, weight, bias, activation)``: ``(dx, dweight, dbias)`` from
    ``grad_output`` (y's shape). With an activation, ``pre_activation`` is ``x @ weight.T + bias`` before it
    (what a training forward keeps), and the activation's derivative is applied first. dx = dZ @ weight and
    dweight = dZ^T @ x run on the packed GEMM (each thread owns whole rows of dweight: no atomics, the same
    sums whatever the thread count); dbias sums dZ's rows in fixed blocks. ``weight`` is the float32 array
    (not a PackedWeight). ``dweight_out`` / ``dbias_out``: float32 C-contiguous arrays of those shapes to
    write the gradients into (overwritten, not added to; a layer passes its parameter's slot of the flat
    gradient buffer, so no copy follows). CPU only so far."""
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be None or a str, got {type(activation).__name__}")
    return _core.linear_backward(grad_output, x, weight, activation, pre_activation, dweight_out=dweight_out,
                                 dbias_out=dbias_out)


def _seed(name: str, value: Any) -> int:
    v = _int(name, value)
    if not 0 <= v < 2 ** 64:
        raise ValueError(f"{name} must be in [0, 2**64), got {v}")
    return v


def _dropout_p(p: Any) -> float:
    p = _float("p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    return p


@overload
def dropout(x: ArrayIn, p: float = ..., training: bool = ..., *, seed: int, offset: int = ...,
            return_mask: Literal[False] = ...) -> FloatArray: ...
@overload
def dropout(x: ArrayIn, p: float = ..., training: bool = ..., *, seed: int, offset: int = ...,
            return_mask: Literal[True]) -> tuple[FloatArray, np.ndarray]: ...
def dropout(x: ArrayIn, p: float = 0.5, training: bool = True, *, seed: int, offset: int = 0,
            return_mask: bool = False) -> Any:
    """``torch.nn.functional.dropout``: each element kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)``, else 0 (``x * mask``, so a dropped NaN stays NaN, as torch's). The mask comes from a
    counter-based generator (Philox4x32-10): element i reads word ``offset + i`` of ``seed``'s stream, so it
    is the same on any thread count and :func:`dropout_backward` recomputes it from ``(seed, offset)`` --
    nothing is stored. Give consecutive calls disjoint word ranges (``offset += x.size``). Not
    ``training``: x itself (as float32). ``return_mask=True``: ``(y, kept)`` with a bool mask."""
    p = _dropout_p(p)
    seed, offset = _seed("seed", seed), _seed("offset", offset)
    if not _flag("training", training):
        y = np.asarray(x, dtype=np.float32)
        return (y, np.ones(y.shape, bool)) if _flag("return_mask", return_mask) else y
    return _core.dropout(x, p, seed, offset, _flag("return_mask", return_mask))


def dropout_backward(grad_output: ArrayIn, p: float, *, seed: int, offset: int = 0) -> FloatArray:
    """The gradient of :func:`dropout` (in training) with the same ``p``, ``seed`` and ``offset``: the mask
    recomputed, ``grad_output * mask / (1 - p)``."""
    return _core.dropout(grad_output, _dropout_p(p), _seed("seed", seed), _seed("offset", offset), False)


def additive_attention_backward(grad_output: ArrayIn, query: ArrayIn, keys: ArrayIn, values: ArrayIn,
                                w_query: ArrayIn, w_key: ArrayIn, v: ArrayIn,
                                mask: ArrayIn | None = None) -> tuple[FloatArray, ...]:
    """The gradients of :func:`additive_attention` with respect to each of its inputs, ``(dquery, dkeys,
    dvalues, dw_query, dw_key, dv)``, from ``grad_output`` ``(B, Sq, Dv)``. The projections and the
    probabilities are recomputed (nothing saved); keys a row gives zero weight add nothing; deterministic (a
    task per batch entry; ``dv`` sums them in order). CPU only so far."""
    return tuple(_core.additive_attention_backward(grad_output, query, keys, values, w_query, w_key, v, mask))
