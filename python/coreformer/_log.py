"""The "coreformer" logger: what the library decided on its own (the SIMD path, fallbacks, arguments it
had to copy), for users to see through their logging configuration: ``logging.basicConfig(level=
logging.DEBUG)``, or ``logging.getLogger("coreformer").setLevel(...)``. Unconfigured, Python prints
WARNING and above to stderr (its last-resort handler; no NullHandler is added, so a setting that could
not be followed is never silent) and nothing below.

Levels: WARNING for environment settings that could not be followed and for slow fallbacks; INFO for
choices made on the user's behalf (a forced ISA); DEBUG for start-up facts and every argument an op had
to copy (a dtype or layout it does not read in place)."""
from __future__ import annotations

import logging

logger = logging.getLogger("coreformer")


def copied(name: str, dtype: str, shape: tuple[int, ...], to: str) -> None:
    """Called by the binding when converting an argument made a copy (csrc's convert.cpp)."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("argument %r, %s %s, copied as %s", name, dtype, shape, to)
