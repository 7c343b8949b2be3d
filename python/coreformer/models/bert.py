"""BERT (Devlin et al. 2019) on coreformer's ops: ``BertModel``, ``BertForSequenceClassification``,
``BertForMaskedLM``, loading Hugging Face folders (``config.json`` + ``model.safetensors``).

Parameter names are Hugging Face's (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ...). At load the query, key and value weights of
each layer are packed into one ``(3H, H)`` matrix (and the three modules' weights become views of
it), so a layer runs one fused QKV GEMM; each layer is one core call (``ops.transformer_encoder_layer``).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import nn, ops, tensor
from .._typing import ArrayLike, FloatArray, PathLike
from ._common import (Config, ModelOutput, as_ids, as_mask, check_activation, check_layer_count, check_names,
                      classification_loss, device_tensor, model_loss, read_config, read_weights, scratch, to_device,
                      token_labels, training_forward)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BertConfig", "BertModel", "BertForSequenceClassification", "BertForTokenClassification",
           "BertForMaskedLM"]

class BertConfig(Config):
    """The fields of a Hugging Face BERT ``config.json`` that the forward uses, with its defaults."""

    NAMES: dict = {}  # a field's name in config.json where it differs (DistilBERT's), for messages

    def position_padding_idx(self) -> int | None:
        """The id whose tokens are padding where positions are numbered from the ids, padding_idx + 1
        on (RoBERTa, MPNet); None where they count from 0 (BERT)."""
        return None

    DEFAULTS = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
                    layer_norm_eps=1e-12, pad_token_id=0, position_embedding_type="absolute", num_labels=None,
                    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, classifier_dropout=None)
    SIZES = dict(vocab_size=1, hidden_size=1, num_hidden_layers=0, num_attention_heads=1, intermediate_size=1,
                 max_position_embeddings=1, type_vocab_size=1, num_labels=1)
    REALS = ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob")
    STRS = ("hidden_act", "position_embedding_type")
    IDS = ("pad_token_id",)

    def __init__(self, **kw: Any):
        super().__init__({**self.DEFAULTS, **kw})
        self.check()
        if self.get("num_labels") is None:
            self["num_labels"] = len(self.get("id2label") or {}) or 2
        if self["position_embedding_type"] != "absolute":
            raise ValueError(f"position_embedding_type {self['position_embedding_type']!r} is not supported "
                             "(only 'absolute')")
        if self.get("is_decoder") or self.get("add_cross_attention"):
            raise ValueError("a BERT decoder (is_decoder / add_cross_attention) is not supported: its self-attention "
                             "is causal; only the encoder is")
        check_activation(self, "hidden_act")
        if self["hidden_size"] % self["num_attention_heads"]:
            raise ValueError(f"hidden_size ({self['hidden_size']}) must be divisible by num_attention_heads "
                             f"({self['num_attention_heads']})")


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, c.layer_norm_eps)
        self.dropout = nn.Dropout(c.get("hidden_dropout_prob") or 0.0)  # training only
        self.padding_idx = c.position_padding_idx()
        self.pad_token_id = c.get("pad_token_id")  # transformers' word table has padding_idx there: no gradient

    def position_ids(self, input_ids):
        """BERT's positions, 0..S-1 (``(S,)``); RoBERTa's, as transformers numbers them from the ids
        (``(B, S)``): padding_idx + 1 on for the tokens that are not padding, padding_idx for those
        that are."""
        s, n = input_ids.shape[1], self.position_embeddings.num_embeddings
        if self.padding_idx is None:
            pos = np.arange(s)
        else:
            real = input_ids != self.padding_idx
            pos = np.cumsum(real, axis=1) * real + self.padding_idx
        if pos.size and pos.max() >= n:
            if self.padding_idx is None:
                raise ValueError(f"input_ids has {s} positions but the model has {n} (max_position_embeddings)")
            raise ValueError(f"input_ids has {s} positions but the model takes {self.max_tokens} "
                             f"(max_position_embeddings {n}, numbered after padding_idx {self.padding_idx})")
        return pos

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table holds (RoBERTa's starts after padding_idx)."""
        n = self.position_embeddings.num_embeddings
        return n if self.padding_idx is None else n - self.padding_idx - 1

    def forward(self, input_ids, token_type_ids, on=None):
        """word + position + token type, then LayerNorm. ``on``: None for this module's arrays (a new
        array), or a model's device weights (``BertModel._use_tensors``): the same sum there, a Tensor."""
        pos = self.position_ids(input_ids)
        if on is None:
            x = ops.embedding(input_ids, self.word_embeddings.weight)
            if pos.ndim == 1:
                x += self.position_embeddings.weight[:pos.size]
            else:
                x += ops.embedding(pos, self.position_embeddings.weight)
            if token_type_ids is None:
                x += self.token_type_embeddings.weight[0]
                return self.LayerNorm(x)
            return self.LayerNorm(x, residual=ops.embedding(token_type_ids, self.token_type_embeddings.weight))
        put = lambda a: tensor(np.ascontiguousarray(np.broadcast_to(a, input_ids.shape)), on["device"])  # noqa: E731
        word, position, types, ln = on["embeddings"]
        _, x = ops.layer_norm(ops.embedding(put(input_ids), word), residual=ops.embedding(put(pos), position),
                              return_sum=True)  # word + position (the norm is not used)
        tt = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        gamma, beta, eps = ln
        return ops.layer_norm(x, gamma, beta, eps, residual=ops.embedding(put(tt), types))


    def train_forward(self, input_ids, token_type_ids, typed=True):
        """``typed``: False for a model without token types (DistilBERT), whose zero row stands in and is not
        trained."""
        pos = self.position_ids(input_ids)
        b, s = input_ids.shape
        pos_ids = np.broadcast_to(pos, (b, s))
        tt = np.zeros((b, s), np.int64) if token_type_ids is None else token_type_ids
        x = (ops.embedding(input_ids, self.word_embeddings.weight) + ops.embedding(pos_ids, self.position_embeddings.weight)
             + ops.embedding(tt, self.token_type_embeddings.weight))
        self._save(ids=input_ids, pos=np.ascontiguousarray(pos_ids), tt=tt if typed else None)
        return self.dropout(self.LayerNorm(x))

    def backward(self, grad_output):
        sv = self._take()
        dx = self.LayerNorm.backward(self.dropout.backward(grad_output))
        # the rows transformers' tables keep out of training (padding_idx): the pad token's word row, and
        # RoBERTa's padding position row
        for table, ids, pad in ((self.word_embeddings, sv["ids"], self.pad_token_id),
                                (self.position_embeddings, sv["pos"], self.padding_idx),
                                (self.token_type_embeddings, sv["tt"], None)):
            if ids is None:  # no token types: the placeholder row is not a parameter to learn
                continue
            if pad is not None and not 0 <= pad < table.num_embeddings:
                pad = None
            table._accumulate("weight", ops.embedding_backward(dx, ids, table.num_embeddings, pad))


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        for m in (self.query, self.key, self.value):
            object.__setattr__(m, "_packable", ())  # only the fused matrix is multiplied by
        # on the probabilities, inside the attention kernel (training)
        self.dropout = nn.Dropout(c.get("attention_probs_dropout_prob") or 0.0)
        if nn.initialising():  # placeholders (from_pretrained) are fused after they are loaded
            self._after_load()

    _packable = ("in_proj_weight",)

    def _after_load(self):
        # one (3H, H) matrix; the three weights become views of it so no second copy stays alive (in a
        # flat store they already lie one after another: the matrix is their memory)
        w = nn.joined([self.query.weight, self.key.weight, self.value.weight])  # a view in a flat store
        b = nn.joined([self.query.bias, self.key.bias, self.value.bias])
        h = w.shape[0] // 3
        if not (np.may_share_memory(w, self.query.weight) and np.may_share_memory(b, self.query.bias)):  # copies
            for i, m in enumerate((self.query, self.key, self.value)):
                m._params["weight"], m._params["bias"] = w[i * h:(i + 1) * h], b[i * h:(i + 1) * h]
        object.__setattr__(self, "in_proj_weight", w)
        object.__setattr__(self, "in_proj_bias", b)
        super()._after_load()  # repacks the fused matrix if the weights are packed


