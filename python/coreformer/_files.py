"""Reading the small JSON files of model folders, with errors that name the file."""
from __future__ import annotations

import json
from pathlib import Path


def read_json(path, default=None):
    """The JSON in ``path``; ``default`` when it does not exist (FileNotFoundError naming it when no
    default is given); ValueError naming the file when it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        if default is not None:
            return default
        raise FileNotFoundError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
