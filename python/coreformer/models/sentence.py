"""``SentenceEncoder``: sentence-transformers folders (a BERT, RoBERTa, DistilBERT or MPNet; pooling;
optional normalisation)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._args import flag, is_int
from .._files import read_json
from .._typing import PathLike
from ._common import class_for
from .bert import BertModel
from .distilbert import DistilBertModel
from .mpnet import MPNetModel
from .roberta import RobertaModel

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

_ENCODERS = (BertModel, RobertaModel, DistilBertModel, MPNetModel)

__all__ = ["SentenceEncoder"]

# sentence-transformers' pooling modes: the config's "pooling_mode" (a name or a list, in the order the
# parts are concatenated; sentence-transformers >= 5) or, in older folders, one bool key per mode
_LEGACY = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
           "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
           "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_SUPPORTED = ("cls", "max", "mean", "mean_sqrt_len_tokens")


def _pooling_modes(cfg: dict, where) -> tuple[str, ...]:
    """The pooling config's modes in concatenation order, as sentence-transformers reads either format
    (legacy keys all false: mean)."""
    if "pooling_mode" in cfg:
        m = cfg["pooling_mode"]
        modes = (m,) if isinstance(m, str) else tuple(m) if isinstance(m, list) else None
        if not modes or not all(isinstance(x, str) for x in modes):
            raise ValueError(f"{where}: pooling_mode must be a mode name or a list of them, got {m!r}")
    elif any(k in cfg for k in _LEGACY):
        modes = tuple(mode for key, mode in _LEGACY.items() if cfg.get(key)) or ("mean",)
    else:
        raise ValueError(f"{where}: the pooling config sets no pooling mode: {cfg}")
    for mode in modes:
        if mode not in _SUPPORTED:
            known = mode in _LEGACY.values()
            raise ValueError(f"{where}: pooling mode {mode!r} is " + ("not supported" if known else "unknown")
                             + f" (supported: {', '.join(_SUPPORTED)})")
    return modes


class SentenceEncoder:
    """Sentence embeddings as a sentence-transformers folder describes them.

    ``SentenceEncoder.from_pretrained(dir)`` reads ``modules.json`` (a Transformer module, a Pooling
    module and optionally Normalize), ``sentence_bert_config.json`` (``max_seq_length``) and the
    pooling config; a plain BERT (RoBERTa, DistilBERT, MPNet) folder without ``modules.json`` gets
    mean pooling and no normalisation. ``encode(sentences)`` returns ``(N, dim)`` float32 in input order (``(dim,)`` for
    one string, as sentence-transformers does).
    """

    def __init__(self, model: BertModel, tokenizer: Tokenizer, pooling: tuple[str, ...] | list[str] | dict[str, Any],
                 normalize: bool, max_seq_length: int):
        self.model, self.tokenizer = model, tokenizer
        # pooling: the modes in order (("mean",), ("cls", "max"), ...) or a pooling config dict
        self.pooling = tuple(pooling) if isinstance(pooling, (tuple, list)) else _pooling_modes(pooling, "pooling")
        self.normalize = bool(normalize)
        self.max_seq_length = int(max_seq_length)

    @classmethod
    def from_pretrained(cls, model_dir: PathLike, dtype: str | None = "float32") -> SentenceEncoder:
        """Load a sentence-transformers folder; ``dtype`` is how the weight matrices are packed
        (see ``BertModel.from_pretrained``)."""
        from ..tokenizer import Tokenizer
        d = Path(model_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"model folder not found: {d}")
        pooling: tuple[str, ...] = ("mean",)
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
                    pooling = _pooling_modes(read_json(path / "config.json"), path / "config.json")
                elif kind.endswith(".Normalize"):
                    normalize = True
                else:
                    raise ValueError(f"sentence-transformers module {kind!r} is not supported")
        st_cfg = read_json(tdir / "sentence_bert_config.json", default={})
        encoder = class_for(tdir, _ENCODERS, "SentenceEncoder")
        model = encoder.from_pretrained(tdir, dtype=dtype, add_pooling_layer=False)
        tok = Tokenizer.from_pretrained(tdir)
        limit = model.max_tokens
        given = st_cfg.get("max_seq_length")
        if given is not None and (not is_int(given) or given < 1):
            raise ValueError(f"{tdir / 'sentence_bert_config.json'}: max_seq_length must be an integer >= 1, "
                             f"got {given!r}")
        max_len = min(int(given or tok.model_max_length or limit), limit)
        return cls(model, tok, pooling, normalize, max_len)

    def to(self, device: str = "cpu", dtype: str | None = None) -> SentenceEncoder:
        """Run the encoder on ``device`` (``"cuda"``) in ``dtype`` (see ``BertModel.to``); tokenizing and
        pooling stay on the CPU. Returns self."""
        self.model.to(device, dtype)
        return self

    def __repr__(self) -> str:
        c = self.model.config
        return (f"SentenceEncoder({type(self.model).__name__} with {c.num_hidden_layers} layers, dim={self.dim}, "
                f"pooling={self.pooling!r}, normalize={self.normalize}, max_seq_length={self.max_seq_length}, "
                f"tokenizer={self.tokenizer!r})")

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size * len(self.pooling)

    def _pool(self, h: np.ndarray, mask: np.ndarray) -> np.ndarray:
        n = np.maximum(mask.sum(axis=1, keepdims=True).astype(np.float32), 1e-9)
        total = None

        def part(mode):
            nonlocal total
            if mode == "cls":
                return h[:, 0]
            if mode == "max":
                return np.where(mask[:, :, None] > 0, h, -1e9).max(axis=1)
            if total is None:  # the masked sum, once for mean and mean_sqrt_len_tokens
                total = np.einsum("bsh,bs->bh", h, mask.astype(np.float32))
            return total / (n if mode == "mean" else np.sqrt(n))

        return np.concatenate([part(mode) for mode in self.pooling], axis=1).astype(np.float32, copy=False)

    def encode(self, sentences: str | list[str], batch_size: int = 32, normalize_embeddings: bool | None = None,
               show_progress_bar: bool = False) -> np.ndarray:
        """Embed ``sentences`` (a string or a list of strings). Batches are formed from sentences of
        similar length (longest first) to save padding; the result is in input order.
        ``normalize_embeddings`` overrides the folder's Normalize module; ``show_progress_bar``
        draws a tqdm bar over the batches."""
        single = isinstance(sentences, str)
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
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
