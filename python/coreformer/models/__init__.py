"""Models on coreformer's ops: BERT, RoBERTa, DistilBERT, MPNet, GPT-2, the encoder-decoder Transformer
and sentence encoders.

Each ``from_pretrained(local_dir)`` reads a Hugging Face folder (``config.json`` and
``model.safetensors``, mapped rather than copied); nothing is downloaded.
"""
from ._common import ModelOutput
from .bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification, BertModel
from .distilbert import (DistilBertConfig, DistilBertForSequenceClassification, DistilBertForTokenClassification,
                         DistilBertModel)
from .generation import TokenStreamer
from .gpt2 import GPT2Cache, GPT2Config, GPT2LMHeadModel
from .mpnet import MPNetConfig, MPNetModel
from .roberta import RobertaConfig, RobertaForSequenceClassification, RobertaForTokenClassification, RobertaModel
from .sentence import SentenceEncoder
from .transformer import Transformer

__all__ = ["ModelOutput", "BertConfig", "BertModel", "BertForSequenceClassification", "BertForTokenClassification",
           "BertForMaskedLM", "RobertaConfig", "RobertaModel", "RobertaForSequenceClassification",
           "RobertaForTokenClassification", "DistilBertConfig", "DistilBertModel",
           "DistilBertForSequenceClassification", "DistilBertForTokenClassification", "MPNetConfig", "MPNetModel",
           "GPT2Config", "GPT2LMHeadModel",
           "GPT2Cache", "TokenStreamer", "SentenceEncoder", "Transformer"]
