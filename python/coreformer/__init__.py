"""coreformer: Transformer building blocks on a fast C++/OpenMP core, called on numpy arrays.

>>> import numpy as np, coreformer
>>> from coreformer import ops
>>> x = np.random.rand(4, 768).astype(np.float32)
>>> w = np.random.rand(3072, 768).astype(np.float32)
>>> ops.linear(x, w, activation="gelu").shape
(4, 3072)
"""
from __future__ import annotations

import warnings
from typing import Any

from numpy.typing import ArrayLike, DTypeLike

from . import _core, nn, ops, optim
from ._args import is_int
from .tokenizer import Tokenizer

__version__ = _core.info()["version"]


def _cublas_dirs() -> list[str]:
    """Where a GPU build looks for cuBLAS after the loader's own path: NVIDIA's PyPI packages (the ones
    PyTorch installs) and CUDA_HOME / CUDA_PATH. Nothing is loaded until a GPU GEMM runs."""
    import os
    import sys
    dirs = []
    for base in sys.path:
        for sub in ("nvidia/cu13/lib", "nvidia/cublas/lib", "nvidia/cu12/lib"):
            d = os.path.join(base or ".", sub)
            if os.path.isdir(d):
                dirs.append(d)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(os.path.join(os.environ[var], "lib64"))
    return dirs


if _core.info()["cuda_built"]:
    _core._cublas_search_dirs(_cublas_dirs())

Tensor = _core.Tensor


def _log_startup() -> None:
    """What the core chose and what it could not follow, to the "coreformer" logger (see _log.py)."""
    import os
    from ._log import logger
    d = _core.info()
    for message in _core._startup_notes():
        logger.warning(message)
    forced = os.environ.get("COREFORMER_ISA")
    if forced and forced == d["isa"] and d["isa"] != d["isa_supported"][-1]:
        logger.info("COREFORMER_ISA=%s: the %s kernels run (this CPU has %s)", forced, d["isa"], d["isa_supported"][-1])
    logger.debug("coreformer %s: %s kernels (this CPU runs %s), %d threads, OpenMP %s, CUDA %s", d["version"],
                 d["isa"], ", ".join(d["isa_supported"]), d["num_threads"], "on" if d["openmp"] else "off",
                 f"built, {d['cuda_devices']} device(s)" if d["cuda_built"] else "not built")


_log_startup()

__all__ = ["info", "get_num_threads", "set_num_threads", "Tensor", "tensor", "from_dlpack", "synchronize",
           "empty_cache", "ops", "nn", "optim", "models", "Tokenizer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "models":  # imported on first use: it is the heaviest part of the package
        import importlib
        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module 'coreformer' has no attribute {name!r}")


def info() -> dict[str, Any]:
    """What this build runs on: ``version``, ``isa`` (the SIMD path in use: scalar, avx2 or avx512),
    ``isa_supported``, ``num_threads``, ``openmp``, ``cuda_built``, ``cuda_devices`` and, with a GPU,
    ``cuda_gemm`` (cuBLAS, loaded at run time where it is installed, or coreformer's own kernels;
    ``COREFORMER_CUBLAS=0`` forces the latter).

    ``COREFORMER_ISA=scalar|avx2|avx512`` forces a lower path; ``COREFORMER_NUM_THREADS`` sets the
    thread count at import (``set_num_threads`` changes it later).
    """
    d = dict(_core.info())
    if d["cuda_devices"]:
        d["cuda_gemm"] = _core._cuda_gemm()
    return d


def get_num_threads() -> int:
    """Threads each kernel call uses."""
    return _core.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` (1 to 4096) threads in every later kernel call, from any Python thread.

    In a process forked (multiprocessing's default on Linux) after its parent ran coreformer's kernels
    on several threads, kernels run on one thread whatever ``n``: GNU OpenMP cannot start threads again
    in such a child (its next parallel region would hang), and a RuntimeWarning says so. Workers that
    need threads of their own start with the ``"spawn"`` or ``"forkserver"`` method.
    """
    if not is_int(n):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    n = int(n)
    if not 1 <= n <= 4096:
        raise ValueError(f"num_threads must be between 1 and 4096, got {n}")
    _core.set_num_threads(n)
    if n > 1 and _core._threads_lost_to_fork():
        warnings.warn("coreformer runs on one thread in this process: it was forked after its parent ran "
                      "coreformer on several threads, and OpenMP cannot start threads again after such a fork "
                      "(use multiprocessing's 'spawn' or 'forkserver' start method for workers with threads)",
                      RuntimeWarning, stacklevel=2)


def tensor(data: ArrayLike | Tensor, device: str = "cpu", dtype: str | DTypeLike | None = None) -> Tensor:
    """A new ``Tensor`` on ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``) holding a copy of ``data``.

    ``data`` is anything numpy converts (or a Tensor). ``dtype`` (``"float32"``, ``"float16"``,
    ``"bfloat16"``, ``"int32"``, ``"int64"``, ``"int8"``, ``"uint8"``, ``"bool"`` or a numpy dtype)
    defaults to the data's own, except that float64 becomes float32 (what every op computes in).
    ``device="cuda"`` without a usable GPU raises ``RuntimeError``.
    """
    return _core.tensor(data, device, dtype)


def synchronize(device: str = "cuda") -> None:
    """Wait until the GPU work queued by coreformer on ``device`` (``"cuda"`` or ``"cuda:N"``) is done
    (``"cpu"``: nothing to wait for, CPU ops return when done).

    Ops return as soon as their kernels are queued; ``Tensor.numpy()`` / ``.to("cpu")`` wait by
    themselves, so this is for timing (and for handing memory to a library on another stream).
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be a str ('cpu', 'cuda' or 'cuda:N'), got {type(device).__name__}")
    if device == "cpu":  # CPU ops return when their work is done
        return
    number = device.removeprefix("cuda:")
    if device != "cuda" and (number == device or not number.isdecimal()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    _core.synchronize(0 if device == "cuda" else int(number))


def empty_cache() -> int:
    """Hand the GPU memory that coreformer keeps for reuse back to the driver; returns the bytes freed.

    Tensors freed on a GPU keep their memory in a cache for the next Tensor of their size (as PyTorch's
    allocator does: cudaFree would wait for the whole device at every freed result), so the memory the
    driver reports in use stays at its peak. Call this before handing the GPU to other work; an
    allocation that finds the device full empties the cache and tries again by itself.
    """
    return int(_core.empty_cache(-1))


def from_dlpack(x: Any) -> Tensor:
    """A ``Tensor`` sharing the memory of any DLPack producer (a PyTorch, CuPy or JAX tensor, a numpy
    array), CPU or CUDA: zero-copy when it is C-contiguous, one contiguous copy otherwise. The
    other way, ``torch.from_dlpack(t)`` / ``np.from_dlpack(t)`` take a Tensor without a copy.
    """
    return _core.from_dlpack(x)