class _Dense(nn.Module):  # HF's BertSelfOutput / BertOutput: dense + LayerNorm(dropout(x) + residual)
    def __init__(self, n_in, n_out, eps, dropout=0.0):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps)
        self.dropout = nn.Dropout(dropout)  # training only


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Dense(c.hidden_size, c.hidden_size, c.layer_norm_eps, c.get("hidden_dropout_prob") or 0.0)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size, activation=c.hidden_act)


def run_layer(x, weights, **kw):
    """One post-LN layer as one core call (``ops.transformer_encoder_layer``), with ``_Layer.weights``'s
    weights (arrays or Tensors); ``kw``: out, cu_seqlens, key_padding_mask, attn_mask."""
    heads, act, eps, ws = weights
    return ops.transformer_encoder_layer(x, heads, *ws, activation=act, eps=eps, **kw)


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.num_heads = c.num_attention_heads
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Dense(c.intermediate_size, c.hidden_size, c.layer_norm_eps, c.get("hidden_dropout_prob") or 0.0)

    def forward(self, x, out=None, cu_seqlens=None, attn_mask=None):
        """The whole post-LN layer in one core call (``ops.transformer_encoder_layer``): fused QKV,
        attention, output projection + residual, LayerNorm, FFN with its activation, + residual,
        LayerNorm. ``x (B, S, E)`` without padding, or ``(T, E)`` with ``cu_seqlens``: the batch's
        real tokens one sequence after another, each attending within itself. ``out`` may be x;
        ``attn_mask`` (a float ``(B * heads, S, S)``) is added to the scores (MPNet's position bias)."""
        return run_layer(x, self.weights(), cu_seqlens=cu_seqlens, attn_mask=attn_mask, out=out)

    def weights(self, put=None):
        """What the layer's one core call takes: (heads, activation, eps, the twelve weights). ``put`` None:
        this layer's arrays (packed where packed); else ``put(array)`` each (its Tensor on a device)."""
        sa, ao, it, o = self.attention.self, self.attention.output, self.intermediate.dense, self.output
        if put is None:
            ws = (sa._weight("in_proj_weight"), sa.in_proj_bias, ao.dense._weight("weight"), ao.dense.bias,
                  it._weight("weight"), it.bias, o.dense._weight("weight"), o.dense.bias)
        else:
            ws = tuple(put(w) for w in (sa.in_proj_weight, sa.in_proj_bias, ao.dense.weight, ao.dense.bias,
                                        it.weight, it.bias, o.dense.weight, o.dense.bias))
        norms = (ao.LayerNorm.weight, ao.LayerNorm.bias, o.LayerNorm.weight, o.LayerNorm.bias)
        return (self.num_heads, it.activation, (ao.LayerNorm.eps, o.LayerNorm.eps),
                ws + (norms if put is None else tuple(put(w) for w in norms)))


    def train_forward(self, x, mask=None, cu=None):
        """The post-LN layer as its parts, keeping what backward needs (attention: the row log-sum-exp).
        ``x`` (B, S, E) with ``mask`` None or (B, 1, 1, S) bool, True where a key may be attended; or packed:
        ``x`` (T, E), the batch's real tokens one sequence after another, ``cu`` (B + 1,) where each starts
        (each attends within itself; the padding costs no work)."""
        sa, ao, it, o = self.attention.self, self.attention.output, self.intermediate.dense, self.output
        qkv = ops.linear(x, sa.in_proj_weight, sa.in_proj_bias)
        if cu is None:
            q, k, v = nn.split_heads(qkv, 3, self.num_heads)
            drop = sa.dropout.stream(q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2])
            att, lse = ops.scaled_dot_product_attention_forward(q, k, v, mask, **drop)
            self._save(x=x, q=q, k=k, v=v, o=att, lse=lse, mask=mask, drop=drop)
            merged = nn.merge_heads(att)
        else:
            merged, seqs = self._attend_packed(qkv, cu)
            self._save(x=x, qkv=qkv, seqs=seqs, cu=cu)
        h = ao.LayerNorm(ao.dropout(ao.dense(merged)), residual=x)
        return o.LayerNorm(o.dropout(nn.feed_forward(it, o.dense, h)), residual=h)

    def _heads(self, qkv, r0, r1, which):
        """Sequence rows [r0, r1) of q, k or v (which 0, 1, 2) as (1, H, L, Dh): a strided view."""
        t, h = qkv.shape[0], self.num_heads
        return qkv.reshape(t, 3, h, -1)[r0:r1, which].transpose(1, 0, 2)[None]

    def _attend_packed(self, qkv, cu):
        """Attention of each packed sequence within itself: (T, E) merged heads, and per sequence what the
        backward needs (its output, lse and dropout words)."""
        sa = self.attention.self
        t = qkv.shape[0]
        merged = np.empty((t, qkv.shape[1] // 3), np.float32)
        seqs: list[Any] = []
        for r0, r1 in zip(cu[:-1], cu[1:]):
            if r1 == r0:
                seqs.append(None)
                continue
            q, k, v = (self._heads(qkv, r0, r1, i) for i in range(3))
            drop = sa.dropout.stream(q.shape[1] * (r1 - r0) * (r1 - r0))
            att, lse = ops.scaled_dot_product_attention_forward(q, k, v, **drop)
            merged[r0:r1] = att[0].transpose(1, 0, 2).reshape(r1 - r0, -1)
            seqs.append((att, lse, drop))
        return merged, seqs

    def _attend_packed_backward(self, dmerged, qkv, seqs, cu):
        """d(qkv) (T, 3E) from d(merged heads) (T, E), sequence by sequence."""
        t, h = qkv.shape[0], self.num_heads
        dqkv = np.zeros((t, 3, h, qkv.shape[1] // (3 * h)), np.float32)
        for (r0, r1), saved in zip(zip(cu[:-1], cu[1:]), seqs):
            if saved is None:
                continue
            att, lse, drop = saved
            do = np.ascontiguousarray(dmerged[r0:r1].reshape(r1 - r0, h, -1).transpose(1, 0, 2))[None]
            q, k, v = (self._heads(qkv, r0, r1, i) for i in range(3))
            grads = ops.scaled_dot_product_attention_backward(do, q, k, v, att, lse, **drop)
            for i, g in enumerate(grads):
                dqkv[r0:r1, i] = g[0].transpose(1, 0, 2)
        return dqkv.reshape(t, -1)

    def backward(self, grad_output):
        sa, ao, it, o = self.attention.self, self.attention.output, self.intermediate.dense, self.output
        sv = self._take()
        dsum2 = o.LayerNorm.backward(grad_output)  # of h + ffn(h)
        dh = dsum2 + it.backward(o.dense.backward(o.dropout.backward(dsum2)))
        dsum1 = ao.LayerNorm.backward(dh)  # of x + attention(x)
        dmerged = ao.dense.backward(ao.dropout.backward(dsum1))
        if "cu" in sv:
            dqkv = self._attend_packed_backward(dmerged, sv["qkv"], sv["seqs"], sv["cu"])
        else:
            do = nn.split_heads(dmerged, 1, self.num_heads)[0]
            dq, dk, dv = ops.scaled_dot_product_attention_backward(do, sv["q"], sv["k"], sv["v"], sv["o"], sv["lse"],
                                                                   sv["mask"], **sv["drop"])
            dqkv = nn.packed_qkv_grad(dq, dk, dv)
        qkv = (sa.query, sa.key, sa.value)  # their gradients straight into the flat buffer, when they may
        dx, dw, db = ops.linear_backward(dqkv, sv["x"], sa.in_proj_weight,
                                         dweight_out=nn.grad_slot([m._param("weight") for m in qkv]),
                                         dbias_out=nn.grad_slot([m._param("bias") for m in qkv]))
        e = dw.shape[0] // 3
        for i, m in enumerate((sa.query, sa.key, sa.value)):  # views of the fused matrix, by torch's names
            m._accumulate("weight", dw[i * e:(i + 1) * e])
            m._accumulate("bias", db[i * e:(i + 1) * e])
        return dsum1 + dx


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, hidden):
        y = np.tanh(self.dense(np.ascontiguousarray(hidden[:, 0])))
        if self.training:
            self._save(y=y, shape=hidden.shape)
        return y

    def backward(self, grad_output):
        sv = self._take()
        dh = np.zeros(sv["shape"], np.float32)
        dh[:, 0] = self.dense.backward(np.asarray(grad_output, np.float32) * (1 - sv["y"] * sv["y"]))
        return dh


def _config_of(cfg, cls=None):
    cls = cls or BertConfig
    return cfg if isinstance(cfg, cls) else cls(**cfg)


class BertModel(nn.Module):
    """The BERT encoder: embeddings, ``num_hidden_layers`` post-LN layers, pooler.

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` takes ``(B, S)`` integer arrays
    (``attention_mask`` 1 for tokens, 0 for padding, as in transformers) and returns
    ``.last_hidden_state (B, S, H)`` and ``.pooler_output (B, H)``. With padding, the layers run on
    the real tokens only (the padding costs no GEMM work) and padding positions of
    ``last_hidden_state`` are zeros (transformers fills them with values nothing should read).
    """

    base_prefix = "bert."        # where a task model's checkpoint keeps the encoder
    model_types: tuple[str, ...] = ("bert",)     # config.json's model_type
    config_class = BertConfig
    is_task = False             # a task model holds the encoder as an attribute (bert / roberta)
    layer_path = "encoder.layer"  # where the checkpoint keeps the layers
    layer_names: dict = {}      # another family's names inside a layer -> BERT's, mapped at load
    token_types = True          # False: the checkpoint has none (a zero row stands in; token_type_ids ignored)

    def __init__(self, config: BertConfig | dict[str, Any], add_pooling_layer: bool = True):
        super().__init__()
        c = _config_of(config, self.config_class)
        object.__setattr__(self, "config", c)
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        self.pooler = _Pooler(c) if add_pooling_layer else None

    @classmethod
    def from_pretrained(cls, model_dir: PathLike, dtype: str | None = "float32", **kw: Any) -> Self:
        """Load a Hugging Face BERT folder (``config.json`` + ``model.safetensors``; the weights are
        mapped, not copied, except the fused QKV matrices). The weight matrices are then packed once
        for the GEMM (``pack_weights(dtype)``): ``"float32"``, ``"bfloat16"``, ``"int8"``, or ``None``
        to keep plain arrays."""
        cfg = read_config(model_dir, cls.model_types, cls.__name__)
        config = cls.config_class(**cfg)
        weights = read_weights(model_dir)
        layers = rf"(?:{re.escape(cls.base_prefix)})?{re.escape(cls.layer_path)}\.(\d+)\."
        check_layer_count(weights, layers, config.num_hidden_layers,
                          cls.config_class.NAMES.get("num_hidden_layers", "num_hidden_layers"), str(model_dir))
        with nn.uninitialised():  # every parameter is loaded by _load_hf (check_names)
            model = cls(config, **kw)
        model._load_hf(weights, where=str(model_dir))
        if dtype is not None:
            model.pack_weights(dtype)
        return model

    @property
    def _encoder_model(self) -> "BertModel":
        """The encoder: the model itself, or a task model's ``bert`` / ``roberta``."""
        return getattr(self, self.base_prefix[:-1]) if self.is_task else self

    @property
    def max_tokens(self) -> int:
        """The longest sequence the model takes: max_position_embeddings (RoBERTa: less its padding_idx + 1)."""
        return self._encoder_model.embeddings.max_tokens

    def _as_bert_names(self, weights: dict) -> dict:
        """Another family's checkpoint under BERT's names (``layer_names`` inside each layer of
        ``layer_path``), with a zero token-type row where it has no token types."""
        names = self.layer_names
        inside = "|".join(map(re.escape, names))
        pattern = re.compile(rf"^(.*){re.escape(self.layer_path)}\.(\d+)\.({inside})(.*)$")
        out = {}
        for k, v in weights.items():
            m = pattern.match(k) if names else None
            if m:
                k = f"{m.group(1)}encoder.layer.{m.group(2)}.{names[m.group(3)]}{m.group(4)}"
            out[k] = v
            if not self.token_types and k.endswith("embeddings.word_embeddings.weight"):  # one row, adding nothing
                out[k.replace("word_embeddings", "token_type_embeddings")] = np.zeros((1, v.shape[1]), np.float32)
        return out

    def _load_hf(self, weights: dict, where: str):
        if self.layer_names or not self.token_types:
            weights = self._as_bert_names(weights)
        own = set(self.state_dict())
        base, pfx = not self.is_task, self.base_prefix
        heads = ("cls.", "classifier.", "qa_outputs.", "lm_head.", "pre_classifier.", "vocab_transform.",
                 "vocab_layer_norm.", "vocab_projector.")
        mapped = {}
        for k, v in weights.items():
            # a task model's checkpoint keeps the encoder under "bert." (or "roberta."), a base model's without
            if base and k.startswith(pfx):
                k = k[len(pfx):]
            elif not base and not k.startswith((pfx,) + heads):
                k = pfx + k
            mapped[k] = v
        self._tie(mapped)
        # buffers, and heads or a pooler this model does not have, may be in the file
        candidates = heads + ("pooler.", pfx + "pooler.", "embeddings.position_ids", pfx + "embeddings.position_ids",
                              "embeddings.token_type_ids", pfx + "embeddings.token_type_ids")
        ignorable = tuple(p for p in candidates if not any(k.startswith(p) for k in own))
        pooler = {k for k in own if k.startswith("pooler.")}  # a base model's own (task models: "bert.pooler.")
        hint = ""
        if pooler and not pooler & mapped.keys():
            hint = ("the checkpoint has no pooler, as one saved from a masked-LM or classification model: "
                    "from_pretrained(..., add_pooling_layer=False) loads it without")
        check_names(mapped, own, ignorable, where=where, hint=hint)
        self.load_state_dict({k: v for k, v in mapped.items() if k in own})

    def _tie(self, mapped):
        pass

    # ---- on a device: the weights as coreformer.Tensors, each layer one fused call ----

    def to(self, device: str = "cpu", dtype: str | None = None) -> Self:
        """Run the encoder on ``device`` (``"cuda"``, ``"cuda:N"``) with its weights there in ``dtype``
        (``"float32"`` by default, ``"float16"``, ``"bfloat16"``; arithmetic is float32 inside every
        kernel). ``"cpu"`` goes back to the CPU's numpy path. The outputs stay numpy arrays (float32):
        ids go to the device, hidden states come back. Returns the model."""
        return to_device(self, device, dtype)

    def _use_tensors(self, device: str, dtype: str):
        """The weights as Tensors on ``device`` (views of the flat store's one copy there), for ``_encode``
        (also usable with ``device="cpu"``: the same forward on CPU Tensors, how the tests check the device
        path without a GPU)."""
        t = lambda a: device_tensor(a, device, dtype)
        e = self.embeddings
        dev = {"device": device, "dtype": dtype,
               "embeddings": (t(e.word_embeddings.weight), t(e.position_embeddings.weight),
                              t(e.token_type_embeddings.weight), (t(e.LayerNorm.weight), t(e.LayerNorm.bias),
                                                                  e.LayerNorm.eps)),
               "layers": [layer.weights(t) for layer in self.encoder.layer]}
        object.__setattr__(self, "_device", dev)
        return self

    def _encode(self, ids, mask, tt):
        """The inference encoder, one for both homes of the weights: on the CPU an array (padding
        positions zero; a padded batch runs packed, see ``_encode_packed``), on the model's device a
        Tensor (B, S, H) whose padding rows are left as computed (``_host`` zeroes them)."""
        d = self.__dict__.get("_device")
        x = self.embeddings(ids, tt, d)  # a new array or Tensor: the layers run in place in it
        if d is None:
            if mask is not None and not mask.all():
                return self._encode_packed(x, mask)
            for layer in self.encoder.layer:
                layer(x, out=x)
            return x
        kpm = None if mask is None or mask.all() else tensor(~mask.astype(bool), d["device"])
        for weights in d["layers"]:
            run_layer(x, weights, key_padding_mask=kpm, out=x)
        return x

    @staticmethod
    def _host(x, mask):
        """A device result back as a float32 array, padding positions zeroed (as the CPU path gives)."""
        out = x.numpy().astype(np.float32, copy=False)
        if mask is not None and not mask.all():
            out[~mask.astype(bool)] = 0.0
        return out

    def _checked_inputs(self, input_ids, attention_mask, token_type_ids):
        ids = as_ids(input_ids, "input_ids", vocab=self.config.vocab_size)
        if ids.shape[1] == 0:
            raise ValueError(f"input_ids must hold at least one token per row, got shape {ids.shape}")
        mask = as_mask(attention_mask, ids.shape, "attention_mask")
        if not self.token_types:  # the Tokenizer hands them out for every model; this one has none
            token_type_ids = None
        tt = None if token_type_ids is None else as_ids(token_type_ids, "token_type_ids",
                                                         vocab=self.config.type_vocab_size, what="token types")
        if tt is not None and tt.shape != ids.shape:
            raise ValueError(f"token_type_ids must have the shape of input_ids {ids.shape}, got {tt.shape}")
        return ids, mask, tt

    def encode(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, token_type_ids: ArrayLike | None = None) -> FloatArray:
        ids, mask, tt = self._checked_inputs(input_ids, attention_mask, token_type_ids)
        if self.training:
            return self._train_encode(ids, mask, tt)
        x = self._encode(ids, mask, tt)
        return self._host(x, mask) if self.__dict__.get("_device") else x

    def _train_encode(self, ids, mask, tt):
        """Training, each layer keeping what its backward needs. A padded batch runs packed, as inference
        does: after the embeddings (each token keeps its position in the padded row), the real tokens of
        every sequence are gathered into one (T, E) matrix and the layers run on those rows only, each
        sequence attending within itself -- padding costs no work. Padding positions of the result are
        zeros, as in eval."""
        if self.__dict__.get("_device"):
            raise ValueError(f"{type(self).__name__}: training runs on the CPU (call .to('cpu'))")
        x = self.embeddings.train_forward(ids, tt, self.token_types)
        if mask is None or mask.all():
            for layer in self.encoder.layer:
                x = nn.layer_forward(layer, layer.train_forward, x)
            self._save(real=None)
            return x
        real = mask.astype(bool)
        cu = np.concatenate([[0], np.cumsum(real.sum(1))]).astype(np.int64)
        h = x[real]  # (T, E): row by row, each row's real tokens in order
        for layer in self.encoder.layer:
            h = nn.layer_forward(layer, layer.train_forward, h, None, cu)
        out = np.zeros_like(x)
        out[real] = h
        self._save(real=real)
        return out

    def _encoder_backward(self, grad_hidden):
        """From the gradient of last_hidden_state: every encoder parameter's gradient."""
        real = self._take()["real"]
        dx = np.array(grad_hidden, np.float32) if real is None else np.ascontiguousarray(
            np.asarray(grad_hidden, np.float32)[real])  # padding outputs are zeros: no gradient
        for layer in reversed(list(self.encoder.layer)):
            dx = nn.layer_backward(layer, dx)
        if real is not None:
            full = np.zeros(real.shape + dx.shape[-1:], np.float32)
            full[real] = dx
            dx = full
        self.embeddings.backward(dx)

    def _encode_packed(self, x, mask):
        """A padded batch: the real tokens of every sequence are gathered into one ``(T, E)`` matrix
        (after the embeddings, so each keeps its position) and the layers run on those rows only
        (``cu_seqlens`` marks where each sequence starts) -- exactly what attending over the
        non-padding keys computes, without the padding's share of the GEMMs. Padding positions of
        the result are zeros."""
        b, s, e = x.shape
        keep = np.flatnonzero(mask.reshape(-1))
        cu_seqlens = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
        xt = x.reshape(b * s, e)[keep]
        for layer in self.encoder.layer:
            layer(xt, out=xt, cu_seqlens=cu_seqlens)
        out = np.zeros_like(x)
        out.reshape(b * s, e)[keep] = xt
        return out

    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, token_type_ids: ArrayLike | None = None) -> ModelOutput:
        x = self.encode(input_ids, attention_mask, token_type_ids)
        pooled = self.pooler(x) if self.pooler is not None else None
        return ModelOutput(last_hidden_state=x, pooler_output=pooled)


if TYPE_CHECKING:  # a mixin over BertModel (or a subclass): the type checker reads it as one
    _ClassifierBase = BertModel
else:
    _ClassifierBase = object


class _Classifier(_ClassifierBase):
    """A task model: the encoder under its checkpoint prefix (``bert``, ``roberta``, ...) and a small
    head built by ``_head(config)``; the encoder alone goes to a device, the head stays on the CPU."""

    is_task = True
    encoder_pooler = False  # whether the encoder keeps its pooler (BERT's sequence classifier reads it)

    def __init__(self, config: BertConfig | dict[str, Any]):
        nn.Module.__init__(self)
        c = _config_of(config, self.config_class)
        object.__setattr__(self, "config", c)
        encoder = next(k for k in type(self).__mro__ if issubclass(k, BertModel) and not k.is_task)
        setattr(self, self.base_prefix[:-1], encoder(c, add_pooling_layer=self.encoder_pooler))
        self._head(c)

    def to(self, device: str = "cpu", dtype: str | None = None) -> Self:
        """The encoder on ``device`` (see ``BertModel.to``); the small head stays on the CPU."""
        self._encoder_model.to(device, dtype)
        return self

    def _use_tensors(self, device, dtype):
        self._encoder_model._use_tensors(device, dtype)
        return self


class BertForSequenceClassification(_Classifier, BertModel):
    """BERT with the classification head: ``.logits (B, num_labels)`` from the pooled output."""

    encoder_pooler = True

    def _head(self, c):
        self.dropout = nn.Dropout(c.get("classifier_dropout") or c.get("hidden_dropout_prob") or 0.0)  # training only
        self.classifier = nn.Linear(c.hidden_size, c.num_labels)

    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, token_type_ids: ArrayLike | None = None,
                labels: ArrayLike | None = None) -> ModelOutput:
        """``labels``: class ids (B,) (cross-entropy), floats (B,) with ``num_labels == 1`` (MSE regression)
        or (B, num_labels) floats (multi-label BCE), as transformers' ``problem_type``; ``.loss`` then, with
        a ``backward()`` after a training-mode forward."""
        enc = self._encoder_model
        with training_forward(self) as generation:
            out = enc(input_ids, attention_mask, token_type_ids)
            out.logits = self.classifier(self.dropout(out.pooler_output))
            if labels is not None:
                loss, dlogits = classification_loss(self.config, out.logits, labels)

                def backward() -> None:
                    assert enc.pooler is not None  # a sequence classifier's encoder keeps its pooler
                    enc._encoder_backward(enc.pooler.backward(self.dropout.backward(self.classifier.backward(dlogits))))
                out.loss = model_loss(self, loss, backward, generation)
        return out


class _TokenClassifier(_Classifier):
    """A linear classifier on every token: ``.logits (B, S, num_labels)`` (padding positions: the bias)."""

    def _head(self, c):
        self.dropout = nn.Dropout(c.get("classifier_dropout") or c.get("hidden_dropout_prob") or 0.0)  # training only
        self.classifier = nn.Linear(c.hidden_size, c.num_labels)

    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, token_type_ids: ArrayLike | None = None,
                labels: ArrayLike | None = None) -> ModelOutput:
        """``labels`` (B, S) class ids, -100 ignored (padding, continuation pieces): ``.loss``, the mean
        cross-entropy over the counted tokens, with a ``backward()`` after a training-mode forward."""
        enc = self._encoder_model
        with training_forward(self) as generation:
            h = enc(input_ids, attention_mask, token_type_ids).last_hidden_state
            out = ModelOutput(last_hidden_state=h, logits=self.classifier(self.dropout(h)))
            if labels is not None:
                lab = token_labels(labels, h.shape[:2], self.config.num_labels)
                loss, dlogits = ops.cross_entropy(out.logits, lab, return_grad=True)

                def backward() -> None:
                    enc._encoder_backward(self.dropout.backward(self.classifier.backward(dlogits)))
                out.loss = model_loss(self, loss, backward, generation)
        return out


