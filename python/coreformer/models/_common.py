"""What every model shares: reading a Hugging Face folder, checking tensor names, outputs."""
from __future__ import annotations

import contextlib
import json
import re
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import _core, nn
from .._log import logger
from .. import safetensors as st
from .._args import is_int
from .._files import read_json


class ModelOutput(dict[str, Any]):
    """A dict whose keys are also attributes (``out.logits`` or ``out["logits"]``), as in transformers."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"this output has no {name!r}; it has {', '.join(self)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __repr__(self) -> str:  # arrays by dtype and shape: printing an output should not print its numbers
        def short(v: Any) -> str:
            return f"{v.dtype} {tuple(v.shape)}" if hasattr(v, "shape") and hasattr(v, "dtype") else repr(v)
        return f"{type(self).__name__}({', '.join(f'{k}: {short(v)}' for k, v in self.items())})"


class Loss(float):
    """A model's loss: a float (it prints, compares and adds as one) that also holds the way back:
    ``loss.backward()`` fills (accumulates into) the ``.grad`` of every parameter of the model that made it,
    as ``loss.backward()`` does in torch. Only a loss from a training-mode forward (``model.train()``) has
    a backward, and only once."""

    _backward: Any

    def __new__(cls, value: float, backward: Any = None) -> "Loss":
        obj = super().__new__(cls, value)
        obj._backward = backward
        return obj

    def backward(self) -> None:
        fn = self._backward
        if fn is None:
            raise RuntimeError("this loss has no backward: it came from an eval-mode forward (call model.train() "
                               "first), or backward() was already called for it (run a new forward)")
        self._backward = None
        fn()

    def item(self) -> float:
        return float(self)

    def __repr__(self) -> str:
        return f"Loss({float(self)!r})"


class _TrainingGuard:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0


def _guard(model: Any) -> _TrainingGuard:
    g = model.__dict__.get("_training_guard")
    if g is None:
        g = _TrainingGuard()
        object.__setattr__(model, "_training_guard", g)
    return g


def _busy(model: Any) -> RuntimeError:
    return RuntimeError(f"{type(model).__name__}: another thread is running a training forward or backward on this "
                        "model; training steps on one model must not overlap (inference from another thread "
                        "needs its own copy, or eval mode between steps)")


@contextlib.contextmanager
def training_forward(model: Any) -> Iterator[int | None]:
    """Around a model's forward: in training mode, one at a time on a model (a second thread's forward or
    backward raises instead of overwriting the saved activations) and numbered, so a loss's backward can
    tell that a later forward replaced what it needs. Yields that number (None in eval mode)."""
    if not model.training:
        yield None
        return
    g = _guard(model)
    if not g.lock.acquire(blocking=False):
        raise _busy(model)
    try:
        g.generation += 1
        yield g.generation
    finally:
        g.lock.release()


def model_loss(model: Any, value: float, backward: Any, generation: int | None) -> Loss:
    """The Loss of a model's forward: with a backward only after a training forward, and that backward
    refuses to run on activations a later forward has replaced, or while another thread trains the model."""
    if generation is None:
        return Loss(value)
    g = _guard(model)

    def guarded() -> None:
        if not g.lock.acquire(blocking=False):
            raise _busy(model)
        try:
            if g.generation != generation:
                raise RuntimeError(f"{type(model).__name__} ran another training forward after the one that made "
                                   "this loss, and kept only that one's activations: call backward() before the "
                                   "next forward (for gradient accumulation: forward, backward, forward, backward)")
            backward()
        finally:
            g.lock.release()
    return Loss(value, guarded)


def shifted_labels(labels: Any, shape: tuple[int, int], vocab: int) -> np.ndarray:
    """Causal-LM labels (B, S) as transformers takes them (the model shifts them: position t predicts
    label t + 1; -100 is ignored) aligned with the logits: row t gets labels[t + 1], the last -100."""
    lab = token_labels(labels, shape, vocab, "the vocabulary")
    out = np.full(shape, -100, np.int64)
    out[:, :-1] = lab[:, 1:]
    return out


def token_labels(labels: Any, shape: tuple[int, ...], n: int, what: str = "the labels") -> np.ndarray:
    """Per-token labels (B, S) as int64: class ids in [0, n) or -100 (ignored); anything else is an error
    naming it."""
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.shape != tuple(shape):
        raise ValueError(f"labels must have the shape of input_ids {tuple(shape)}, got {lab.shape}")
    bad = lab[(lab != -100) & ((lab < 0) | (lab >= n))]
    if bad.size:
        raise IndexError(f"label {bad[0]} is outside {what} [0, {n}) (and is not -100, the ignored label)")
    return lab.astype(np.int64)


def classification_loss(config: Any, logits: np.ndarray, labels: Any) -> tuple[float, np.ndarray]:
    """transformers' sequence-classification loss and its gradient with respect to the logits (B, C):
    ``problem_type`` as the config says, else regression (MSE) for one label, single-label cross-entropy
    for integer labels, multi-label BCE-with-logits for float ones."""
    from .. import ops
    labels = np.asarray(labels)
    n = logits.shape[-1]
    kind = config.get("problem_type")
    if kind is None:
        kind = ("regression" if n == 1 else
                "single_label_classification" if labels.dtype.kind in "iu" else "multi_label_classification")
    if kind == "regression":
        target = labels.astype(np.float64).reshape(-1) if n == 1 else labels.astype(np.float64)
        pred = logits.astype(np.float64).reshape(-1) if n == 1 else logits.astype(np.float64)
        if target.shape != pred.shape:
            raise ValueError(f"labels for regression must have shape {pred.shape}, got {labels.shape}")
        diff = pred - target
        grad = (2.0 / max(diff.size, 1)) * diff
        return float(np.mean(diff * diff)), grad.reshape(logits.shape).astype(np.float32)
    if kind == "single_label_classification":
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers (class ids) for single-label classification, got {labels.dtype}")
        labels = labels.reshape(-1)
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels must have one class id per row ({logits.shape[0]}), got shape {labels.shape}")
        loss, grad = ops.cross_entropy(logits, labels.astype(np.int64), return_grad=True)
        return float(loss), grad
    if kind == "multi_label_classification":
        y = labels.astype(np.float64)
        if y.shape != logits.shape:
            raise ValueError(f"labels for multi-label classification must have shape {logits.shape}, got {y.shape}")
        x = logits.astype(np.float64)
        loss = np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))
        grad = (1.0 / (1.0 + np.exp(-x)) - y) / x.size
        return float(loss), grad.astype(np.float32)
    raise ValueError(f"config: problem_type must be 'regression', 'single_label_classification' or "
                     f"'multi_label_classification', got {kind!r}")


def is_token_ids(v: Any, key: str) -> bool:
    """None or a token id (an integer >= 0) -- for eos_token_id also a list of them, the stop tokens:
    what config.json and generation_config.json give for bos/eos/pad."""
    ids = v if isinstance(v, list) and key == "eos_token_id" else [v]
    return v is None or all(is_int(i) and 0 <= i < 2 ** 62 for i in ids)


class Config(dict[str, Any]):
    """A model's settings (``config.json`` over defaults) as a dict whose keys also read as attributes
    (``config.n_embd``); a missing one is an AttributeError, as ``getattr``, ``hasattr`` and ``copy``
    expect (a KeyError there broke ``copy.deepcopy`` of a model).

    ``SIZES`` (key: least value), ``REALS``, ``STRS``, ``FLAGS`` and ``IDS`` (token ids: None, an int or
    a list of ints) name the fields a model reads; ``check()`` makes a value of the wrong kind a
    ValueError naming the field, where it surfaced as a TypeError or ZeroDivisionError from deep in
    the layers' construction."""

    SIZES: dict[str, int] = {}
    REALS: tuple[str, ...] = ()
    STRS: tuple[str, ...] = ()
    FLAGS: tuple[str, ...] = ()
    IDS: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"

    def check(self) -> None:
        def bad(key, what):
            return ValueError(f"config: {key} must be {what}, got {self[key]!r}")

        for key, least in self.SIZES.items():  # None only where the default is None (derived later)
            unset = self.get(key) is None and getattr(self, "DEFAULTS", {}).get(key, 0) is None
            if key in self and not unset and not (is_int(self[key]) and self[key] >= least):
                raise bad(key, f"an integer >= {least}")
        for key in self.REALS:
            v = self.get(key)
            if key in self and not ((is_int(v) or isinstance(v, float)) and 0 <= v < float("inf")):
                raise bad(key, "a finite number >= 0")
        for key in self.STRS:
            if key in self and not isinstance(self[key], str):
                raise bad(key, "a string")
        for key in self.FLAGS:
            if key in self and not isinstance(self[key], bool):
                raise bad(key, "true or false")
        for key in self.IDS:
            if key in self and not is_token_ids(self[key], key):
                raise bad(key, "a token id (an integer >= 0)" + (", a list of them," if key == "eos_token_id" else "")
                          + " or null")

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}") from None


