"""``SentenceEncoder``: sentence-transformers folders (a BERT, pooling, optional normalisation)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._args import flag, is_int
from .._files import read_json
from .bert import BertModel

__all__ = ["SentenceEncoder"]

_MODES = ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_tokens",
          "pooling_mode_mean_sqrt_len_tokens")
_UNSUPPORTED = ("pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


class SentenceEncoder:
    """Sentence embeddings as a sentence-transformers folder describes them.

    ``SentenceEncoder.from_pretrained(dir)`` reads ``modules.json`` (a Transformer module, a Pooling
    module and optionally Normalize), ``sentence_bert_config.json`` (``max_seq_length``) and the
    pooling config; a plain BERT folder without ``modules.json`` gets mean pooling and no
    normalisation. ``encode(sentences)`` returns ``(N, dim)`` float32 in input order (``(dim,)`` for
    one string, as sentence-transformers does).
    """

    def __init__(self, model: BertModel, tokenizer, pooling: dict, normalize: bool, max_seq_length: int):
        self.model, self.tokenizer = model, tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.max_seq_length = int(max_seq_length)

    @classmethod
    def from_pretrained(cls, model_dir, dtype: str | None = "float32") -> "SentenceEncoder":
        """Load a sentence-transformers folder; ``dtype`` is how the weight matrices are packed
        (see ``BertModel.from_pretrained``)."""
        from ..tokenizer import Tokenizer
        d = Path(model_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"model folder not found: {d}")
        pooling = {"pooling_mode_mean_tokens": True}
        normalize = False
        tdir = d
        if (d / "modules.json").is_file():
            modules = read_json(d / "modules.json", expect=list)
            for m in modules:
                if not (isinstance(m, dict) and all(isinstance(m.get(k, ""), str) for k in ("type", "path"))):
                    raise ValueError(f"{d / 'modules.json'}: a module must be an object with string type and path, "
                                     f"got {m!r}"[:300])
                kind = m.get("type", "")
                path = d / m.get("path", "")
                if kind.endswith(".Transformer"):
                    tdir = path
                elif kind.endswith(".Pooling"):
                    pooling = read_json(path / "config.json")
                elif kind.endswith(".Normalize"):
                    normalize = True
                else:
                    raise ValueError(f"sentence-transformers module {kind!r} is not supported")
        st_cfg = read_json(tdir / "sentence_bert_config.json", default={})
        for k in _UNSUPPORTED:
            if pooling.get(k):
                raise ValueError(f"pooling mode {k} is not supported")
        if not any(pooling.get(k) for k in _MODES):
            raise ValueError(f"the pooling config sets no pooling mode: {pooling}")
        model = BertModel.from_pretrained(tdir, dtype=dtype, add_pooling_layer=False)
        tok = Tokenizer.from_pretrained(tdir)
        limit = model.config.max_position_embeddings
        given = st_cfg.get("max_seq_length")
        if given is not None and (not is_int(given) or given < 1):
            raise ValueError(f"{tdir / 'sentence_bert_config.json'}: max_seq_length must be an integer >= 1, "
                             f"got {given!r}")
        max_len = min(int(given or tok.model_max_length or limit), limit)
        return cls(model, tok, pooling, normalize, max_len)

    def to(self, device: str = "cpu", dtype: str | None = None) -> "SentenceEncoder":
        """Run the encoder on ``device`` (``"cuda"``) in ``dtype`` (see ``BertModel.to``); tokenizing and
        pooling stay on the CPU. Returns self."""
        self.model.to(device, dtype)
        return self

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size * sum(bool(self.pooling.get(k)) for k in _MODES)

    def _pool(self, h: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask[:, :, None].astype(np.float32)
        parts = []
        p = self.pooling
        if p.get("pooling_mode_cls_token"):
            parts.append(h[:, 0])
        if p.get("pooling_mode_max_tokens"):
            parts.append(np.where(m > 0, h, -1e9).max(axis=1))
        if p.get("pooling_mode_mean_tokens") or p.get("pooling_mode_mean_sqrt_len_tokens"):
            s = np.einsum("bsh,bs->bh", h, mask.astype(np.float32))
            n = np.maximum(mask.sum(axis=1, keepdims=True).astype(np.float32), 1e-9)
            if p.get("pooling_mode_mean_tokens"):
                parts.append(s / n)
            if p.get("pooling_mode_mean_sqrt_len_tokens"):
                parts.append(s / np.sqrt(n))
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    def encode(self, sentences, batch_size: int = 32, normalize_embeddings: bool | None = None,
               show_progress_bar: bool = False) -> np.ndarray:
        """Embed ``sentences`` (a string or a list of strings). Batches are formed from sentences of
        similar length (longest first) to save padding; the result is in input order.
        ``normalize_embeddings`` overrides the folder's Normalize module; ``show_progress_bar``
        draws a tqdm bar over the batches."""
        single = isinstance(sentences, str)
        if single:
            sentences = [sentences]
        sentences = list(sentences)
        for s in sentences:
            if not isinstance(s, str):
                raise TypeError(f"sentences must be strings, got {type(s).__name__}")
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        normalize = self.normalize if normalize_embeddings is None else flag("normalize_embeddings",
                                                                                  normalize_embeddings)
        ids = [self.tokenizer.encode(s, max_length=self.max_seq_length) for s in sentences]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.empty((len(ids), self.dim), np.float32)
        starts = range(0, len(order), batch_size)
        if flag("show_progress_bar", show_progress_bar):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError("show_progress_bar=True needs tqdm: pip install tqdm") from None
            starts = tqdm(starts, desc="Batches", total=len(starts))
        pad = self.tokenizer.pad_token_id or 0
        for b0 in starts:
            idx = order[b0:b0 + batch_size]
            width = max(len(ids[i]) for i in idx)
            batch = np.full((len(idx), width), pad, np.int64)
            mask = np.zeros((len(idx), width), bool)
            for r, i in enumerate(idx):
                batch[r, :len(ids[i])] = ids[i]
                mask[r, :len(ids[i])] = True
            h = self.model.encode(batch, mask)
            out[idx] = self._pool(h, mask)
        if normalize and len(out):
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out
