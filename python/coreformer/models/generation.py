"""Choosing the next token: the logits processors of transformers' ``generate`` (repetition penalty,
temperature, top-k, top-p, in that order), greedy and seeded sampling, and streamers."""
from __future__ import annotations

import queue
from typing import Any, Callable, Union

import numpy as np

from .._args import flag, float_arg, is_int
from .._typing import ArrayLike

__all__ = ["TokenStreamer", "Streamer", "NextToken", "check_generation_args"]


def check_generation_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty, num_beams=1):
    temperature = float_arg("temperature", temperature)
    repetition_penalty = float_arg("repetition_penalty", repetition_penalty)
    if top_p is not None:
        top_p = float_arg("top_p", top_p)
    if not is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not (temperature > 0 and np.isfinite(temperature)):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (0 < top_p <= 1):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if not (repetition_penalty > 0 and np.isfinite(repetition_penalty)):
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty!r}")
    if not is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")


class NextToken:
    """Picks each row's next token from its logits, as transformers does: the repetition penalty
    (a seen token's logit is divided by the penalty if positive, multiplied if negative), then for
    sampling temperature, top-k and top-p (nucleus) filtering and a draw from
    ``numpy.random.default_rng(seed)``; greedy takes the arg-max."""

    def __init__(self, do_sample=False, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                 seed=None):
        self.do_sample = flag("do_sample", do_sample)
        self.temperature, self.top_k, self.top_p = float(temperature), top_k, top_p
        self.repetition_penalty = float(repetition_penalty)
        self.rng = np.random.default_rng(seed)

    def scores(self, logits: np.ndarray, ids: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """The processed scores ``(B, V)`` (float32) for logits ``(B, V)`` after sequences ``ids (B, L)``;
        ``valid (B, L)``, when given, marks the ids that count as seen (not a row's padding, so a
        padded row is penalised as it would be alone; its last id must be valid)."""
        s = np.array(logits, dtype=np.float32)
        if self.repetition_penalty != 1.0 and ids.shape[1]:
            rows = np.arange(s.shape[0])[:, None]
            if valid is not None:
                ids = np.where(valid, ids, ids[:, -1:])  # padding stands in for an id already seen
            seen = s[rows, ids]
            s[rows, ids] = np.where(seen < 0, seen * self.repetition_penalty, seen / self.repetition_penalty)
        if not self.do_sample:
            return s
        if self.temperature != 1.0:
            s /= self.temperature
        if self.top_k is not None and self.top_k < s.shape[1]:
            kth = np.partition(s, -self.top_k, axis=1)[:, -self.top_k][:, None]
            s[s < kth] = -np.inf
        if self.top_p is not None and self.top_p < 1.0:
            for row in s:
                _top_p(row, self.top_p)
        return s

    def __call__(self, logits: np.ndarray, ids: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        s = self.scores(logits, ids, valid)
        if not self.do_sample:
            return s.argmax(axis=1)
        cum = s.astype(np.float64)  # in place from here: fresh (B, V) arrays cost more than the arithmetic
        cum -= cum.max(axis=1, keepdims=True)
        np.exp(cum, out=cum)
        np.cumsum(cum, axis=1, out=cum)
        u = self.rng.random(s.shape[0]) * cum[:, -1]
        return np.minimum((cum < u[:, None]).sum(axis=1), s.shape[1] - 1)


def _top_p(s: np.ndarray, top_p: float, candidates=(256, 4096)) -> None:
    """Nucleus filtering of one row of scores, in place, as transformers' TopPLogitsWarper does: in
    ascending (stable) order, a token is removed where the cumulative probability up to it is at
    most ``1 - top_p``; that is, in descending order (ties: the higher index first), a token is kept
    while the probability of the tokens before it is below ``top_p``. The nucleus is looked for
    among the tokens above the 256th (then the 4096th) largest score first, by a partition instead
    of a sort of the whole vocabulary (5-8 ms a step for GPT-2's 50257, against ~0.7 ms); the whole
    row is sorted only for a nucleus wider than that."""
    p = np.exp(s.astype(np.float64) - s.max())
    total = p.sum()
    for n in candidates:
        if s.size <= n:
            break
        above = np.flatnonzero(s > np.partition(s, -n)[-n])
        order = above[np.lexsort((-above, -s[above]))]  # descending; among equal scores the higher index first
        before = np.cumsum(p[order]) - p[order]  # the probability of the tokens before each one
        keep = before < top_p * total
        if order.size and not keep[-1]:  # the nucleus ends among the candidates
            drop = np.ones(s.size, bool)
            drop[order[keep]] = False
            s[drop] = -np.inf
            return
    order = np.argsort(s, kind="stable")  # ascending, as transformers sorts
    cum = np.cumsum(p[order]) / total
    remove = cum <= 1.0 - top_p
    remove[-1] = False  # keep at least one
    s[order[remove]] = -np.inf


class TokenStreamer:
    """Receives tokens as ``generate`` makes them: pass it as ``streamer=`` and iterate over it (from
    another thread) to get each step's ids, a ``(B,)`` int64 array, until generation ends.

    >>> streamer = TokenStreamer()
    >>> threading.Thread(target=model.generate, args=(ids,), kwargs=dict(streamer=streamer)).start()
    >>> for step in streamer: print(tokenizer.decode(step))
    """

    _END = object()

    def __init__(self, timeout: float | None = None):
        self._q: queue.Queue = queue.Queue()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"TokenStreamer(timeout={self.timeout!r})"

    def put(self, ids: ArrayLike) -> None:
        self._q.put(np.asarray(ids))

    def end(self) -> None:
        self._q.put(self._END)

    def __iter__(self):
        while True:
            item = self._q.get(timeout=self.timeout)
            if item is self._END:
                return
            yield item


# What generate's streamer may be: a callable of each step's new ids (B,), or a TokenStreamer.
Streamer = Union[Callable[[np.ndarray], Any], TokenStreamer]


def check_streamer(streamer):
    """TypeError before any work for a streamer that is neither None, a callable nor has ``put``."""
    if streamer is not None and not hasattr(streamer, "put") and not callable(streamer):
        raise TypeError(f"streamer must be None, a callable or an object with put(ids) and end(), got "
                        f"{type(streamer).__name__}")


def stream_put(streamer, ids):
    if streamer is None:
        return
    if hasattr(streamer, "put"):
        streamer.put(ids)
    else:
        streamer(ids)


def stream_end(streamer):
    if streamer is not None and hasattr(streamer, "end"):
        streamer.end()


def eos_set(eos_token_id, default) -> np.ndarray:
    e = default if eos_token_id is None else eos_token_id
    if e is None:
        return np.empty(0, np.int64)
    a = np.atleast_1d(np.asarray(e))
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"eos_token_id must be an int or a list of ints, got {e!r}")
    return a.astype(np.int64)
