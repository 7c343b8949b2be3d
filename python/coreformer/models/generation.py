"""Choosing the next token: the logits processors of transformers' ``generate`` (repetition penalty,
temperature, top-k, top-p, in that order), greedy and seeded sampling, and streamers."""
from __future__ import annotations

import queue

import numpy as np

from .._args import flag, float_arg, is_int

__all__ = ["TokenStreamer", "NextToken", "check_generation_args"]


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
            order = np.argsort(s, axis=1, kind="stable")  # ascending, as transformers sorts
            srt = np.take_along_axis(s, order, axis=1).astype(np.float64)
            p = np.exp(srt - srt[:, -1:])
            cum = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
            remove = cum <= 1.0 - self.top_p
            remove[:, -1] = False  # keep at least one
            np.put_along_axis(s, order, np.where(remove, -np.inf, srt).astype(np.float32), axis=1)
        return s

    def __call__(self, logits: np.ndarray, ids: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        s = self.scores(logits, ids, valid)
        if not self.do_sample:
            return s.argmax(axis=1)
        z = s.astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        cum = np.cumsum(p, axis=1)
        u = self.rng.random(s.shape[0]) * cum[:, -1]
        return np.minimum((cum < u[:, None]).sum(axis=1), s.shape[1] - 1)


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

    def put(self, ids) -> None:
        self._q.put(np.asarray(ids))

    def end(self) -> None:
        self._q.put(self._END)

    def __iter__(self):
        while True:
            item = self._q.get(timeout=self.timeout)
            if item is self._END:
                return
            yield item


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
