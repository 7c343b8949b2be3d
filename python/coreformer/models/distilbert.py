"""DistilBERT (Sanh et al. 2019): BERT's post-LN layers without token types or a pooler, under other
names. ``DistilBertModel`` and ``DistilBertForSequenceClassification`` load Hugging Face folders (the
names are mapped to BERT's at load, so ``state_dict()`` uses BERT's, with a zero token-type row);
``SentenceEncoder`` takes sentence-transformers folders built on them (the msmarco-distilbert kind).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from .. import nn
from .._typing import ArrayLike
from ._common import ModelOutput, classification_loss, model_loss, training_forward
from .bert import BertConfig, BertModel, _Classifier, _TokenClassifier

__all__ = ["DistilBertConfig", "DistilBertModel", "DistilBertForSequenceClassification",
           "DistilBertForTokenClassification"]


class DistilBertConfig(BertConfig):
    """DistilBERT's ``config.json`` (``dim``, ``n_layers``, ``n_heads``, ``hidden_dim``, ``activation``)
    read into BERT's fields; its norms' eps is 1e-12 and it has no token types."""

    RENAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
               "hidden_dim": "intermediate_size", "activation": "hidden_act", "dropout": "hidden_dropout_prob",
               "attention_dropout": "attention_probs_dropout_prob"}
    DEFAULTS = dict(BertConfig.DEFAULTS, type_vocab_size=1, layer_norm_eps=1e-12)

    NAMES = {bert: name for name, bert in RENAMES.items()}

    def __init__(self, **kw: Any):
        kw = {self.RENAMES.get(k, k): v for k, v in kw.items() if k not in ("type_vocab_size", "layer_norm_eps")}
        try:
            super().__init__(**kw)
        except ValueError as e:  # name the fields as the file does
            msg = str(e)
            for bert, name in self.NAMES.items():
                msg = re.sub(rf"\b{bert}\b", name, msg)
            raise ValueError(msg) from None


class DistilBertModel(BertModel):
    """The DistilBERT encoder (as ``BertModel``, without a pooler: ``.last_hidden_state``). Token types
    do not exist here: ``token_type_ids`` is accepted and ignored, as the Tokenizer returns them."""

    base_prefix = "distilbert."
    model_types = ("distilbert",)
    config_class = DistilBertConfig
    layer_path = "transformer.layer"
    layer_names = {"attention.q_lin.": "attention.self.query.", "attention.k_lin.": "attention.self.key.",
                   "attention.v_lin.": "attention.self.value.", "attention.out_lin.": "attention.output.dense.",
                   "sa_layer_norm.": "attention.output.LayerNorm.", "ffn.lin1.": "intermediate.dense.",
                   "ffn.lin2.": "output.dense.", "output_layer_norm.": "output.LayerNorm."}
    token_types = False

    def __init__(self, config: DistilBertConfig | dict[str, Any], add_pooling_layer: bool = False):
        if add_pooling_layer:
            raise ValueError("DistilBERT has no pooler (add_pooling_layer must be False)")
        super().__init__(config, add_pooling_layer=False)


class DistilBertForSequenceClassification(_Classifier, DistilBertModel):
    """DistilBERT with its classification head (pre_classifier, ReLU, classifier on the first token):
    ``.logits (B, num_labels)``."""

    def _head(self, c):
        self.pre_classifier = nn.Linear(c.hidden_size, c.hidden_size, activation="relu")
        self.classifier = nn.Linear(c.hidden_size, c.num_labels)
        p = c.get("seq_classif_dropout")
        self.dropout = nn.Dropout(0.2 if p is None else p)  # training only

    def forward(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, token_type_ids: ArrayLike | None = None,
                labels: ArrayLike | None = None) -> ModelOutput:
        """``labels`` as ``BertForSequenceClassification``'s: ``.loss`` with a backward in training mode."""
        enc = self.distilbert
        with training_forward(self) as generation:
            h = enc(input_ids, attention_mask).last_hidden_state
            logits = self.classifier(self.dropout(self.pre_classifier(np.ascontiguousarray(h[:, 0]))))
            out = ModelOutput(last_hidden_state=h, logits=logits)
            if labels is not None:
                loss, dlogits = classification_loss(self.config, logits, labels)

                def backward() -> None:
                    dh = np.zeros(h.shape, np.float32)
                    dh[:, 0] = self.pre_classifier.backward(self.dropout.backward(self.classifier.backward(dlogits)))
                    enc._encoder_backward(dh)
                out.loss = model_loss(self, loss, backward, generation)
        return out


class DistilBertForTokenClassification(_TokenClassifier, DistilBertModel):
    """DistilBERT with a classifier on every token: ``.logits (B, S, num_labels)``."""
