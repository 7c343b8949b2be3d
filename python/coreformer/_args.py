"""Scalar arguments checked the same way everywhere: counts and axes are integers (a float is not
truncated silently), flags are bools (a string such as "no" is not read as True), scales and
epsilons are real numbers. Each raises TypeError naming the argument."""
from __future__ import annotations

import operator
from typing import Any, TypeGuard

import numpy as np


def is_int(value: Any) -> TypeGuard[int | np.integer]:
    """An integer in the strict sense: Python or numpy ints, not bools (which ``operator.index`` takes)
    nor floats -- the rule for counts and ids read from files and arguments alike."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def int_arg(name: str, value: Any) -> int:
    """An integer argument: Python and numpy ints (not floats, which would be truncated silently)."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def float_arg(name: str, value: Any) -> float:
    """A real-number argument: ints, floats and their numpy scalars (not strings, complex or arrays)."""
    if not isinstance(value, (str, bytes)) and np.ndim(value) == 0:
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")


def flag(name: str, value: Any, none: bool = False) -> bool:
    """A bool argument (numpy's too, and the ints 0 and 1); ``none``: None reads as False, where torch
    types the flag Optional[bool]. A string such as "no" is refused rather than read as True."""
    if value is None and none:
        return False
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
