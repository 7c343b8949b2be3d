"""Reading and writing safetensors files with numpy alone.

``load_file(path)`` maps the file and returns read-only numpy views into the mapping: loading a
model holds one copy of its weights (the page cache's), not two, and pages in only what is used.
Tensors stored as F16/BF16 are widened to float32 once, at load. A truncated or corrupt file
raises ``ValueError`` naming the file and what is wrong with it.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length N,
N bytes of JSON mapping each name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
relative to the end of the header) and an optional ``"__metadata__"`` of strings, then the data.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Any, Mapping, TypeGuard

import numpy as np

from ._args import is_int

__all__ = ["load_file", "save_file", "SafetensorsError"]

_DTYPES: dict[str, Any] = {  # numpy's type for each dtype name (BF16: none, widened by hand)
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": None,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_ITEMSIZE = {"BF16": 2}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items() if v is not None}


class SafetensorsError(ValueError):
    """A file that is not a valid safetensors file."""


def _ints(v: Any) -> TypeGuard[list[int]]:
    """A JSON list of integers (not floats, bools or strings)."""
    return isinstance(v, list) and all(is_int(d) for d in v)


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def load_file(path: str | os.PathLike[str], *, widen: bool = True) -> dict[str, np.ndarray]:
    """Map ``path`` and return ``{name: array}``: views into the mapping (read-only), except F16/BF16
    tensors, widened to float32 when ``widen`` (the default)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such safetensors file: {path}")
    size = os.path.getsize(path)
    if size < 8:
        raise SafetensorsError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > 100 * 2**20:
            raise SafetensorsError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: corrupt header ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{path}: corrupt header (not a JSON object)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
    base = 8 + n
    data_len = size - base
    buf = np.frombuffer(mm, dtype=np.uint8) if mm is not None else np.empty(0, np.uint8)
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, offsets = (meta.get(k) for k in ("dtype", "shape", "data_offsets")) if isinstance(
            meta, dict) else (None, None, None)
        if not (isinstance(dtype, str) and _ints(shape) and _ints(offsets) and len(offsets) == 2):
            raise SafetensorsError(f"{path}: corrupt entry for tensor {name!r}: {meta!r}"[:500])
        if dtype not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}"[:500])
        begin, end = offsets
        itemsize = _ITEMSIZE.get(dtype) or np.dtype(_DTYPES[dtype]).itemsize
        count = 1
        for d in shape:  # Python ints: a huge shape cannot wrap around to a size that fits
            count *= d
        if any(d < 0 for d in shape) or not (0 <= begin <= end) or end - begin != count * itemsize:
            raise SafetensorsError(f"{path}: tensor {name!r} of shape {tuple(shape)} and dtype {dtype} does not fit "
                                   f"its data offsets [{begin}, {end})")
        if end > data_len:
            raise SafetensorsError(f"{path}: truncated: tensor {name!r} needs bytes up to {end} of the data but the "
                                   f"file holds {data_len}")
        raw = buf[base + begin:base + end]
        if dtype == "BF16":
            a = raw.view(np.uint16).reshape(shape)
            a = _bf16_to_f32(a) if widen else a
        else:
            a = raw.view(_DTYPES[dtype]).reshape(shape)
            if dtype == "F16" and widen:
                a = a.astype(np.float32)
            elif a.ctypes.data % a.dtype.alignment:
                a = a.copy()  # a writer that did not align the data: the kernels need aligned floats
        out[name] = a
    return out


def save_file(tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> None:
    """Write ``{name: array}`` to ``path`` (arrays are stored C-contiguous in their own dtype)."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _NAMES:
            raise TypeError(f"tensor {name!r} has dtype {a.dtype}, which safetensors cannot store")
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)