def read_config(model_dir, expected_types: tuple[str, ...], what: str) -> dict:
    """``config.json`` of ``model_dir``, checked to have a supported ``model_type``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Hugging Face model folder needs config.json")
    cfg = read_json(path)
    mt = cfg.get("model_type")
    if mt not in expected_types:
        raise ValueError(f"{what} supports model_type {' or '.join(map(repr, expected_types))}; {path} has "
                         f"model_type {mt!r}")
    return cfg


def class_for(model_dir, classes: tuple, what: str):
    """Of ``classes``, the one whose ``model_types`` holds ``model_dir``'s config.json model_type (the
    first when the config names none); ValueError listing every type they take otherwise."""
    model_type = read_json(Path(model_dir) / "config.json", default={}).get("model_type")
    if model_type is None:
        return classes[0]
    for cls in classes:
        if model_type in cls.model_types:
            return cls
    raise ValueError(f"{what} supports model_type {', '.join(t for c in classes for t in c.model_types)}; "
                     f"{Path(model_dir) / 'config.json'} has model_type {model_type!r}")


def read_weights(model_dir) -> dict[str, np.ndarray]:
    """The tensors of ``model.safetensors`` (or the shards listed in ``model.safetensors.index.json``),
    mapped rather than read."""
    model_dir = Path(model_dir)
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return st.load_file(single)
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index: {e}") from None
        out = {}
        for f in files:
            out.update(st.load_file(model_dir / f))
        return out
    hint = " (only safetensors weights are read; pytorch_model.bin is not)" if (
        model_dir / "pytorch_model.bin").exists() else ""
    raise FileNotFoundError(f"{single} not found{hint}")


def check_layer_count(weights: dict, pattern: str, n_layers: int, key: str, where: str) -> None:
    """Before a model is built: the (checked) config's layer count ``key`` against the layers the
    weights hold (``pattern`` captures a layer's index). A count the file does not have is a
    ValueError naming the first missing layer, where building that many layers first could take all
    the memory (``n_layer: 10**30``) before the missing tensors were noticed."""
    found = {int(m.group(1)) for m in map(re.compile(pattern).match, weights) if m}
    missing = next((i for i in range(n_layers) if i not in found), None)
    if missing is not None:
        raise ValueError(f"{where}: config.json has {key}={n_layers} but the weights hold {len(found)} layers "
                         f"(missing tensors from layer {missing} on)")


def check_activation(config, key: str) -> None:
    """ValueError naming the config field for an activation the layers do not have (silu, tanh, ...)."""
    if config[key] not in nn._ACTIVATIONS or config[key] is None:
        supported = ", ".join(sorted(k for k in nn._ACTIVATIONS if k))
        raise ValueError(f"config: {key} {config[key]!r} is not supported (supported: {supported})")


def check_names(got: dict, expected: set, ignorable=(), where: str = "checkpoint", hint: str = "") -> None:
    """ValueError listing missing and unexpected tensors (and ``hint``, when given); names starting with
    an ``ignorable`` prefix (buffers, heads of other tasks) are allowed extras."""
    missing = sorted(expected - got.keys())
    unexpected = sorted(k for k in got.keys() - expected if not any(k.startswith(p) for p in ignorable))
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems) + (f" ({hint})" if hint else ""))


def as_ids(ids, name: str, ndim: int = 2, vocab: int | None = None, what: str = "vocabulary") -> np.ndarray:
    """``ids`` as int64 ``(batch, seq)`` (one row may come without the batch axis); with ``vocab``, an
    id outside ``[0, vocab)`` raises IndexError naming the argument and where (the embedding would
    too, but naming only its flat index into a table)."""
    a = np.asarray(ids)
    if a.ndim == ndim - 1:
        a = a[None]
    if a.ndim != ndim:
        raise ValueError(f"{name} must be (batch, seq) integers, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if vocab is not None and a.size:
        bad = (a < 0) | (a >= vocab)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise IndexError(f"{name}[{', '.join(map(str, where))}] is {a[where]}, outside the {what} [0, {vocab})")
    return a.astype(np.int64, copy=False)


def as_mask(mask, shape, name: str) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.ndim == len(shape) - 1:
        m = m[None]
    if m.shape != tuple(shape):
        raise ValueError(f"{name} must have the shape of input_ids {tuple(shape)}, got {m.shape}")
    return m != 0


def scratch(model, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` the model keeps for ``name`` and reuses while the shape holds (the
    vocabulary-sized dlogits of a training step: a fresh one each step costs ~50,000 page faults). Safe to
    overwrite at the next forward: a loss whose forward is not the latest refuses its backward."""
    have = model.__dict__.get("_scratch")
    if have is None:
        have = {}
        object.__setattr__(model, "_scratch", have)
    a = have.get(name)
    if a is None or a.shape != tuple(shape):
        a = have[name] = np.empty(shape, np.float32)
    return a


def device_tensor(a, device: str, dtype: str):
    """Weight ``a`` on ``device``: a view of its FlatStore's one copy there (the model's whole buffer goes
    over once), or a Tensor of its own for a table derived from the parameters; None stays None."""
    from .. import tensor
    if a is None:
        return None
    store = nn.store_of(a)
    return store.tensor(a, device, dtype) if store is not None else tensor(a, device, dtype)


def to_device(model, device, dtype):
    """What every model's ``.to(device, dtype)`` does: ``"cpu"`` (in float32) returns to the CPU path,
    anything else puts the parameters' one flat buffer there (``flatten_parameters``) and the weights
    become Tensors viewing it (``model._use_tensors``). Returns the model. Refused in training mode:
    training runs on the CPU, and moving the weights in the middle of a step would lose its state."""
    if model.training:
        raise RuntimeError(f"{type(model).__name__}.to({device!r}): the model is in training mode, which runs on "
                           "the CPU; call .eval() first")
    store = model.flatten_parameters() if str(device) != "cpu" else model.flat_parameters
    if store is not None:
        store.release_devices()  # device copies of an earlier .to() (the weights may have changed since)
    if str(device) == "cpu":
        if dtype not in (None, "float32"):
            raise ValueError(f"on the CPU the models compute in float32, got dtype {dtype!r} (for smaller "
                             "weights there: pack_weights('bfloat16') or 'int8')")
        object.__setattr__(model, "_device", None)
        return model
    model = model._use_tensors(str(device), dtype or "float32")
    gemm = _core._cuda_gemm()  # loads cuBLAS now, where it is installed
    if gemm.startswith("cublas") or "disabled" in gemm:  # disabled: by COREFORMER_CUBLAS=0, on purpose
        logger.debug("%s on %s: linear runs through %s", type(model).__name__, device, gemm)
    else:
        logger.warning("%s on %s: linear runs coreformer's own GPU kernels, slower than cuBLAS (%s); install "
                       "NVIDIA's cuBLAS (PyTorch's CUDA build brings it) or set CUDA_HOME", type(model).__name__,
                       device, gemm)
    return model
