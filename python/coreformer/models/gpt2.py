"""GPT-2 (Radford et al. 2019) on coreformer's ops: ``GPT2LMHeadModel`` with a preallocated KV cache
and ``generate`` (greedy, sampling, left-padded batches, EOS, streaming).

Parameter names are Hugging Face's (``transformer.h.0.attn.c_attn.weight``, ...), but the Conv1D
weights, stored ``(in, out)`` in the checkpoint, are held in PyTorch's Linear layout ``(out, in)``:
they are transposed once, at load. The LM head is tied to ``transformer.wte``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import nn, ops, tensor
from .._args import int_arg
from .._files import read_json
from .._typing import ArrayIn, ArrayLike, FloatArray, IntArray, PathLike
from ._common import (Config, Loss, ModelOutput, as_ids, as_mask, check_activation, check_layer_count, check_names,
                      device_tensor, is_token_ids, model_loss, read_config, read_weights, scratch, shifted_labels,
                      to_device, training_forward)
from .generation import NextToken, Streamer, check_generation_args, check_streamer, eos_set, stream_end, stream_put

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["GPT2Config", "GPT2LMHeadModel", "GPT2Cache"]

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class GPT2Config(Config):
    DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                    activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=50256,
                    eos_token_id=50256, pad_token_id=None, tie_word_embeddings=True, scale_attn_weights=True,
                    scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, resid_pdrop=0.1,
                    embd_pdrop=0.1, attn_pdrop=0.1)
    SIZES = dict(vocab_size=1, n_positions=1, n_embd=1, n_layer=0, n_head=1, n_inner=1)
    REALS = ("layer_norm_epsilon", "resid_pdrop", "embd_pdrop", "attn_pdrop")
    STRS = ("activation_function",)
    FLAGS = ("tie_word_embeddings", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn")
    IDS = ("bos_token_id", "eos_token_id", "pad_token_id")

    def __init__(self, **kw: Any):
        super().__init__({**self.DEFAULTS, **kw})
        self.check()
        if self["n_inner"] is None:
            self["n_inner"] = 4 * self["n_embd"]
        if self["n_embd"] % self["n_head"]:
            raise ValueError(f"n_embd ({self['n_embd']}) must be divisible by n_head ({self['n_head']})")
        check_activation(self, "activation_function")
        if self.get("add_cross_attention"):
            raise ValueError("config: add_cross_attention=True (GPT-2 with cross-attention, an encoder-decoder's "
                             "decoder) is not supported")
        # reorder_and_upcast_attn: transformers scales before the product and computes in float32, which
        # a float32 model does anyway (a rounding apart), so it is accepted


class GPT2Cache:
    """Per-layer keys and values ``(B, H, capacity, Dh)``, preallocated for the prompt and every new
    token, appended in place (on the model's device when it runs on one)."""

    def __init__(self, config: GPT2Config, batch: int, capacity: int, device: str | None = None,
                 dtype: str = "float32"):
        dh = config.n_embd // config.n_head
        self.layers: list[Any]
        if device is None:
            self.layers = [nn.KVCache(batch, config.n_head, dh, capacity) for _ in range(config.n_layer)]
        else:
            self.layers = [nn.DeviceKVCache(batch, config.n_head, dh, capacity, device, dtype)
                           for _ in range(config.n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    def __repr__(self) -> str:
        first = self.layers[0]
        where = f", device={first.device!r}, dtype={first.dtype!r}" if isinstance(first, nn.DeviceKVCache) else ""
        return (f"GPT2Cache(layers={len(self.layers)}, batch={first.k.shape[0]}, length={self.length}, "
                f"capacity={first.capacity}{where})")


class _Attention(nn.Module):
    def __init__(self, c: GPT2Config, index: int):
        super().__init__()
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)
        self.n_head, self.head_dim = c.n_head, c.n_embd // c.n_head
        scale = 1.0 / np.sqrt(self.head_dim) if c.scale_attn_weights else 1.0
        self.scale = scale / (index + 1) if c.scale_attn_by_inverse_layer_idx else scale
        self.attn_dropout = nn.Dropout(c.attn_pdrop)  # on the probabilities, inside the attention kernel (training)


class _MLP(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, c.n_inner, activation=c.activation_function)
        self.c_proj = nn.Linear(c.n_inner, c.n_embd)


def run_block(x, weights, key_padding_mask, cache):
    """One block in place in x (an array or a Tensor, with its weights as ``_Block.weights`` gives them).
    With ``cache`` (``nn.KVCache`` or ``nn.DeviceKVCache``) the new keys and values join it and the queries
    attend to every cached position; ``key_padding_mask`` (True = padding) covers them all."""
    heads, scale, act, eps, ws = weights
    s = x.shape[1]
    kv = {}
    if cache is not None:
        cache.reserve(s)
        kv = dict(k_cache=cache.k, v_cache=cache.v, cache_length=cache.length)
    ops.transformer_encoder_layer(x, heads, *ws, activation=act, norm_first=True, eps=eps,
                                  key_padding_mask=key_padding_mask, is_causal=True, scale=scale, out=x, **kv)
    if cache is not None:
        cache.length += s
    return x


class _Block(nn.Module):
    def __init__(self, c: GPT2Config, index: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, c.layer_norm_epsilon)
        self.attn = _Attention(c, index)
        self.ln_2 = nn.LayerNorm(c.n_embd, c.layer_norm_epsilon)
        self.mlp = _MLP(c)
        self.resid_dropout = nn.Dropout(c.resid_pdrop)  # after each projection back to the stream (training)
        self.mlp_dropout = nn.Dropout(c.resid_pdrop)

    def weights(self, put=None):
        """What the block's one core call multiplies and adds: (heads, scale, activation, eps, the twelve
        weights). ``put`` None: this block's arrays (packed where packed); else ``put(array)`` each (its
        Tensor on a device)."""
        a, m = self.attn, self.mlp
        ws = ((a.c_attn._weight("weight"), a.c_attn.bias, a.c_proj._weight("weight"), a.c_proj.bias,
               m.c_fc._weight("weight"), m.c_fc.bias, m.c_proj._weight("weight"), m.c_proj.bias)
              if put is None else
              tuple(put(w) for w in (a.c_attn.weight, a.c_attn.bias, a.c_proj.weight, a.c_proj.bias, m.c_fc.weight,
                                     m.c_fc.bias, m.c_proj.weight, m.c_proj.bias)))
        norms = (self.ln_1.weight, self.ln_1.bias, self.ln_2.weight, self.ln_2.bias)
        return (a.n_head, a.scale, m.c_fc.activation, (self.ln_1.eps, self.ln_2.eps),
                ws + (norms if put is None else tuple(put(w) for w in norms)))

    def forward(self, x, key_padding_mask, cache):
        """The pre-LN block, x + attn(ln_1(x)) then + mlp(ln_2(x)), as one core call
        (``ops.transformer_encoder_layer`` with ``norm_first`` and causal attention), in place in x."""
        return run_block(x, self.weights(), key_padding_mask, cache)

    def train_forward(self, x: FloatArray, key_padding_mask: Any) -> FloatArray:
        """The block in training mode, as its parts (each keeping what its backward needs; attention keeps
        the log-sum-exp of each row, not the probabilities)."""
        a, m = self.attn, self.mlp
        q, k, v = nn.split_heads(a.c_attn(self.ln_1(x)), 3, a.n_head)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        drop = a.attn_dropout.stream(q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2])
        o, lse = ops.scaled_dot_product_attention_forward(q, k, v, mask, True, a.scale, **drop)
        self._save(q=q, k=k, v=v, o=o, lse=lse, mask=mask, drop=drop)
        x1 = x + self.resid_dropout(a.c_proj(nn.merge_heads(o)))
        return x1 + self.mlp_dropout(nn.feed_forward(m.c_fc, m.c_proj, self.ln_2(x1)))

    def backward(self, grad_output: ArrayIn) -> FloatArray:
        a, m = self.attn, self.mlp
        sv = self._take()
        grad_output = np.asarray(grad_output, np.float32)
        dx1 = grad_output + self.ln_2.backward(m.c_fc.backward(m.c_proj.backward(self.mlp_dropout.backward(grad_output))))
        do = nn.split_heads(a.c_proj.backward(self.resid_dropout.backward(dx1)), 1, a.n_head)[0]
        dq, dk, dv = ops.scaled_dot_product_attention_backward(do, sv["q"], sv["k"], sv["v"], sv["o"], sv["lse"],
                                                               sv["mask"], True, a.scale, **sv["drop"])
        return dx1 + self.ln_1.backward(a.c_attn.backward(nn.packed_qkv_grad(dq, dk, dv)))


class _Transformer(nn.Module):
    def __init__(self, c: GPT2Config):
        super().__init__()
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.n_positions, c.n_embd)
        self.h = nn.ModuleList(_Block(c, i) for i in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, c.layer_norm_epsilon)
        self.drop = nn.Dropout(c.embd_pdrop)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with its (tied) LM head.

    ``model(input_ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep=0)`` returns
    ``.logits (B, S, V)`` (only the last ``logits_to_keep`` positions when > 0). ``attention_mask``
    (1 = token, 0 = padding) covers the cached positions and the new ones; position ids default to
    its running count, as transformers' ``generate`` makes them, so a left-padded row sees what it
    would see alone.
    """

    def __init__(self, config: GPT2Config | dict[str, Any]):
        super().__init__()
        c = config if isinstance(config, GPT2Config) else GPT2Config(**config)
        object.__setattr__(self, "config", c)
        object.__setattr__(self, "generation_defaults", {})
        self.transformer = _Transformer(c)
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.n_embd, c.vocab_size, bias=False)

    _packable = ("tied_head_weight",)

    @property
    def tied_head_weight(self) -> FloatArray | None:
        """The LM head's weight when it is tied to ``transformer.wte`` (else ``None``)."""
        return self.transformer.wte.weight if self.lm_head is None else None

    @classmethod
    def from_pretrained(cls, model_dir: PathLike, dtype: str | None = "float32") -> Self:
        """Load a Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors``).

        The weight matrices are packed once for the GEMM (``pack_weights(dtype)``): ``"float32"``,
        ``"bfloat16"`` (half the bytes per decoded token), ``"int8"`` (a quarter; one scale per
        output row), or ``None`` for plain arrays; products and sums stay float32. Packed, the
        Conv1D weights are packed straight from the mapped file and the parameters stay transposed
        views of it (no second float32 copy); unpacked, they are transposed once into new arrays.
        Everything else is mapped, not copied."""
        cfg = read_config(model_dir, ("gpt2",), cls.__name__)
        config = GPT2Config(**cfg)
        weights = read_weights(model_dir)
        check_layer_count(weights, r"(?:transformer\.)?h\.(\d+)\.", config.n_layer, "n_layer", str(model_dir))
        with nn.uninitialised():  # every parameter is loaded below (check_names)
            model = cls(config)
        sd = {}
        for k, v in weights.items():
            if not k.startswith(("transformer.", "lm_head.")):
                k = "transformer." + k  # a GPT2Model checkpoint
            if k.endswith(_CONV1D):
                if v.ndim != 2:
                    raise ValueError(f"tensor {k} must be 2-D, got shape {v.shape}")
                v = v.T  # torch's (out, in)
            sd[k] = v
        if model.lm_head is None:
            sd.pop("lm_head.weight", None)
        ignorable = tuple(f"transformer.h.{i}.attn.{b}" for i in range(model.config.n_layer)
                          for b in ("bias", "masked_bias"))
        check_names(sd, set(model.state_dict()), ignorable, where=str(model_dir))
        own = model.state_dict()
        # packed, the forward never reads the parameters: the transposed views need no copy
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, contiguous=dtype is None)
        if dtype is not None:
            model.pack_weights(dtype)
        gen_path = Path(model_dir) / "generation_config.json"
        gen = read_json(gen_path, default={})
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if not is_token_ids(gen.get(key), key):
                many = ", a list of them," if key == "eos_token_id" else ""
                raise ValueError(f"{gen_path}: {key} must be a token id (an integer >= 0){many} or null, "
                                 f"got {gen[key]!r}"[:500])
        model.generation_defaults.update(gen)
        return model

    def new_cache(self, batch: int, capacity: int) -> GPT2Cache:
        d = self.__dict__.get("_device")
        if d:
            return GPT2Cache(self.config, batch, capacity, d["device"], d["dtype"])
        return GPT2Cache(self.config, batch, capacity)

    # ---- on a device: the weights and the KV cache as coreformer.Tensors ----

    def to(self, device: str = "cpu", dtype: str | None = None) -> Self:
        """Run on ``device`` (``"cuda"``, ``"cuda:N"``) with the weights there in ``dtype`` (``"float32"``
        by default, ``"float16"``, ``"bfloat16"``; float32 arithmetic in every kernel). The KV cache is
        made on the device and grows in place there; each step sends the new ids up and brings the last
        position's logits back (where the sampler runs). ``"cpu"`` goes back to the CPU path. Returns
        the model."""
        return to_device(self, device, dtype)

    def _use_tensors(self, device: str, dtype: str):
        """The weights as Tensors on ``device`` (views of the flat store's one copy there), for ``_logits``
        (also usable with ``device="cpu"``: the same forward on CPU Tensors, how the tests check the
        device path without a GPU)."""
        t = lambda a: device_tensor(a, device, dtype)
        tr = self.transformer
        d: dict[str, Any] = {"device": device, "dtype": dtype, "wte": t(tr.wte.weight), "wpe": t(tr.wpe.weight),
                             "ln_f": (t(tr.ln_f.weight), t(tr.ln_f.bias), tr.ln_f.eps),
                             "blocks": [blk.weights(t) for blk in tr.h]}
        d["head"] = d["wte"] if self.lm_head is None else t(self.lm_head.weight)
        object.__setattr__(self, "_device", d)
        return self

    def _logits(self, ids, mask, position_ids, cache, logits_to_keep):
        """The inference forward, one for both homes of the weights: numpy arrays on the CPU (packed where
        packed) or Tensors on the model's device (``.to``), where the hidden states stay until the logits
        (a Tensor then; an array on the CPU)."""
        d = self.__dict__.get("_device")
        t = self.transformer
        if d is None:
            put = lambda a: a  # noqa: E731
            wte, wpe, ln_f = t.wte.weight, t.wpe.weight, (t.ln_f.weight, t.ln_f.bias, t.ln_f.eps)
            blocks = [blk.weights() for blk in t.h]
            head = self._weight("tied_head_weight") if self.lm_head is None else self.lm_head._weight("weight")
        else:
            put = lambda a: tensor(a, d["device"])  # noqa: E731
            wte, wpe, ln_f, blocks, head = d["wte"], d["wpe"], d["ln_f"], d["blocks"], d["head"]
        b, s = ids.shape
        x = ops.embedding(put(ids), wte)
        pos = ops.embedding(put(np.ascontiguousarray(position_ids)), wpe)
        if d is None:
            x += pos
        else:
            _, x = ops.layer_norm(x, residual=pos, return_sum=True)  # x + pos on the device (the norm unused)
        padding = None if mask is None or mask.all() else put(~mask)
        for i, weights in enumerate(blocks):  # in place in x, a new array
            run_block(x, weights, padding, None if cache is None else cache.layers[i])
        if logits_to_keep and logits_to_keep < s:
            k = logits_to_keep
            if d is None:
                x = x[:, -k:]
            else:  # the last rows of each sequence, gathered there (an embedding lookup is a row gather)
                rows = (np.arange(b)[:, None] * s + np.arange(s - k, s)[None]).reshape(-1)
                x = ops.embedding(put(rows), x.reshape(b * s, -1)).reshape(b, k, -1)
        return ops.linear(ops.layer_norm(x, *ln_f), head)

    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None,
                position_ids: ArrayLike | None = None, cache: GPT2Cache | None = None,
                logits_to_keep: int = 0, labels: ArrayLike | None = None) -> ModelOutput:
        """``labels`` (B, S) as transformers takes them (shifted inside: position t is scored against label
        t + 1; -100 ignored): ``.loss`` is the mean cross-entropy over the counted tokens, a float whose
        ``backward()`` fills every parameter's ``.grad`` after a training-mode forward (``model.train()``)."""
        ids, mask, position_ids = self._inputs(input_ids, attention_mask, position_ids, cache)
        if labels is not None:
            labels = shifted_labels(labels, ids.shape, self.config.vocab_size)
        if self.training:
            if cache is not None or self.__dict__.get("_device"):
                raise ValueError("GPT2LMHeadModel: training runs on the CPU without a KV cache (call .to('cpu'), "
                                 "pass no cache)")
            with training_forward(self) as generation:
                return self._train_forward(ids, mask, position_ids, labels, generation)
        logits = self._logits(ids, mask, position_ids, cache, logits_to_keep)
        if self.__dict__.get("_device"):
            logits = logits.numpy().astype(np.float32, copy=False)
        if labels is None:
            return ModelOutput(logits=logits, cache=cache)
        if logits_to_keep:
            raise ValueError("labels need the logits of every position (logits_to_keep=0)")
        return ModelOutput(loss=Loss(ops.cross_entropy(logits, labels)), logits=logits, cache=cache)

    def _train_forward(self, ids: Any, mask: Any, position_ids: Any, labels: Any, generation: Any) -> ModelOutput:
        t = self.transformer
        x = t.drop(t.wte(ids) + t.wpe(position_ids))
        padding = None if mask is None or mask.all() else ~mask
        for block in t.h:
            x = nn.layer_forward(block, block.train_forward, x, padding)
        h = t.ln_f(x)
        w = t.wte.weight if self.lm_head is None else self.lm_head.weight
        logits = ops.linear(h, w)
        if labels is None:
            return ModelOutput(logits=logits)
        loss, dlogits = ops.cross_entropy(logits, labels, return_grad=True,
                                          grad_out=scratch(self, "dlogits", logits.shape))

        def backward() -> None:
            head = t.wte if self.lm_head is None else self.lm_head
            dh, dw, _ = ops.linear_backward(dlogits, h, w, dweight_out=nn.grad_slot([head._param("weight")]))
            if self.lm_head is None:
                t.wte._accumulate("weight", dw)  # the tied head's gradient joins the embedding's
            else:
                self.lm_head._accumulate("weight", dw)
            dx = t.ln_f.backward(dh)
            for block in reversed(list(t.h)):
                dx = nn.layer_backward(block, dx)
            dx = t.drop.backward(dx)
            t.wpe.backward(dx)
            t.wte.backward(dx)
        return ModelOutput(loss=model_loss(self, loss, backward, generation), logits=logits)

    def _inputs(self, input_ids, attention_mask, position_ids, cache):
        """The checked ids, the mask over cached + new positions, and the position ids (by default the
        running count of real tokens, as transformers' generate makes them)."""
        c = self.config
        ids = as_ids(input_ids, "input_ids", vocab=self.config.vocab_size)
        b, s = ids.shape
        past = cache.length if cache is not None else 0
        mask = as_mask(attention_mask, (b, past + s), "attention_mask")
        if position_ids is None:
            if mask is None:
                position_ids = np.arange(past, past + s)[None]
            else:
                position_ids = np.where(mask, np.cumsum(mask, axis=1) - 1, 0)[:, past:]
        position_ids = np.broadcast_to(np.asarray(position_ids, np.int64), (b, s))
        if s and position_ids.max(initial=0) >= c.n_positions:
            raise ValueError(f"a sequence of {position_ids.max() + 1} positions is longer than the model's "
                             f"{c.n_positions} (n_positions)")
        return ids, mask, position_ids

    def generate(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float = 1.0,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None, seed: int | None = None,
                 streamer: Streamer | None = None) -> IntArray:
        """Continue each prompt by up to ``max_new_tokens`` tokens; returns ``(B, prompt + new)`` ids.

        Greedy by default (the most probable token at every step); ``do_sample=True`` draws from the
        distribution after ``repetition_penalty``, ``temperature``, ``top_k`` and ``top_p``,
        reproducibly for a given ``seed``. Prompts of different lengths are padded, with
        ``attention_mask`` marking the tokens: each row gives what it would give alone. Left padding
        is used as it is; right padding (the Tokenizer's default) is moved to the left first, so the
        returned prompt columns are left-padded and the new tokens start at column ``p`` either way.
        A row stops at ``eos_token_id`` (default: the model's) and is filled with ``pad_token_id``
        (default: the EOS) until every row has stopped. ``streamer`` receives each step's ``(B,)`` ids: a callable,
        or an object with ``put(ids)`` and ``end()`` such as ``TokenStreamer``.
        """
        check_generation_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
        check_streamer(streamer)
        ids = as_ids(input_ids, "input_ids", vocab=self.config.vocab_size)
        b, p = ids.shape
        if p == 0:
            raise ValueError("input_ids must hold at least one token per row")
        mask = as_mask(attention_mask, (b, p), "attention_mask")
        mask = np.ones((b, p), bool) if mask is None else mask
        if not mask.any(axis=1).all():
            raise ValueError("attention_mask has a row with no tokens")
        need = int(mask.sum(axis=1).max()) + max_new_tokens
        if need > self.config.n_positions:
            raise ValueError(f"prompt plus max_new_tokens needs {need} positions; the model has "
                             f"{self.config.n_positions} (n_positions)")
        defaults = {**{k: self.config.get(k) for k in ("eos_token_id", "pad_token_id")}, **self.generation_defaults}
        eos = eos_set(eos_token_id, defaults.get("eos_token_id"))
        pad = pad_token_id if pad_token_id is not None else defaults.get("pad_token_id")
        pad = int_arg("pad_token_id", pad if pad is not None else (eos[0] if eos.size else 0))
        # The model reads `fill` where a row has no token (moved padding, a stopped row); the ids
        # returned and streamed show `pad`, which need not be a token (-1, or a tiny model's config
        # EOS outside its vocabulary).
        fill = pad if 0 <= pad < self.config.vocab_size else 0
        pick = NextToken(do_sample, temperature, top_k, top_p, repetition_penalty, seed)
        if not (mask[:, -1].all() and (np.diff(mask.astype(np.int8), axis=1) >= 0).all()):
            # Right-padded (the Tokenizer's default) or with holes: each row's tokens move to the right
            # end, as left padding has them, so every row continues from its own last token. The new
            # tokens still start at column p.
            n_tok = mask.sum(axis=1)
            packed = np.full_like(ids, fill)
            for i in range(b):
                packed[i, p - n_tok[i]:] = ids[i, mask[i]]
            ids, mask = packed, np.arange(p)[None, :] >= (p - n_tok)[:, None]
            moved = ~mask
        else:
            moved = None

        seqs = np.empty((b, p + max_new_tokens), np.int64)  # what the model reads; `pad` goes in at the end
        seqs[:, :p] = ids
        stopped = np.zeros(b, np.int64)  # the column from which a row shows `pad` (0: it has not stopped)
        full_mask = np.ones((b, p + max_new_tokens), bool)
        full_mask[:, :p] = mask
        n = p
        try:
            if max_new_tokens:
                cache = self.new_cache(b, p + max_new_tokens)
                # greedy on a device picks there: only the ids come back, not (B, V) logits
                on_device = bool(self.__dict__.get("_device")) and not pick.do_sample and pick.repetition_penalty == 1.0

                def next_ids(step_ids, upto):
                    if on_device:
                        step_ids, m, pos = self._inputs(step_ids, full_mask[:, :upto], None, cache)
                        logits = self._logits(step_ids, m, pos, cache, 1)
                        return ops.argmax(logits.reshape(b, -1)).numpy()
                    logits = self(step_ids, full_mask[:, :upto], cache=cache, logits_to_keep=1).logits[:, -1]
                    return pick(logits, seqs[:, :upto], full_mask[:, :upto])

                nxt = next_ids(ids, p)
                done = np.zeros(b, bool)
                for step in range(max_new_tokens):
                    nxt = np.where(done, fill, nxt)
                    seqs[:, n] = nxt
                    n += 1
                    stream_put(streamer, np.where(done, pad, nxt))
                    stop = ~done & np.isin(nxt, eos)
                    stopped[stop] = n
                    done |= stop
                    if done.all() or step + 1 == max_new_tokens:
                        break
                    nxt = next_ids(nxt[:, None], n)
        finally:
            stream_end(streamer)
        out = seqs[:, :n].copy()
        if moved is not None:
            out[:, :p][moved] = pad
        out[(stopped[:, None] > 0) & (np.arange(n)[None, :] >= stopped[:, None])] = pad
        return out
