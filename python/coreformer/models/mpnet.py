"""MPNet (Song et al. 2020), the encoder of all-mpnet-base-v2: BERT's post-LN layers under other names,
RoBERTa's positions (numbered from the ids after id 1) and a relative position bias shared by every layer
(T5's log-spaced buckets of key minus query position, one learned value per head and bucket), added to the
scores. ``MPNetModel`` loads Hugging Face folders (its names are mapped to BERT's at load); ``SentenceEncoder``
takes sentence-transformers folders built on it. CPU only: the device path has no place for the bias yet.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import nn
from .._typing import ArrayLike, FloatArray
from .bert import BertConfig, BertModel

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MPNetConfig", "MPNetModel"]


class MPNetConfig(BertConfig):
    """The fields of a Hugging Face MPNet ``config.json`` that the forward uses, with its defaults."""

    DEFAULTS = dict(BertConfig.DEFAULTS, vocab_size=30527, max_position_embeddings=514, type_vocab_size=1,
                    pad_token_id=1, relative_attention_num_buckets=32)
    SIZES = dict(BertConfig.SIZES, relative_attention_num_buckets=2)

    def __init__(self, **kw: Any):
        super().__init__(**{k: v for k, v in kw.items() if k != "type_vocab_size"})

    def position_padding_idx(self) -> int | None:
        return 1  # transformers' MPNetEmbeddings: 1, whatever pad_token_id says


def relative_position_bucket(relative, num_buckets=32, max_distance=128):
    """transformers' MPNetEncoder.relative_position_bucket (T5's, bidirectional), in float32 as it is
    computed there, so the buckets agree exactly (checked for |relative| <= 5000)."""
    n = -relative
    half = num_buckets // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    large = exact + (np.log(np.maximum(n, 1).astype(np.float32) / np.float32(exact))
                     / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)).astype(np.int64)
    return ret + np.where(n < exact, n, np.minimum(large, half - 1))


class MPNetModel(BertModel):
    """The MPNet encoder (as ``BertModel``: ``.last_hidden_state``, ``.pooler_output``). Each sequence
    runs on its own tokens (no padding computed), its relative position bias ``(heads, L, L)`` added to
    every layer's scores."""

    base_prefix = "mpnet."
    model_types = ("mpnet",)
    config_class = MPNetConfig
    layer_names = {"attention.attn.q.": "attention.self.query.", "attention.attn.k.": "attention.self.key.",
                   "attention.attn.v.": "attention.self.value.", "attention.attn.o.": "attention.output.dense.",
                   "attention.LayerNorm.": "attention.output.LayerNorm."}
    token_types = False

    def __init__(self, config: MPNetConfig | dict[str, Any], add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer)
        c = self.config
        self.encoder.relative_attention_bias = nn.Embedding(c.relative_attention_num_buckets, c.num_attention_heads)

    def to(self, device: str = "cpu", dtype: str | None = None) -> Self:
        if str(device) != "cpu":
            raise ValueError("MPNet runs on the CPU only (the GPU path has no relative position bias yet)")
        return self

    def _use_tensors(self, device, dtype):
        raise ValueError("MPNet runs on the CPU only (the GPU path has no relative position bias yet)")

    def position_bias(self, positions: np.ndarray) -> FloatArray:
        """The ``(heads, L, L)`` bias between tokens at ``positions`` (their columns in the padded row)."""
        table = self.encoder.relative_attention_bias.weight
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], table.shape[0])
        return np.ascontiguousarray(table[buckets].transpose(2, 0, 1))

    def encode(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, token_type_ids: ArrayLike | None = None) -> FloatArray:
        ids, mask, _ = self._checked_inputs(input_ids, attention_mask, token_type_ids)
        x = self.embeddings(ids, None)  # positions from the whole padded rows, as transformers numbers them
        real = np.ones(ids.shape, bool) if mask is None else mask.astype(bool)
        out = np.zeros_like(x)
        for b in range(ids.shape[0]):
            keep = np.flatnonzero(real[b])
            if keep.size == 0:
                continue
            h = np.ascontiguousarray(x[b, keep])[None]
            bias = self.position_bias(keep)
            for layer in self.encoder.layer:
                layer(h, out=h, attn_mask=bias)
            out[b, keep] = h[0]
        return out
