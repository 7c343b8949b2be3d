"""``coreformer.Tokenizer``: Hugging Face ``tokenizers`` behind a small API that returns numpy arrays."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ._args import is_int
from ._files import read_json
from ._typing import ArrayLike, IntArray, PathLike

__all__ = ["Tokenizer"]


def _tokenizers():
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("coreformer.Tokenizer needs the 'tokenizers' package: pip install tokenizers "
                          "(or pip install 'coreformer[models]')") from None
    return tokenizers


@contextlib.contextmanager
def _no_panic(source: str) -> Iterator[None]:
    """The Rust tokenizer panics (pyo3's PanicException, a BaseException) on files whose parts disagree,
    e.g. a post-processor's special token missing from the vocabulary: a ValueError naming the files."""
    try:
        yield
    except BaseException as e:
        if type(e).__name__ != "PanicException":
            raise
        raise ValueError(f"{source}: the tokenizer failed ({e}); its files do not fit together"[:2000]) from None


class Tokenizer:
    """Text to ids and back, over a Hugging Face ``tokenizers.Tokenizer``.

    ``Tokenizer.from_pretrained(dir)`` reads ``tokenizer.json``; failing that ``vocab.txt``
    (WordPiece, BERT-style, lower-cased as ``tokenizer_config.json`` says) or ``vocab.json`` +
    ``merges.txt`` (byte-level BPE, GPT-2-style).
    """

    def __init__(self, tokenizer: Any, pad_token: str | None = None, model_max_length: int | None = None,
                 source: str = "the tokenizer"):
        self._tok = tokenizer
        self.source = source  # what errors name: the files it was read from
        self.pad_token = pad_token
        self.model_max_length = model_max_length
        self._truncating: dict[int, Any] = {}  # max_length -> a copy of the tokenizer that truncates there

    @classmethod
    def from_pretrained(cls, model_dir: PathLike) -> Tokenizer:
        tk = _tokenizers()
        d = Path(model_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {d}")
        cfg = read_json(d / "tokenizer_config.json", default={})
        special = read_json(d / "special_tokens_map.json", default={})

        def token(name: str) -> str | None:
            t = cfg.get(name, special.get(name))
            t = t.get("content") if isinstance(t, dict) else t
            if t is not None and not isinstance(t, str):
                where = "tokenizer_config.json" if name in cfg else "special_tokens_map.json"
                raise ValueError(f"{d / where}: {name} must be a token (a string), got {t!r}"[:500])
            return t

        if not isinstance(cfg.get("do_lower_case", True), bool):
            raise ValueError(f"{d / 'tokenizer_config.json'}: do_lower_case must be true or false, "
                             f"got {cfg['do_lower_case']!r}"[:500])

        # tokenizers raises a bare Exception (or a TypeError for a config value of the wrong kind) for
        # files it cannot read: a ValueError naming them
        if (d / "tokenizer.json").is_file():
            sources = [d / "tokenizer.json"]
            make = lambda: tk.Tokenizer.from_file(str(d / "tokenizer.json"))  # noqa: E731
        elif (d / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer
            sources = [d / "vocab.txt", d / "tokenizer_config.json", d / "special_tokens_map.json"]
            make = lambda: BertWordPieceTokenizer(  # noqa: E731
                str(d / "vocab.txt"), lowercase=cfg.get("do_lower_case", True),
                unk_token=token("unk_token") or "[UNK]", sep_token=token("sep_token") or "[SEP]",
                cls_token=token("cls_token") or "[CLS]", pad_token=token("pad_token") or "[PAD]",
                mask_token=token("mask_token") or "[MASK]")._tokenizer
        elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            from tokenizers.implementations import ByteLevelBPETokenizer
            sources = [d / "vocab.json", d / "merges.txt"]
            make = lambda: ByteLevelBPETokenizer(str(d / "vocab.json"), str(d / "merges.txt"))._tokenizer  # noqa: E731
        else:
            raise FileNotFoundError(f"no tokenizer in {d}: expected tokenizer.json, vocab.txt, or vocab.json and "
                                    "merges.txt")
        names = " / ".join(str(f) for f in sources if f.is_file())
        try:
            with _no_panic(names):  # building the model panics too, e.g. on a merge longer than its pieces
                tok = make()
        except Exception as e:
            raise ValueError(f"{names}: not a tokenizer this library can read: {e}"[:2000]) from None
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
        out = cls(tok, pad_token=pad, model_max_length=mml, source=names)
        out.encode("a", "b")  # files that disagree (a special token the vocabulary lacks) fail here, by name
        return out

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, pad_token={self.pad_token!r}, "
                f"model_max_length={self.model_max_length!r}, source={self.source!r})")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._tok.token_to_id(self.pad_token)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True,
               max_length: int | None = None) -> list[int]:
        """The ids of one text, or of a pair (``text_pair``: BERT's second segment, as for a
        cross-encoder or NLI classifier), truncated to ``max_length`` when given as transformers'
        ``truncation=True`` does (the longer of a pair loses tokens first; special tokens kept)."""
        return list(self._encode([text], None if text_pair is None else [text_pair], add_special_tokens,
                                 max_length)[0].ids)

    def _encode(self, texts, pairs, add_special_tokens, max_length):
        for name, batch in (("text", texts), ("text_pair", pairs)):
            for t in batch or ():
                if not isinstance(t, str):
                    raise TypeError(f"{name} must be a str (or a list of str), got {type(t).__name__}")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"text_pair must have one text per text: got {len(pairs)} for {len(texts)}")
        if not isinstance(add_special_tokens, (bool, np.bool_)):
            raise TypeError(f"add_special_tokens must be a bool, got {add_special_tokens!r}")
        tok = self._tok
        if max_length is not None:
            if not is_int(max_length):
                raise TypeError(f"max_length must be an int or None, got {type(max_length).__name__}")
            least = max(1, tok.num_special_tokens_to_add(pairs is not None)) if add_special_tokens else 1
            if max_length < least:
                raise ValueError(f"max_length must be >= {least} (room for the special tokens), got {max_length}")
            tok = self._truncating.get(int(max_length))
            if tok is None:  # the Rust tokenizer's own truncation, as transformers sets it up
                tok = copy.deepcopy(self._tok)
                tok.enable_truncation(int(max_length), strategy="longest_first")
                if len(self._truncating) >= 16:
                    self._truncating.clear()
                self._truncating[int(max_length)] = tok
        with _no_panic(self.source):
            if len(texts) == 1:
                return [tok.encode(texts[0], None if pairs is None else pairs[0],
                                   add_special_tokens=add_special_tokens)]
            inputs = list(texts) if pairs is None else list(zip(texts, pairs))
            return tok.encode_batch(inputs, add_special_tokens=add_special_tokens)

    def decode(self, ids: ArrayLike, skip_special_tokens: bool = True) -> str:
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
        with _no_panic(self.source):
            return self._tok.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids: ArrayLike, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in np.asarray(ids)]

    def __call__(self, texts: str | list[str], text_pair: str | list[str] | None = None, padding_side: str = "right",
                 max_length: int | None = None, add_special_tokens: bool = True) -> dict[str, IntArray]:
        """Encode a batch and pad it: ``{"input_ids", "attention_mask", "token_type_ids"}`` as ``(N, L)``
        int64 arrays (L the longest row after truncation to ``max_length``). ``text_pair`` (a str, or
        one per text) makes each row a pair, its second segment of token type 1, as BERT classifiers
        of sentence pairs take them. ``padding_side="left"`` for generation with a decoder."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(text_pair, str):
            text_pair = [text_pair]
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        texts = list(texts)
        encs = self._encode(texts, None if text_pair is None else list(text_pair), add_special_tokens, max_length)
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
