"""``coreformer.Tokenizer``: Hugging Face ``tokenizers`` behind a small API that returns numpy arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._args import is_int
from ._files import read_json

__all__ = ["Tokenizer"]


def _tokenizers():
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("coreformer.Tokenizer needs the 'tokenizers' package: pip install tokenizers "
                          "(or pip install 'coreformer[models]')") from None
    return tokenizers


class Tokenizer:
    """Text to ids and back, over a Hugging Face ``tokenizers.Tokenizer``.

    ``Tokenizer.from_pretrained(dir)`` reads ``tokenizer.json``; failing that ``vocab.txt``
    (WordPiece, BERT-style, lower-cased as ``tokenizer_config.json`` says) or ``vocab.json`` +
    ``merges.txt`` (byte-level BPE, GPT-2-style).
    """

    def __init__(self, tokenizer, pad_token: str | None = None, model_max_length: int | None = None):
        self._tok = tokenizer
        self.pad_token = pad_token
        self.model_max_length = model_max_length

    @classmethod
    def from_pretrained(cls, model_dir) -> "Tokenizer":
        tk = _tokenizers()
        d = Path(model_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {d}")
        cfg = read_json(d / "tokenizer_config.json", default={})
        special = read_json(d / "special_tokens_map.json", default={})

        def token(name):
            t = cfg.get(name, special.get(name))
            return t.get("content") if isinstance(t, dict) else t

        if (d / "tokenizer.json").is_file():
            try:
                tok = tk.Tokenizer.from_file(str(d / "tokenizer.json"))
            except Exception as e:  # tokenizers raises a bare Exception for a file it cannot read
                raise ValueError(f"{d / 'tokenizer.json'} is not a valid tokenizer file: {e}") from None
        elif (d / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer
            tok = BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=cfg.get("do_lower_case", True),
                                         unk_token=token("unk_token") or "[UNK]", sep_token=token("sep_token") or
                                         "[SEP]", cls_token=token("cls_token") or "[CLS]",
                                         pad_token=token("pad_token") or "[PAD]",
                                         mask_token=token("mask_token") or "[MASK]")._tokenizer
        elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            from tokenizers.implementations import ByteLevelBPETokenizer
            tok = ByteLevelBPETokenizer(str(d / "vocab.json"), str(d / "merges.txt"))._tokenizer
        else:
            raise FileNotFoundError(f"no tokenizer in {d}: expected tokenizer.json, vocab.txt, or vocab.json and "
                                    "merges.txt")
        pad = token("pad_token")
        if pad is None and tok.padding:
            pad = tok.padding.get("pad_token")
        # a tokenizer.json may carry its own padding and truncation: this class pads batches itself
        # and truncates where asked
        tok.no_padding()
        tok.no_truncation()
        mml = cfg.get("model_max_length")
        if mml is not None:  # transformers writes ~1e30 for "no limit"
            number = is_int(mml) or isinstance(mml, float)
            if not (number and mml >= 1 and (mml >= 1e9 or mml == int(mml))):
                raise ValueError(f"{d / 'tokenizer_config.json'}: model_max_length must be an integer >= 1, "
                                 f"got {mml!r}")
            mml = int(mml) if mml < 1e9 else None
        return cls(tok, pad_token=pad, model_max_length=mml)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._tok.token_to_id(self.pad_token)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True, max_length: int | None = None) -> list[int]:
        """The ids of one text (truncated to ``max_length`` when given, special tokens kept)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        self._check_max_length(max_length, add_special_tokens)
        enc = self._tok.encode(text, add_special_tokens=add_special_tokens)
        if max_length is not None and len(enc.ids) > max_length:
            enc = self._truncate(text, max_length) if add_special_tokens else self._cut(enc, max_length)
        return list(enc.ids)

    def _check_max_length(self, max_length, add_special_tokens):
        if max_length is None:
            return
        if not is_int(max_length):
            raise TypeError(f"max_length must be an int or None, got {type(max_length).__name__}")
        least = max(1, self._tok.num_special_tokens_to_add(False)) if add_special_tokens else 1
        if max_length < least:
            raise ValueError(f"max_length must be >= {least} (room for the special tokens), got {max_length}")

    def _truncate(self, text, max_length):
        body = self._tok.encode(text, add_special_tokens=False)
        body.truncate(max(max_length - self._tok.num_special_tokens_to_add(False), 0))
        return self._tok.post_process(body, add_special_tokens=True)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = np.asarray(ids)
        if ids.size and ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.ndim > 1 and ids.shape[:-1] != (1,) * (ids.ndim - 1):  # one row of a batch is fine
            raise ValueError(f"decode takes one sequence of ids, got shape {ids.shape}: batch_decode decodes "
                             "each row of a batch")
        ids = ids.reshape(-1)
        v = self.vocab_size
        bad = ids[(ids < 0) | (ids >= v)] if ids.size else ids
        if bad.size:
            raise IndexError(f"id {bad[0]} is outside the vocabulary [0, {v})")
        return self._tok.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in np.asarray(ids)]

    def __call__(self, texts, padding_side: str = "right", max_length: int | None = None,
                 add_special_tokens: bool = True) -> dict:
        """Encode a batch and pad it: ``{"input_ids", "attention_mask", "token_type_ids"}`` as ``(N, L)``
        int64 arrays (L the longest row after truncation to ``max_length``). ``padding_side="left"``
        for generation with a decoder."""
        if isinstance(texts, str):
            texts = [texts]
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be strings, got {type(t).__name__}")
        self._check_max_length(max_length, add_special_tokens)
        encs = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        if max_length is not None:
            encs = [e if len(e.ids) <= max_length else self._truncate(t, max_length) if add_special_tokens
                    else self._cut(e, max_length) for e, t in zip(encs, texts)]
        n, width = len(encs), max((len(e.ids) for e in encs), default=0)
        pad_id = self.pad_token_id or 0
        ids = np.full((n, width), pad_id, np.int64)
        mask = np.zeros((n, width), np.int64)
        types = np.zeros((n, width), np.int64)
        for i, e in enumerate(encs):
            k = len(e.ids)
            sl = slice(0, k) if padding_side == "right" else slice(width - k, width)
            ids[i, sl], mask[i, sl], types[i, sl] = e.ids, 1, e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    @staticmethod
    def _cut(enc, max_length):
        enc.truncate(max_length)
        return enc
