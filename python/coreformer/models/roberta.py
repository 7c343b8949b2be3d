"""RoBERTa (Liu et al. 2019; also XLM-RoBERTa and CamemBERT checkpoints, the same network): BERT's
encoder with positions numbered from the ids (``padding_idx + 1`` on, as transformers numbers them) and
its own classification head. ``RobertaModel`` and ``RobertaForSequenceClassification`` load Hugging Face
folders; ``SentenceEncoder`` takes sentence-transformers folders built on them (all-distilroberta-v1).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import nn
from .._args import is_int
from .._typing import ArrayLike
from ._common import ModelOutput, classification_loss, model_loss, training_forward
from .bert import BertConfig, BertModel, _Classifier, _TokenClassifier

__all__ = ["RobertaConfig", "RobertaModel", "RobertaForSequenceClassification", "RobertaForTokenClassification"]


class RobertaConfig(BertConfig):
    """The fields of a Hugging Face RoBERTa ``config.json`` that the forward uses, with its defaults."""

    DEFAULTS = dict(BertConfig.DEFAULTS, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1)

    def position_padding_idx(self) -> int | None:
        return self["pad_token_id"]

    def __init__(self, **kw: Any):
        super().__init__(**kw)
        p = self["pad_token_id"]
        if not (is_int(p) and 0 <= p < self["max_position_embeddings"] - 1):
            raise ValueError(f"config: pad_token_id must be a position below max_position_embeddings - 1 "
                             f"({self['max_position_embeddings'] - 1}): RoBERTa numbers positions after it, "
                             f"got {self['pad_token_id']!r}")


class RobertaModel(BertModel):
    """The RoBERTa encoder (as ``BertModel``: ``.last_hidden_state``, ``.pooler_output``). Positions
    count from ``pad_token_id + 1`` over the tokens that are not ``pad_token_id``, so pad with that id
    (the Tokenizer does); token types are all 0."""

    base_prefix = "roberta."
    model_types = ("roberta", "xlm-roberta", "camembert")
    config_class = RobertaConfig


class _ClassificationHead(nn.Module):  # transformers' RobertaClassificationHead: on the <s> token
    def __init__(self, c: RobertaConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.out_proj = nn.Linear(c.hidden_size, c.num_labels)
        p = c.get("classifier_dropout") or c.get("hidden_dropout_prob") or 0.0
        self.dropout = nn.Dropout(p)   # before dense and before out_proj, as transformers (training only)
        self.dropout2 = nn.Dropout(p)

    def forward(self, hidden):
        t = np.tanh(self.dense(self.dropout(np.ascontiguousarray(hidden[:, 0]))))
        if self.training:
            self._save(t=t, shape=hidden.shape)
        return self.out_proj(self.dropout2(t))

    def backward(self, grad_output):
        sv = self._take()
        dt = self.dropout2.backward(self.out_proj.backward(grad_output))
        dh = np.zeros(sv["shape"], np.float32)
        dh[:, 0] = self.dropout.backward(self.dense.backward(dt * (1 - sv["t"] * sv["t"])))
        return dh


class RobertaForSequenceClassification(_Classifier, RobertaModel):
    """RoBERTa with its classification head (dense, tanh, out_proj on the first token):
    ``.logits (B, num_labels)``."""

    def _head(self, c):
        self.classifier = _ClassificationHead(c)

    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, token_type_ids: ArrayLike | None = None,
                labels: ArrayLike | None = None) -> ModelOutput:
        """``labels`` as ``BertForSequenceClassification``'s: ``.loss`` with a backward in training mode."""
        enc = self.roberta
        with training_forward(self) as generation:
            out = enc(input_ids, attention_mask, token_type_ids)
            result = ModelOutput(last_hidden_state=out.last_hidden_state, logits=self.classifier(out.last_hidden_state))
            if labels is not None:
                loss, dlogits = classification_loss(self.config, result.logits, labels)

                def backward() -> None:
                    enc._encoder_backward(self.classifier.backward(dlogits))
                result.loss = model_loss(self, loss, backward, generation)
        return result


class RobertaForTokenClassification(_TokenClassifier, RobertaModel):
    """RoBERTa with a classifier on every token: ``.logits (B, S, num_labels)``."""