class BertForTokenClassification(_TokenClassifier, BertModel):
    """BERT with a classifier on every token (named entities, part of speech): ``.logits (B, S, num_labels)``."""


class _PredictionHead(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(c.hidden_size, c.hidden_size, activation=c.hidden_act)
        self.transform.LayerNorm = nn.LayerNorm(c.hidden_size, c.layer_norm_eps)
        self.bias = nn._filled((c.vocab_size,), 0.0)


class BertForMaskedLM(BertModel):
    """BERT with the masked-LM head (its decoder tied to the word embeddings): ``.logits (B, S, V)``."""

    is_task = True

    def __init__(self, config: BertConfig | dict[str, Any]):
        nn.Module.__init__(self)
        c = _config_of(config)
        object.__setattr__(self, "config", c)
        self.bert = BertModel(c, add_pooling_layer=False)
        self.cls = nn.Module()
        self.cls.predictions = _PredictionHead(c)

    def _tie(self, mapped):
        mapped.pop("cls.predictions.decoder.weight", None)  # tied to the word embeddings
        mapped.pop("cls.predictions.decoder.bias", None)    # the same tensor as cls.predictions.bias

    _packable = ("decoder_weight",)

    @property
    def decoder_weight(self) -> FloatArray:
        """The MLM decoder's weight: the word embeddings (tied)."""
        return self.bert.embeddings.word_embeddings.weight

    def to(self, device: str = "cpu", dtype: str | None = None) -> Self:
        """The encoder and the MLM head (its vocabulary-sized product included) on ``device`` (see
        ``BertModel.to``)."""
        self.bert.to(device, dtype)
        return self._mlm_tensors() if self.bert.__dict__.get("_device") else self

    def _use_tensors(self, device, dtype):
        self.bert._use_tensors(device, dtype)
        return self._mlm_tensors()

    def _mlm_tensors(self):
        d = self.bert.__dict__["_device"]
        t = lambda a: device_tensor(a, d["device"], d["dtype"])
        tr = self.cls.predictions.transform
        d["mlm"] = {"dense_w": t(tr.dense.weight), "dense_b": t(tr.dense.bias), "act": tr.dense.activation,
                    "ln": (t(tr.LayerNorm.weight), t(tr.LayerNorm.bias), tr.LayerNorm.eps),
                    "bias": t(self.cls.predictions.bias)}
        return self

    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, token_type_ids: ArrayLike | None = None,
                labels: ArrayLike | None = None) -> ModelOutput:
        """``labels`` (B, S): the original ids at masked positions, -100 elsewhere (as transformers'
        ``DataCollatorForLanguageModeling`` makes them): ``.loss``, with a ``backward()`` after a training-mode
        forward."""
        d = self.bert.__dict__.get("_device")
        if d and not self.training:
            if labels is not None:
                raise ValueError("BertForMaskedLM: labels are for the CPU path in this version (call .to('cpu'))")
            ids, mask, tt = self.bert._checked_inputs(input_ids, attention_mask, token_type_ids)
            x = self.bert._encode(ids, mask, tt)
            m = d["mlm"]
            h = ops.layer_norm(ops.linear(x, m["dense_w"], m["dense_b"], m["act"]), *m["ln"])
            logits = ops.linear(h, d["embeddings"][0], m["bias"])
            return ModelOutput(last_hidden_state=self.bert._host(x, mask),
                               logits=logits.numpy().astype(np.float32, copy=False))
        with training_forward(self) as generation:
            x = self.bert.encode(input_ids, attention_mask, token_type_ids)
            t = self.cls.predictions.transform
            h = t.LayerNorm(t.dense(x))
            w = self.decoder_weight if self.training else self._weight("decoder_weight")
            logits = ops.linear(h, w, self.cls.predictions.bias)
            out = ModelOutput(last_hidden_state=x, logits=logits)
            if labels is not None:
                lab = token_labels(labels, x.shape[:2], self.config.vocab_size, "the vocabulary")
                loss, dlogits = ops.cross_entropy(logits, lab, return_grad=True,
                                                  grad_out=scratch(self, "dlogits", logits.shape))

                def backward() -> None:
                    words = self.bert.embeddings.word_embeddings
                    dh, dw, db = ops.linear_backward(dlogits, h, w,
                                                     dweight_out=nn.grad_slot([words._param("weight")]))
                    words._accumulate("weight", dw)  # the decoder is tied to them
                    self.cls.predictions._accumulate("bias", db)
                    self.bert._encoder_backward(t.dense.backward(t.LayerNorm.backward(dh)))
                out.loss = model_loss(self, loss, backward, generation)
        return out
