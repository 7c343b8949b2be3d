"""Reading the small JSON files of model folders, with errors that name the file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike[str], default: Any = None, expect: type = dict) -> Any:
    """The JSON in ``path``, which must be an ``expect`` (a JSON object unless told otherwise);
    ``default`` when it does not exist (FileNotFoundError naming it when no default is given);
    ValueError naming the file when it is not valid JSON or not an ``expect`` (a list where a config's
    object belongs failed later as AttributeError)."""
    path = Path(path)
    if not path.is_file():
        if default is not None:
            return default
        raise FileNotFoundError(f"{path} not found")
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, expect):
        kinds: dict[type, str] = {dict: "a JSON object", list: "a JSON list"}
        kind = kinds.get(expect, expect.__name__)
        raise ValueError(f"{path} must hold {kind}, not {type(value).__name__}")
    return value
