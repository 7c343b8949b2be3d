"""Layers: plain Python classes that hold numpy weights and call ``coreformer.ops``.

Weights live behind ``state_dict()`` / ``load_state_dict()`` under PyTorch's names (a
``TransformerEncoder`` here takes the state dict of a ``torch.nn.TransformerEncoder``), and
``save(path)`` / ``load(path)`` write and map safetensors files. Layers are inference-only: a
forward is a handful of core calls, each with the GIL released.

Masks follow PyTorch's ``nn`` modules: a bool ``attn_mask`` is True where attending is NOT allowed
(a float one is added to the scores) and a ``*_key_padding_mask`` is True at padding.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from . import _core, ops
from ._args import flag, float_arg, int_arg
from ._log import logger
from ._typing import ArrayIn, ArrayLike, FloatArray, PackedWeight, Result
from . import safetensors as _st

__all__ = [
    "Parameter", "FlatStore", "Module", "ModuleList", "Linear", "LayerNorm", "Embedding", "Dropout", "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding", "MultiHeadAttention", "AdditiveAttention", "FeedForward", "KVCache", "DeviceKVCache",
    "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder",
    "manual_seed", "feed_forward", "grad_slot", "layer_forward", "layer_backward", "split_heads", "merge_heads", "packed_qkv_grad", "attend",
]

_rng = np.random.default_rng()
_dropout_rng = np.random.default_rng()  # Dropout seeds: its own stream, so making one never shifts the weights'


def manual_seed(seed: int) -> None:
    """Seed the generators that initialise new layers' weights and new ``Dropout``s' seeds."""
    global _rng, _dropout_rng
    _rng = np.random.default_rng(seed)
    _dropout_rng = np.random.default_rng([int_arg("seed", seed), 1])


_init = threading.local()


@contextlib.contextmanager
def uninitialised() -> Iterator[None]:
    """Layers made inside (in this thread) get placeholder parameters instead of random ones: for
    loaders that overwrite every parameter (``from_pretrained``), where drawing GPT-2 small's 124M
    random weights cost 1.6 s and 500 MB that were thrown away. A placeholder is a read-only zero-stride
    view of one zero, whatever its shape: it allocates nothing, so a ``config.json`` whose sizes the
    weights file does not back (``hidden_size`` 10**8 beside a 1 KB checkpoint) is refused by the
    shape check at load instead of first allocating what the sizes say."""
    before = getattr(_init, "skip", False)
    _init.skip = True
    try:
        yield
    finally:
        _init.skip = before


def initialising() -> bool:
    """Whether layers made now get their initial values (outside ``uninitialised()``); inside it,
    work on the parameters waits for the loaded ones."""
    return not getattr(_init, "skip", False)


def _placeholder(shape: tuple[int, ...]) -> FloatArray | None:
    """A parameter that will be loaded (inside ``uninitialised()``), or None outside it."""
    if initialising():
        return None
    try:
        return np.broadcast_to(np.float32(0), shape)
    except ValueError:  # numpy's own limit on a shape's element count
        raise ValueError(f"a parameter of shape {shape} is beyond any array") from None


def _uniform(shape: tuple[int, ...], bound: float) -> FloatArray:
    p = _placeholder(shape)
    return p if p is not None else _rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _normal(shape: tuple[int, ...], std: float = 1.0) -> FloatArray:
    p = _placeholder(shape)
    return p if p is not None else (_rng.standard_normal(shape) * std).astype(np.float32)


def _filled(shape: tuple[int, ...], value: float) -> FloatArray:
    p = _placeholder(shape)
    return p if p is not None else np.full(shape, value, np.float32)


def _as_f32(name: str, value: Any, contiguous: bool = True) -> FloatArray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    a = np.asarray(value)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.dtype != np.float32 or (contiguous and not a.flags.c_contiguous):
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("parameter %r, %s %s, copied as float32, C-contiguous", name, a.dtype, a.shape)
        a = np.ascontiguousarray(a, dtype=np.float32)
    return a


def _rebuild_members(owner: Module, items: dict[str, Any]) -> _Members:
    m = _Members(owner)
    dict.update(m, items)  # the owner's own state (mirrors included) is restored by pickle after this
    return m


class _Members(dict[str, Any]):
    """A module's parameters or children by name, each also mirrored into the module's instance
    ``__dict__``, so that ``module.weight`` is a plain attribute (a forward reads a few hundred per
    sentence or token; looking them up in these dicts through ``__getattr__`` cost ~5% of a small
    model's call). Every way of writing goes through here, so the mirror cannot go stale."""

    __slots__ = ("owner",)

    def __init__(self, owner: Module):
        super().__init__()
        self.owner = owner

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, value)
        self.owner.__dict__[name] = value

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self.owner.__dict__.pop(name, None)

    _missing = object()

    def pop(self, name: str, default: Any = _missing) -> Any:
        if name in self:
            self.owner.__dict__.pop(name, None)
            return super().pop(name)
        if default is _Members._missing:
            raise KeyError(name)
        return default

    def update(self, *args: Any, **kw: Any) -> None:
        for name, value in dict(*args, **kw).items():
            self[name] = value

    def setdefault(self, name: str, value: Any = None) -> Any:
        if name not in self:
            self[name] = value
        return self[name]

    def popitem(self) -> tuple[str, Any]:
        name, value = super().popitem()
        self.owner.__dict__.pop(name, None)
        return name, value

    def clear(self) -> None:
        for name in self:
            self.owner.__dict__.pop(name, None)
        super().clear()

    def __ior__(self, other: Any) -> _Members:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle (and copy) restore a dict subclass's items before its slots: through __setitem__ they
        # would need `owner` before it is set
        return _rebuild_members, (self.owner, dict(self))


class Parameter:
    """A trainable array: ``data`` (float32, C-contiguous; ``coreformer.optim`` updates it in place, so a
    layer holding the same array sees every step) and ``grad`` (None until a backward fills it; backward
    passes accumulate into it, as torch's, so gradients of several batches add up until ``zero_grad``).

    ``Parameter(array)`` wraps a float32 C-contiguous array without copying it (anything else is
    converted once, to a new array). A module's ``named_parameters()`` yields Parameters over its own
    arrays; ``module.train()`` makes those writable (a mapped checkpoint's are copied once)."""

    __slots__ = ("data", "grad", "requires_grad")

    def __init__(self, data: ArrayLike, requires_grad: bool = True):
        a = np.asarray(data)
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            a = np.ascontiguousarray(a, dtype=np.float32)
        self.data: FloatArray = a  # read-only data (a mapped checkpoint) is refused by the optimisers
        self.grad: FloatArray | None = None
        self.requires_grad = flag("requires_grad", requires_grad)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def numel(self) -> int:
        return self.data.size

    def zero_grad(self, set_to_none: bool = True) -> None:
        if set_to_none:
            self.grad = None
        elif self.grad is not None:
            self.grad[...] = 0

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self.data if dtype is None else self.data.astype(dtype)

    def __repr__(self) -> str:
        grad = "None" if self.grad is None else f"array{self.grad.shape}"
        return f"Parameter(shape={self.data.shape}, grad={grad}, requires_grad={self.requires_grad})"


_stores: weakref.WeakValueDictionary[int, FlatStore] = weakref.WeakValueDictionary()


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    """``b`` starts where ``a`` ends, both C-contiguous views into one 1-D float32 buffer (a FlatStore's)."""
    base = a.base
    return (isinstance(base, np.ndarray) and b.base is base and base.ndim == 1 and base.dtype == np.float32
            and a.flags.c_contiguous and b.flags.c_contiguous and _addr(a) + a.nbytes == _addr(b))


class FlatStore:
    """A module tree's parameters in one float32 buffer, as llm.c lays them out (``Module.flatten_parameters``
    makes it; ``train()`` and ``.to(device)`` do so on their own).

    ``data`` holds every parameter once (an array two modules share takes one slot), the weight-decayed
    ones first, in the range ``decay`` (transformers' rule: every parameter but biases and LayerNorm
    weights), the others after; ``grad``, made at the first backward, has the same layout, and
    ``coreformer.optim`` keeps its moments in buffers of that layout too, so a step is one pass over a
    few long ranges. Every parameter of the tree is a view into ``data`` (``slots``: dotted name ->
    ``(offset, shape)``): the layers compute with, and the optimisers update, that one buffer."""

    __slots__ = ("data", "grad", "slots", "decay", "_tensors", "__weakref__")

    def __init__(self, entries: list[tuple[list[str], np.ndarray, bool]]):
        order = [i for i, e in enumerate(entries) if e[2]] + [i for i, e in enumerate(entries) if not e[2]]
        offsets, total = {}, 0
        for i in order:
            offsets[i] = total
            total += entries[i][1].size
        n_decay = sum(e[1].size for e in entries if e[2])
        self.data: FloatArray = np.empty(total, np.float32)
        self.grad: FloatArray | None = None
        self.slots: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.decay = slice(0, n_decay)
        self._tensors: dict[tuple[str, str], Any] = {}
        for i, (names, a, _) in enumerate(entries):
            off = offsets[i]
            self.data[off:off + a.size] = a.reshape(-1)
            for n in names:
                self.slots[n] = (off, tuple(a.shape))
        _stores[id(self.data)] = self

    @property
    def size(self) -> int:
        return int(self.data.size)

    def __repr__(self) -> str:
        return (f"FlatStore({len(self.slots)} parameters, {self.size} floats, weight-decayed "
                f"[{self.decay.start}, {self.decay.stop}))")

    def view(self, name: str) -> FloatArray:
        """Parameter ``name``'s slot of ``data``."""
        off, shape = self.slots[name]
        return self.data[off:off + math.prod(shape)].reshape(shape)

    def offset(self, a: np.ndarray) -> int | None:
        """Where ``a`` starts in ``data`` (in elements), or None when it is not a view into it."""
        if a.base is not self.data:
            return None
        return (_addr(a) - _addr(self.data)) // 4

    def holds(self, name: str, a: np.ndarray) -> bool:
        slot = self.slots.get(name)
        return slot is not None and a.shape == slot[1] and a.flags.c_contiguous and self.offset(a) == slot[0]

    def holds_all(self, named: list[tuple[str, np.ndarray]]) -> bool:
        """Whether ``named`` (a module's ``(name, array)`` pairs) are exactly this store's slots."""
        return len(named) == len(self.slots) and all(self.holds(n, a) for n, a in named)

    def grad_for(self, a: np.ndarray) -> FloatArray | None:
        """The slot of ``grad`` that matches parameter array ``a`` (a view into ``data``), or None."""
        off = self.offset(a)
        if off is None or not a.flags.c_contiguous:
            return None
        if self.grad is None:
            self.grad = np.empty_like(self.data)  # every slot is written before it is read (first backward)
        return self.grad[off:off + a.size].reshape(a.shape)

    def release_devices(self) -> None:
        """Forget the copies of ``data`` made on devices (``tensor``); views handed out keep theirs alive."""
        self._tensors.clear()

    def tensor(self, a: np.ndarray, device: str, dtype: str) -> Any:
        """``a`` on ``device`` in ``dtype``: a view of this buffer's one copy there when ``a`` is a view
        into ``data`` (the copy is made once per device and dtype), else a Tensor of its own (a table
        derived from the parameters)."""
        from . import tensor as _tensor  # the package's public constructor
        off = self.offset(a)
        if off is None or not a.flags.c_contiguous:
            return _tensor(a, device, dtype)
        whole = self._tensors.get((device, dtype))
        if whole is None:
            whole = self._tensors[(device, dtype)] = _tensor(self.data, device, dtype)
        return whole[off:off + a.size].reshape(a.shape)


def store_of(a: np.ndarray) -> FlatStore | None:
    """The FlatStore whose buffer ``a`` views, if any."""
    base = a.base
    s = _stores.get(id(base)) if isinstance(base, np.ndarray) else None
    return s if s is not None and s.data is base else None


def grad_slot(params: list[Parameter | None]) -> FloatArray | None:
    """Where a backward may write the gradient of ``params`` directly (``ops.linear_backward``'s
    ``dweight_out``): when none holds a gradient yet and they lie one after another in a FlatStore, their
    joined slot of its gradient buffer (``Module._accumulate`` then keeps it without a copy); else None."""
    if any(p is None or p.grad is not None for p in params):
        return None
    slots = []
    for p in params:
        assert p is not None
        store = store_of(p.data)
        g = store.grad_for(p.data) if store is not None else None
        if g is None:
            return None
        slots.append(g)
    if len(slots) == 1:
        return slots[0]
    span = joined(slots)
    return span if np.may_share_memory(span, slots[0]) else None


def joined(arrays: list[Any]) -> FloatArray:
    """The arrays one after another along the first axis: a view when they already lie so in one
    buffer (BERT's query, key and value weights in a flat store: the fused QKV matrix is then the same
    memory), else a new array."""
    first, base = arrays[0], arrays[0].base
    if not (isinstance(base, np.ndarray) and first.flags.c_contiguous
            and all(a.shape[1:] == first.shape[1:] and adjacent(p, a) for p, a in zip(arrays, arrays[1:]))):
        return np.concatenate(arrays)
    start = (_addr(first) - _addr(base)) // 4
    n = sum(a.size for a in arrays)
    return base[start:start + n].reshape((-1,) + first.shape[1:])


class Module:
    """Base class: numpy arrays assigned as attributes are parameters, ``Module``s are children.

    ``state_dict()`` names parameters by their dotted path, as PyTorch does. Assigning ``None`` to a
    parameter (a layer built with ``bias=False``) leaves it out of the state dict.
    """

    _params: _Members
    _modules: _Members
    _packed: dict[str, PackedWeight]
    _packed_from: dict[str, np.ndarray]
    _pack_dtype: str | None

    if TYPE_CHECKING:  # parameters and children are attributes made by assignment
        def __getattr__(self, name: str) -> Any: ...

    def __init__(self) -> None:
        object.__setattr__(self, "_params", _Members(self))
        object.__setattr__(self, "_modules", _Members(self))

    def __setattr__(self, name: str, value: Any) -> None:
        params, modules = self.__dict__.get("_params"), self.__dict__.get("_modules")
        if params is None or modules is None:
            raise AttributeError(f"{type(self).__name__}.__init__ must call Module.__init__ first")
        if isinstance(value, Module):
            params.pop(name, None)
            modules[name] = value
        elif isinstance(value, np.ndarray) or name in params:
            # A parameter stays a float32 array whatever is assigned to it (a torch tensor, a list, float64):
            # a torch tensor became a plain attribute that the forward used while state_dict() and save()
            # kept the old array.
            converted = not isinstance(value, np.ndarray) or (name in params and value.dtype != np.float32)
            if value is not None and converted:
                value = _as_f32(name, value, contiguous=False)
            modules.pop(name, None)
            params[name] = value
            if value is not None and name in (self.__dict__.get("_param_objs") or {}):
                self._param(name)  # the Parameter an optimiser may hold now points at the new array
            if name in self.__dict__.get("_packed", ()):
                self._pack(self._pack_dtype)  # a packed copy never goes stale
        else:
            object.__setattr__(self, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def _named_arrays(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name, p in self._params.items():
            if p is not None:
                yield prefix + name, p
        for name, m in self._modules.items():
            yield from m._named_arrays(prefix + name + ".")

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, Parameter)`` for every parameter, under torch's names: ``.data`` is the array
        the layer computes with (updated in place by ``coreformer.optim``), ``.grad`` what backward
        passes accumulated."""
        for name, p in self._params.items():
            if p is not None:
                yield prefix + name, self._param(name)
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def modules(self) -> Iterator[Module]:
        yield self
        for m in self._modules.values():
            yield from m.modules()

    def num_parameters(self) -> int:
        return sum(p.size for _, p in self._named_arrays())

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{dotted name: array}`` (the arrays themselves, not copies)."""
        return dict(self._named_arrays())

    # -- training ------------------------------------------------------------------------------------
    # Layers start in eval mode (inference: nothing is saved); train() switches a module and its children
    # to training: each forward then keeps what its backward needs, and backward(grad_output) returns the
    # gradient of the input and adds the parameters' gradients into their .grad (accumulating, as torch).
    training = False

    def train(self, mode: bool = True) -> Module:
        """Training mode (``mode=False``: eval) for this module and its children. Training drops packed
        weight copies (the forward then reads the arrays the optimiser updates) and makes every
        parameter a writable float32 C-contiguous array (a mapped checkpoint's are copied once); eval
        drops what training forwards saved and packs the weights again as they were packed before."""
        mode = flag("mode", mode)
        packed = self.weights_dtype
        if mode and packed:  # eval() packs them again
            object.__setattr__(self, "_packed_before_training", packed)
        for m in self.modules():
            object.__setattr__(m, "training", mode)
            object.__setattr__(m, "_saved", None)
            if mode and m.__dict__.get("_pack_dtype"):
                m.unpack_weights()
        if mode:
            self.flatten_parameters()
        repack = self.__dict__.get("_packed_before_training")
        if not mode and repack:
            object.__setattr__(self, "_packed_before_training", None)
            self.pack_weights(repack)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def flatten_parameters(self) -> FlatStore:
        """Put every parameter of this module and its children into one float32 buffer (a
        :class:`FlatStore`, returned; also ``module.flat_parameters``) and make each a view into it,
        under the same names: the decayed matrices in one range, an array shared by two modules in one
        slot, values and any ``.grad`` kept. The Parameter objects stay the same (an optimiser made
        before keeps working). Done already (nothing replaced since): returns the store as it is.
        ``train()`` calls it; ``.to(device)`` moves this one buffer."""
        named = list(self._named_arrays())
        store = self.__dict__.get("_flat")
        if store is not None and store.holds_all(named):
            return store
        entries: list[tuple[list[str], np.ndarray, bool]] = []
        index: dict[int, int] = {}
        for name, a in named:
            if id(a) in index:  # tied: one slot under both names
                entries[index[id(a)]][0].append(name)
                continue
            mod, leaf = self._owner(name)
            decay = not (leaf == "bias" or leaf.endswith("_bias") or isinstance(mod, LayerNorm))
            index[id(a)] = len(entries)
            entries.append(([name], a, decay))
        held = {}
        for names, _, _ in entries:
            for name in names:
                mod, leaf = self._owner(name)
                if leaf in (mod.__dict__.get("_param_objs") or {}):
                    held[name] = mod._param(leaf)  # made to point at the current array first
        store = FlatStore(entries)
        for names, _, _ in entries:
            v = store.view(names[0])
            for name in names:
                mod, leaf = self._owner(name)
                mod._params[leaf] = v
                p = held.get(name)
                if p is not None:  # the same Parameter over the new view; its gradient moves along
                    old = p.grad
                    p.data = v
                    if old is not None:
                        g = store.grad_for(v)
                        assert g is not None
                        g[...] = old
                        p.grad = g
        object.__setattr__(self, "_flat", store)
        self._after_load()  # views made of several parameters (BERT's fused QKV) are made again over the store
        return store

    @property
    def flat_parameters(self) -> FlatStore | None:
        """The :class:`FlatStore` holding this module's parameters (None before ``flatten_parameters``
        or after a parameter was replaced by another array)."""
        store = self.__dict__.get("_flat")
        return store if store is not None and store.holds_all(list(self._named_arrays())) else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            p.zero_grad(set_to_none)

    def seed_dropout(self, seed: int) -> Module:
        """Give every ``Dropout`` inside a seed derived from ``seed`` (and its place) and rewind its stream:
        the same seed, data and thread count then give bit-identical training runs."""
        seed = int_arg("seed", seed)
        for i, m in enumerate(x for x in self.modules() if isinstance(x, Dropout)):
            m.seed = (seed * 1_000_003 + i) % 2 ** 64
            m.offset = 0
        return self

    gradient_checkpointing = False

    def gradient_checkpointing_enable(self) -> Module:
        """Activation checkpointing, as transformers' method of that name: in training, each layer of a
        stack keeps only its input; its backward first runs the layer's forward again (dropout draws the
        same masks: they come from the stream offsets the first run used), then differentiates it. The
        activations held between forward and backward shrink from every layer's to one layer's, for about
        one more forward's time; the gradients are the same, bit for bit."""
        for m in self.modules():
            object.__setattr__(m, "gradient_checkpointing", True)
        return self

    def gradient_checkpointing_disable(self) -> Module:
        for m in self.modules():
            object.__setattr__(m, "gradient_checkpointing", False)
        return self

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(self.gradient_checkpointing)

    def _param(self, name: str) -> Parameter:
        """The Parameter over parameter `name`'s array (made once; when the array is replaced, the same
        Parameter is pointed at the new one, so an optimiser holding it steps what the layer uses)."""
        cache = self.__dict__.get("_param_objs")
        if cache is None:
            cache = {}
            object.__setattr__(self, "_param_objs", cache)
        a = self._params[name]
        if a is None:
            raise AttributeError(f"{type(self).__name__} has no parameter {name!r} (it was built without it)")
        p = cache.get(name)
        if p is None or p.data is not a:
            if not (a.dtype == np.float32 and a.flags.c_contiguous):
                a = np.ascontiguousarray(a, dtype=np.float32)  # the layer then computes with this very array
                self._params[name] = a
            if p is None:
                p = cache[name] = Parameter(a)
            else:  # the array was replaced: the same Parameter (an optimiser holds it) over the new one
                p.data = a
                if p.grad is not None and p.grad.shape != a.shape:
                    p.grad = None
        return p

    def _accumulate(self, name: str, grad: np.ndarray) -> None:
        """Adds a backward's gradient into parameter `name`'s .grad; the first becomes .grad itself when it
        is an array of its own (a backward's fresh result), else a copy (a view into a larger gradient)."""
        p = self._param(name)
        if p.grad is None:
            store = store_of(p.data)
            slot = store.grad_for(p.data) if store is not None else None
            if slot is not None:  # the flat gradient buffer's slot, in the parameters' layout
                g = np.asarray(grad)
                if g.base is not slot.base or _addr(g) != _addr(slot):
                    slot[...] = g  # not already written there (grad_slot + dweight_out): copied in
                p.grad = slot
                return
            g = np.asarray(grad)
            own = (g.dtype == np.float32 and g.flags.owndata and g.flags.c_contiguous and g.flags.writeable
                   and g.shape == p.shape)
            p.grad = g if own else np.array(g, dtype=np.float32, order="C")
        else:
            p.grad += grad

    def _grad_outs(self, weight: str, bias: str) -> dict[str, Any]:
        """``linear_backward``'s ``dweight_out`` / ``dbias_out`` for parameters ``weight`` and ``bias``
        (their slots of the flat gradient buffer when they have no gradient yet; see ``grad_slot``)."""
        return {"dweight_out": grad_slot([self._param(weight)]),
                "dbias_out": grad_slot([self._param(bias)]) if self._params.get(bias) is not None else None}

    def _save(self, **saved: Any) -> None:
        object.__setattr__(self, "_saved", saved)

    def _take(self) -> dict[str, Any]:
        saved = self.__dict__.get("_saved")
        if not saved:
            what = "in training mode (call .train() first)" if not self.training else "since the last backward"
            raise RuntimeError(f"{type(self).__name__}.backward() needs a forward {what}: nothing is saved to "
                               "differentiate")
        object.__setattr__(self, "_saved", None)
        return saved

    def backward(self, grad_output: ArrayIn) -> Any:
        """The gradient of this module's input from that of its output, after a training-mode forward;
        the parameters' gradients are added into their ``.grad``. One backward per forward."""
        raise NotImplementedError(f"{type(self).__name__} has no backward yet")

    def _owner(self, dotted: str) -> tuple[Module, str]:
        mod = self
        *path, leaf = dotted.split(".")
        for p in path:
            mod = mod._modules[p]
        return mod, leaf

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, contiguous: bool = True) -> Module:
        """Copy weights in by name. Values may be numpy arrays or torch tensors; they are converted to
        float32 C-contiguous (float32 C-contiguous arrays, mapped ones included, are kept without a
        copy; with ``contiguous=False`` float32 arrays of any strides are, e.g. transposed views of a
        mapped file, for weights that will be packed before use). Missing or unexpected names (with
        ``strict``) and wrong shapes raise ``ValueError`` listing them; nothing is changed then."""
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing tensors: {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected tensors: {', '.join(unexpected)}")
        converted: dict[str, FloatArray] = {}
        for k, v in state_dict.items():
            if k not in own:
                continue
            a = _as_f32(k, v, contiguous)
            if a.shape != own[k].shape:
                problems.append(f"{k} has shape {tuple(a.shape)}, expected {tuple(own[k].shape)}")
            converted[k] = a
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        for k, a in converted.items():
            mod, leaf = self._owner(k)
            current = mod._params[leaf]
            if store_of(current) is not None and current.flags.writeable:
                current[...] = a  # a flat store's slot: written in place, so the store stays whole
            else:
                mod._params[leaf] = a
        self._after_load()
        return self

    def _after_load(self) -> None:
        for m in self._modules.values():
            m._after_load()
        if self.__dict__.get("_pack_dtype"):
            self._pack(self._pack_dtype)

    # Names of the (out, in) weights a layer multiplies by (see pack_weights).
    _packable: tuple[str, ...] = ()

    def pack_weights(self, dtype: str = "float32") -> Module:
        """Pack every layer's weight matrices once (``ops.pack_weight``) for the forward to use.

        ``ops.linear`` on a plain array repacks the weight into the GEMM's layout on every call;
        packed once, short inputs run up to ~2x faster (decoding, one sentence). ``"bfloat16"``
        halves the bytes a forward streams and ``"int8"`` (one scale per output row) quarters them,
        for decoding, which is bound by memory bandwidth; products and sums stay float32. ``state_dict()`` keeps returning the float32 arrays; assigning
        or loading a weight repacks it. An array modified *in place* needs ``pack_weights`` again.
        """
        if dtype not in ("float32", "bfloat16", "int8"):
            raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'int8', got {dtype!r}")
        for m in self._modules.values():
            m.pack_weights(dtype)
        self._pack(dtype)
        return self

    def unpack_weights(self) -> Module:
        """Drop the packed copies: the forward goes back to the float32 arrays."""
        for m in self._modules.values():
            m.unpack_weights()
        object.__setattr__(self, "_packed", {})
        object.__setattr__(self, "_packed_from", {})
        object.__setattr__(self, "_pack_dtype", None)
        return self

    @property
    def weights_dtype(self) -> str | None:
        """The dtype the weights are packed in (``None`` when not packed)."""
        own = self.__dict__.get("_pack_dtype")
        return own or next((m.weights_dtype for m in self._modules.values() if m.weights_dtype), None)

    def _pack(self, dtype: str | None) -> None:
        if dtype is None:  # callers repack what was packed: never None there
            return
        packed, sources = {}, {}
        for name in self._packable:
            w = getattr(self, name, None)
            if w is not None:
                packed[name], sources[name] = ops.pack_weight(w, dtype), w
        object.__setattr__(self, "_packed", packed)
        object.__setattr__(self, "_packed_from", sources)
        object.__setattr__(self, "_pack_dtype", dtype if packed else None)

    def _weight(self, name: str) -> Any:
        """The weight the forward multiplies by: its packed copy when there is one. A weight that is
        another module's parameter (a tied head reads the embedding's) can be replaced without this
        module seeing the assignment: the packed copy remembers the array it was made from and is
        remade when that is no longer the weight."""
        packed = self.__dict__.get("_packed")
        if packed and name in packed:
            current = getattr(self, name)
            if current is not self.__dict__["_packed_from"][name]:
                self._pack(self._pack_dtype)
                packed = self.__dict__["_packed"]
                if name not in packed:  # the weight went away (None): use what there is
                    return current
            return packed[name]
        return getattr(self, name)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state dict to a safetensors file."""
        _st.save_file(self.state_dict(), path)

    def load(self, path: str | os.PathLike[str], strict: bool = True) -> Module:
        """Load weights from a safetensors file (mapped, not read into a second copy)."""
        return self.load_state_dict(_st.load_file(path), strict=strict)

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self) -> str:
        return ""


class ModuleList(Module):
    """A list of modules named ``0``, ``1``, ... in the state dict."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, m: Module) -> None:
        self._modules[str(len(self._modules))] = m

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._modules.values()))

    def __getitem__(self, i: int) -> Any:
        return list(self._modules.values())[i]


_ACTIVATIONS = {None: None, "relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def _activation(name: str | None) -> str | None:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(k for k in _ACTIVATIONS if k)} or None, got {name!r}")
    return _ACTIVATIONS[name]


def _train_input(x: Any, name: str) -> FloatArray:
    """An input of a training forward: numpy float32 (training runs on the CPU in this version)."""
    if isinstance(x, _core.Tensor):
        raise TypeError(f"{name}: training runs on numpy arrays (the CPU) in this version, got a coreformer.Tensor "
                        "on " + str(x.device))
    return np.asarray(x, dtype=np.float32)


_ACT_FORWARD: dict[str, Callable[[FloatArray], FloatArray]] = {
    "relu": ops.relu, "gelu": ops.gelu, "gelu_tanh": lambda z: ops.gelu(z, "tanh")}


def _into(out: Any, y: FloatArray) -> Any:
    """A training forward's result written into a caller's ``out`` (a numpy array), or y itself."""
    if out is None:
        return y
    if not isinstance(out, np.ndarray):
        raise TypeError("out: training runs on numpy arrays (the CPU) in this version")
    out[...] = y
    return out


class Linear(Module):
    """``y = activation(x @ weight.T + bias) (+ residual)``; weight ``(out_features, in_features)``.
    In training mode the forward keeps x (and the pre-activation) and ``backward(dy)`` returns dx (a
    residual's gradient is dy itself)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str | None = None):
        super().__init__()
        self.in_features, self.out_features = int_arg("in_features", in_features), int_arg("out_features", out_features)
        self.activation = _activation(activation)
        bound = 1.0 / math.sqrt(max(self.in_features, 1))
        self.weight = _uniform((self.out_features, self.in_features), bound)
        self.bias = _uniform((self.out_features,), bound) if bias else None

    _packable = ("weight",)

    def forward(self, x: ArrayIn, residual: ArrayIn | None = None, out: Result | None = None) -> Any:
        if self.training:
            x = _train_input(x, "x")
            if self.activation is None:
                y = ops.linear(x, self.weight, self.bias, residual=residual, out=out)
                self._save(x=x, pre=None)
                return y
            z = ops.linear(x, self.weight, self.bias)
            y = _ACT_FORWARD[self.activation](z)
            self._save(x=x, pre=z)
            if residual is not None:
                y += _train_input(residual, "residual")
            return _into(out, y)
        return ops.linear(x, self._weight("weight"), self.bias, self.activation, residual=residual, out=out)

    def backward(self, grad_output: ArrayIn) -> FloatArray:
        saved = self._take()
        x = saved["x"]
        if callable(x):  # not kept: recomputed from the layer before (feed_forward)
            x = x()
        dx, dw, db = ops.linear_backward(grad_output, x, self.weight, self.activation, saved["pre"],
                                         **self._grad_outs("weight", "bias"))
        self._accumulate("weight", dw)
        if self.bias is not None:
            self._accumulate("bias", db)
        return dx

    def extra_repr(self) -> str:
        act = f", activation={self.activation!r}" if self.activation else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{act}"


class LayerNorm(Module):
    """LayerNorm over the last axis; ``forward(x, residual=None, return_sum=False)`` normalises
    ``x + residual`` in one pass and can hand back the sum (a pre-LN block's next residual)."""

    def __init__(self, normalized_shape: int | tuple[int] | list[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True):
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):  # torch's (E,) form; over the last axis only
            if len(normalized_shape) != 1:
                raise ValueError(f"normalized_shape must be one size (the last axis), got {tuple(normalized_shape)}")
            normalized_shape = normalized_shape[0]
        self.normalized_shape, self.eps = int_arg("normalized_shape", normalized_shape), float_arg("eps", eps)
        self.weight = _filled((self.normalized_shape,), 1.0) if elementwise_affine else None
        self.bias = _filled((self.normalized_shape,), 0.0) if elementwise_affine and flag("bias", bias) else None

    def forward(self, x: ArrayIn, residual: ArrayIn | None = None, return_sum: bool = False,
                out: Result | None = None) -> Any:
        if self.training:
            x = _train_input(x, "x")
            if residual is not None:
                residual = _train_input(residual, "residual")
            self._save(x=x, residual=residual)
        return ops.layer_norm(x, self.weight, self.bias, self.eps, residual, return_sum=return_sum, out=out)

    def backward(self, grad_output: ArrayIn, grad_sum: ArrayIn | None = None) -> FloatArray:
        """dx (with a residual: also the residual's gradient, the norm reads their sum). ``grad_sum``: the
        gradient of the sum a ``return_sum=True`` forward handed back, added in."""
        saved = self._take()
        dx, dw, db = ops.layer_norm_backward(grad_output, saved["x"], self.weight, self.eps, saved["residual"])
        if self.weight is not None:
            self._accumulate("weight", dw)
        if self.bias is not None:
            self._accumulate("bias", db)
        if grad_sum is not None:
            dx += grad_sum
        return dx

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps:g}"


class Embedding(Module):
    """Rows of ``weight (num_embeddings, embedding_dim)`` for integer ids of any shape."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings = int_arg("num_embeddings", num_embeddings)
        self.embedding_dim = int_arg("embedding_dim", embedding_dim)
        self.weight = _normal((self.num_embeddings, self.embedding_dim))
        self.padding_idx: int | None = None
        if padding_idx is not None:  # as torch: a row of zeros at first (for inference nothing else differs)
            p = int_arg("padding_idx", padding_idx)
            if not -self.num_embeddings <= p < self.num_embeddings:
                raise IndexError(f"padding_idx {p} is outside [-{self.num_embeddings}, {self.num_embeddings})")
            self.padding_idx = p % self.num_embeddings
            if initialising():
                self.weight[self.padding_idx] = 0.0

    def forward(self, ids: ArrayIn) -> FloatArray:
        if self.training:
            ids = np.asarray(ids)
            self._save(ids=ids)
        return ops.embedding(ids, self.weight)

    def backward(self, grad_output: ArrayIn) -> None:
        """Adds the table's gradient (a deterministic scatter-add; ``padding_idx``'s row gets none, as torch).
        Ids have no gradient: returns None."""
        ids = self._take()["ids"]
        self._accumulate("weight", ops.embedding_backward(grad_output, ids, self.num_embeddings, self.padding_idx))

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class SinusoidalPositionalEncoding(Module):
    """Adds Vaswani et al.'s fixed sinusoidal encodings: ``forward(x, offset=0)`` returns
    ``x + pe[offset : offset + S]`` for x ``(..., S, dim)``. No parameters; the table grows on demand."""

    def __init__(self, dim: int, max_len: int = 1024):
        super().__init__()
        self.dim = int_arg("dim", dim)
        self._pe: FloatArray
        object.__setattr__(self, "_pe", ops.sinusoidal_positions(max_len, self.dim))

    def encodings(self, start: int, stop: int) -> np.ndarray:
        if start < 0:
            raise ValueError(f"offset must be >= 0, got {start}")
        if stop > self._pe.shape[0]:
            object.__setattr__(self, "_pe", ops.sinusoidal_positions(max(stop, 2 * self._pe.shape[0]), self.dim))
        return self._pe[start:stop]

    def forward(self, x: ArrayLike, offset: int = 0) -> FloatArray:
        x = np.asarray(x, np.float32)
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (..., S, {self.dim}), got shape {x.shape}")
        return x + self.encodings(offset, offset + x.shape[-2])


class LearnedPositionalEmbedding(Module):
    """A learned table ``weight (num_positions, dim)`` (BERT, GPT-2): ``forward(x, offset=0)`` returns
    ``x + weight[offset : offset + S]``; ``forward(x, position_ids=ids)`` adds the rows of ``ids``.
    Positions past the table raise ``ValueError``."""

    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.num_positions, self.dim = int_arg("num_positions", num_positions), int_arg("dim", dim)
        self.weight = _normal((self.num_positions, self.dim), 0.02)

    def forward(self, x: ArrayLike, offset: int = 0, position_ids: ArrayIn | None = None) -> FloatArray:
        x = np.asarray(x, np.float32)
        if position_ids is not None:
            if self.training:
                self._save(position_ids=np.asarray(position_ids), offset=0, length=0)
            return x + ops.embedding(position_ids, self.weight)
        s = x.shape[-2]
        if offset < 0 or offset + s > self.num_positions:
            raise ValueError(f"positions {offset}..{offset + s - 1} are outside the model's {self.num_positions} "
                             f"positions (sequence of length {s} at offset {offset})")
        if self.training:
            self._save(position_ids=None, offset=offset, length=s)
        return x + self.weight[offset:offset + s]

    def backward(self, grad_output: ArrayIn) -> FloatArray:
        """dx (= grad_output); the rows the forward added get their gradient."""
        saved = self._take()
        dy = np.asarray(grad_output, np.float32)
        if saved["position_ids"] is not None:
            self._accumulate("weight", ops.embedding_backward(dy, saved["position_ids"], self.num_positions))
        else:
            g = np.zeros_like(self.weight)
            rows = dy.reshape(-1, saved["length"], self.dim)
            g[saved["offset"]:saved["offset"] + saved["length"]] = rows.sum(axis=0, dtype=np.float64)
            self._accumulate("weight", g)
        return dy


def _count(name: str, value: Any, least: int = 0) -> int:
    n = int_arg(name, value)
    if n < least:
        raise ValueError(f"{name} must be >= {least}, got {n}")
    return n


def _cache_shape(batch: int, num_heads: int, head_dim: int, capacity: int) -> tuple[int, int, int, int]:
    return (_count("KV cache batch", batch), _count("KV cache num_heads", num_heads, 1),
            max(_count("KV cache capacity", capacity), 1), _count("KV cache head_dim", head_dim, 1))


class KVCache:
    """Keys and values of one attention layer, preallocated ``(B, H, capacity, Dh)`` and appended in
    place; ``keys()`` / ``values()`` are views of the first ``length`` positions (no copy: the
    attention kernel reads strided views). Past the capacity it doubles (one copy)."""

    def __init__(self, batch: int, num_heads: int, head_dim: int, capacity: int):
        shape = _cache_shape(batch, num_heads, head_dim, capacity)
        self.k = np.empty(shape, np.float32)
        self.v = np.empty(shape, np.float32)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def __repr__(self) -> str:
        b, h, _, dh = self.k.shape
        return f"KVCache(batch={b}, num_heads={h}, head_dim={dh}, length={self.length}, capacity={self.capacity})"

    def reserve(self, n: int) -> None:
        """Make room for n more positions (doubling the capacity, one copy, when they do not fit)."""
        if self.length + n > self.capacity:
            cap = max(self.length + n, 2 * self.capacity)
            for name in ("k", "v"):
                old = getattr(self, name)
                new = np.empty(old.shape[:2] + (cap,) + old.shape[3:], np.float32)
                new[:, :, :self.length] = old[:, :, :self.length]
                setattr(self, name, new)

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """k, v ``(B, H, S, Dh)`` (any strides)."""
        b, h, _, dh = self.k.shape
        for name, a in (("keys", k), ("values", v)):
            if a.ndim != 4 or (a.shape[0], a.shape[1], a.shape[3]) != (b, h, dh) or a.shape[2] != k.shape[2]:
                raise ValueError(f"this KV cache holds (B, H, S, Dh) = ({b}, {h}, S, {dh}); the {name} to append "
                                 f"have shape {tuple(a.shape)} (keys {tuple(k.shape)})")
        s = k.shape[2]
        self.reserve(s)
        self.k[:, :, self.length:self.length + s] = k
        self.v[:, :, self.length:self.length + s] = v
        self.length += s

    def set(self, k: np.ndarray, v: np.ndarray) -> None:
        """Replace the contents (cross-attention's keys and values of the encoder's output)."""
        self.length = 0
        self.append(k, v)

    def keys(self) -> np.ndarray:
        return self.k[:, :, :self.length]

    def values(self) -> np.ndarray:
        return self.v[:, :, :self.length]

    def reorder(self, index: ArrayLike) -> None:
        """Keep batch rows ``index`` (beam search), in place."""
        index = np.asarray(index)
        self.k[:len(index), :, :self.length] = self.k[index, :, :self.length]
        self.v[:len(index), :, :self.length] = self.v[index, :, :self.length]
        if len(index) != self.k.shape[0]:
            self.k, self.v = self.k[:len(index)], self.v[:len(index)]


class DeviceKVCache:
    """A ``KVCache`` on a device: keys and values ``(B, H, capacity, Dh)`` as ``coreformer.Tensor``s that the
    fused layers (``ops.transformer_encoder_layer`` / ``transformer_decoder_layer``) write in place.
    ``reserve`` doubles the capacity through the host (one round trip; callers size it for the whole
    run); ``reorder`` keeps batch rows on the device (beam search)."""

    def __init__(self, batch: int, num_heads: int, head_dim: int, capacity: int, device: str, dtype: str = "float32"):
        shape = _cache_shape(batch, num_heads, head_dim, capacity)
        self.device, self.dtype = device, dtype
        self.k = _core.tensor(np.zeros(shape, np.float32), device, dtype)
        self.v = _core.tensor(np.zeros(shape, np.float32), device, dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def __repr__(self) -> str:
        b, h, _, dh = self.k.shape
        return (f"DeviceKVCache(batch={b}, num_heads={h}, head_dim={dh}, length={self.length}, "
                f"capacity={self.capacity}, device={self.device!r}, dtype={self.dtype!r})")

    def reserve(self, n: int) -> None:
        if self.length + n <= self.capacity:
            return
        cap = max(self.length + n, 2 * self.capacity)
        for name in ("k", "v"):
            old = getattr(self, name).numpy()
            new = np.zeros(old.shape[:2] + (cap,) + old.shape[3:], np.float32)
            new[:, :, :self.length] = old[:, :, :self.length]
            setattr(self, name, _core.tensor(new, self.device, self.dtype))

    def reorder(self, index: ArrayLike) -> None:
        """Keep batch rows ``index``: a row gather on the device (an embedding lookup over the rows)."""
        index = _core.tensor(np.asarray(index, np.int64), self.device)
        for name in ("k", "v"):
            t = getattr(self, name)
            rows = ops.embedding(index, t.reshape(t.shape[0], -1))
            setattr(self, name, rows.reshape(rows.shape[0], *t.shape[1:]))


def feed_forward(first: Linear, second: Linear, x: Any, residual: Any = None) -> Any:
    """``second(first(x), residual=residual)``, the position-wise feed-forward. In training, when ``first``
    has an activation, ``second`` does not keep its input (the activation's output, the widest activation
    of a layer): its backward recomputes it from the pre-activation ``first`` keeps anyway -- a quarter
    less memory per layer for one elementwise pass."""
    y = first(x)
    out = second(y, residual=residual)
    if second.training and first.activation is not None:
        pre, act = first.__dict__["_saved"]["pre"], first.activation
        second.__dict__["_saved"]["x"] = lambda: _ACT_FORWARD[act](pre)
    return out


def _dropouts(layer: Module) -> list[Dropout]:
    return [m for m in layer.modules() if isinstance(m, Dropout)]


def layer_forward(layer: Module, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)``: one layer of a stack in training (``fn`` its training forward). With the
    layer's ``gradient_checkpointing`` on, what the forward saved is dropped at once and only the inputs
    (and the layer's dropout stream offsets) are kept, for ``layer_backward`` to run it again."""
    if not layer.gradient_checkpointing:
        return fn(*args, **kw)
    offsets = [d.offset for d in _dropouts(layer)]
    y = fn(*args, **kw)
    for m in layer.modules():
        object.__setattr__(m, "_saved", None)
    object.__setattr__(layer, "_checkpoint", (fn, args, kw, offsets))
    return y


def layer_backward(layer: Module, grad_output: Any) -> Any:
    """``layer.backward(grad_output)`` after ``layer_forward``: a checkpointed layer first runs its
    forward again from the kept inputs, with the dropout streams rewound to where the first run began
    (the same masks), and the offsets put back where they were after it."""
    ck = layer.__dict__.get("_checkpoint")
    if ck is not None:
        object.__setattr__(layer, "_checkpoint", None)
        fn, args, kw, offsets = ck
        drops = _dropouts(layer)
        after = [d.offset for d in drops]
        for d, o in zip(drops, offsets):
            d.offset = o
        fn(*args, **kw)
        for d, o in zip(drops, after):
            d.offset = o
    return layer.backward(grad_output)


def split_heads(x: np.ndarray, n: int, num_heads: int) -> list[np.ndarray]:
    """A projection ``(B, S, n * num_heads * Dh)`` (n = 3 for packed Q/K/V) as n views
    ``(B, num_heads, S, Dh)``: no copy, the attention kernel reads the strides."""
    b, s = x.shape[0], x.shape[1]
    x = x.reshape(b, s, n, num_heads, -1)
    return [x[:, :, i].transpose(0, 2, 1, 3) for i in range(n)]


def merge_heads(x: np.ndarray) -> FloatArray:
    """Head views ``(B, H, S, Dh)`` as a new ``(B, S, H * Dh)`` array: the inverse of ``split_heads``."""
    b, h, s, d = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3), dtype=np.float32).reshape(b, s, h * d)


def packed_qkv_grad(dq: np.ndarray, dk: np.ndarray, dv: np.ndarray) -> FloatArray:
    """The gradient of a packed ``(B, S, 3 * H * Dh)`` Q/K/V projection (what ``split_heads(x, 3, H)``
    viewed) from the gradients of its three ``(B, H, S, Dh)`` head views."""
    b, h, s, d = dq.shape
    return np.stack([dq, dk, dv], axis=2).transpose(0, 3, 2, 1, 4).reshape(b, s, 3 * h * d)


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: ArrayIn | None = None, is_causal: bool = False,
           scale: float | None = None) -> FloatArray:
    """``scaled_dot_product_attention`` of head views ``(B, H, S, D)`` written straight into a
    ``(B, S, H * Dv)`` array: the heads merge without a copy."""
    b, h, s, dv = q.shape[0], q.shape[1], q.shape[2], v.shape[-1]
    merged = np.empty((b, s, h, dv), np.float32)
    ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                     out=merged.transpose(0, 2, 1, 3))
    return merged.reshape(b, s, h * dv)


def _allowed(attn_mask: ArrayLike | None, key_padding_mask: ArrayLike | None, batch: int, sq: int,
             sk: int) -> np.ndarray | None:
    """torch-style masks (bool True = not allowed, float added; padding True) -> one mask for
    ``ops.scaled_dot_product_attention`` (bool True = attend, or float), or None."""
    m = None
    if attn_mask is not None:
        a = np.asarray(attn_mask)
        if a.dtype == np.bool_:
            m = ~a
        else:
            m = a.astype(np.float32, copy=False)
        if m.ndim == 3:  # (B*H, Sq, Sk)
            m = m.reshape(batch, -1, sq, sk)
    if key_padding_mask is not None:
        k = np.asarray(key_padding_mask)
        if k.shape != (batch, sk):
            raise ValueError(f"key_padding_mask must have shape ({batch}, {sk}), got {k.shape}")
        if k.dtype == np.bool_:
            keep = ~k[:, None, None, :]
            m = keep if m is None else (m & keep if m.dtype == np.bool_ else np.where(keep, m, -np.inf))
        else:
            kf = k.astype(np.float32)[:, None, None, :]
            m = kf if m is None else (np.where(m, kf, -np.inf) if m.dtype == np.bool_ else m + kf)
    return m


class MultiHeadAttention(Module):
    """``torch.nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)`` for inference, with the
    same parameter names (``in_proj_weight (3E, E)``, ``in_proj_bias``, ``out_proj.weight``,
    ``out_proj.bias``) and an optional KV cache.

    ``forward(query, key=None, value=None, attn_mask=None, key_padding_mask=None, is_causal=False,
    cache=None, residual=None)``: key and value default to query (self-attention, one fused QKV
    projection). With ``cache`` (a ``KVCache``) in self-attention, the new keys and values are
    appended and the queries attend to everything cached (``is_causal`` aligns bottom-right, and
    ``key_padding_mask`` covers all cached positions); in cross-attention (``static=True``) the
    keys and values of ``key``/``value`` are projected on the first call and reused after.
    ``residual`` is added to the output inside the output projection's GEMM.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads = int_arg("embed_dim", embed_dim), int_arg("num_heads", num_heads)
        if self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.head_dim = self.embed_dim // self.num_heads
        e = self.embed_dim
        self.in_proj_weight = _uniform((3 * e, e), math.sqrt(6.0 / (4 * e)))
        self.in_proj_bias = _filled((3 * e,), 0.0) if bias else None
        self.out_proj = Linear(e, e, bias=bias)
        if bias:
            self.out_proj.bias = _filled((e,), 0.0)

    _packable = ("in_proj_weight",)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        return KVCache(batch, self.num_heads, self.head_dim, capacity)

    def _check(self, x: ArrayLike, name: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"{name} must be (B, S, {self.embed_dim}), got shape {x.shape}")
        return x

    def forward(self, query: ArrayIn, key: ArrayIn | None = None, value: ArrayIn | None = None,
                attn_mask: ArrayIn | None = None, key_padding_mask: ArrayIn | None = None, is_causal: bool = False,
                cache: KVCache | None = None, static: bool = False, residual: ArrayIn | None = None) -> Any:
        self_attn = key is None or key is query
        key = query if key is None else key
        value = key if value is None else value
        if self.training:
            if cache is not None:
                raise ValueError("MultiHeadAttention: a KV cache is for inference; training forwards take none")
            return self._train_forward(query, key, value, self_attn, attn_mask, key_padding_mask, is_causal, residual)
        if cache is None:
            out = ops.multi_head_attention(query, key, value, self.num_heads, self._weight("in_proj_weight"),
                                           self.in_proj_bias, self.out_proj._weight("weight"), self.out_proj.bias,
                                           attn_mask=attn_mask,
                                           key_padding_mask=key_padding_mask, is_causal=is_causal)
            return out if residual is None else np.add(out, residual, out=out)
        e, h = self.embed_dim, self.num_heads
        w, b = self._weight("in_proj_weight"), self.in_proj_bias  # a PackedWeight slices by rows too
        query = self._check(query, "query")
        bsz, sq = query.shape[0], query.shape[1]
        def project(x: ArrayIn, first: int, count: int) -> list[np.ndarray]:  # heads of rows [first, first + count) * E of the packed projection
            rows = slice(first * e, (first + count) * e)
            return split_heads(ops.linear(x, w[rows], None if b is None else b[rows]), count, h)

        if self_attn and not static:
            q, k, v = project(query, 0, 3)
            cache.append(k, v)
        else:
            q = project(query, 0, 1)[0]
            if not static or cache.length == 0:
                key = self._check(key, "key")
                if value is key:
                    k, v = project(key, 1, 2)
                else:
                    k, v = project(key, 1, 1)[0], project(self._check(value, "value"), 2, 1)[0]
                if static:
                    cache.set(k, v)
                else:
                    cache.append(k, v)
        sk = cache.length
        mask = _allowed(attn_mask, key_padding_mask, bsz, sq, sk)
        return self.out_proj(attend(q, cache.keys(), cache.values(), mask, is_causal), residual=residual)


    def _train_forward(self, query: Any, key: Any, value: Any, self_attn: bool, attn_mask: Any,
                       key_padding_mask: Any, is_causal: bool, residual: Any) -> FloatArray:
        """The forward as its parts -- projections, attention (keeping each row's log-sum-exp), output
        projection -- keeping what backward needs; the S x S probabilities are never formed."""
        e, h = self.embed_dim, self.num_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        query = self._check(_train_input(query, "query"), "query")
        rows = lambda i: slice(i * e, (i + 1) * e)  # noqa: E731  (Q, K, V rows of the packed projection)
        if self_attn:
            q, k, v = split_heads(ops.linear(query, w, b), 3, h)
            inputs: tuple[Any, ...] = (query,)
        else:
            key = self._check(_train_input(key, "key"), "key")
            value = self._check(_train_input(value, "value"), "value")
            q = split_heads(ops.linear(query, w[rows(0)], None if b is None else b[rows(0)]), 1, h)[0]
            k = split_heads(ops.linear(key, w[rows(1)], None if b is None else b[rows(1)]), 1, h)[0]
            v = split_heads(ops.linear(value, w[rows(2)], None if b is None else b[rows(2)]), 1, h)[0]
            inputs = (query, key, value)
        bsz, sq, sk = query.shape[0], query.shape[1], k.shape[2]
        mask = _allowed(attn_mask, key_padding_mask, bsz, sq, sk)
        o, lse = ops.scaled_dot_product_attention_forward(q, k, v, mask, flag("is_causal", is_causal))
        merged = merge_heads(o)
        self._save(inputs=inputs, q=q, k=k, v=v, o=o, lse=lse, mask=mask, causal=bool(is_causal))
        return self.out_proj(merged, residual=residual)

    def backward(self, grad_output: ArrayIn) -> Any:
        """Self-attention: d(query). Cross-attention: ``(d_query, d_key, d_value)`` (key and value given as
        one array, e.g. the memory: add the two). A residual's gradient is grad_output itself."""
        saved = self._take()
        e, h = self.embed_dim, self.num_heads
        do = split_heads(self.out_proj.backward(grad_output), 1, h)[0]
        dq, dk, dv = ops.scaled_dot_product_attention_backward(do, saved["q"], saved["k"], saved["v"], saved["o"],
                                                               saved["lse"], saved["mask"], saved["causal"])
        w = self.in_proj_weight
        if len(saved["inputs"]) == 1:
            dx, dw, db = ops.linear_backward(packed_qkv_grad(dq, dk, dv), saved["inputs"][0], w,
                                             **self._grad_outs("in_proj_weight", "in_proj_bias"))
            self._accumulate("in_proj_weight", dw)
            if self.in_proj_bias is not None:
                self._accumulate("in_proj_bias", db)
            return dx
        grads_in, dws, dbs = [], [], []
        for i, (d, x) in enumerate(zip((dq, dk, dv), saved["inputs"])):
            dx, dw, db = ops.linear_backward(merge_heads(d), x, w[i * e:(i + 1) * e])
            grads_in.append(dx)
            dws.append(dw)
            dbs.append(db)
        self._accumulate("in_proj_weight", np.concatenate(dws))
        if self.in_proj_bias is not None:
            self._accumulate("in_proj_bias", np.concatenate(dbs))
        return tuple(grads_in)


class Dropout(Module):
    """``torch.nn.Dropout(p)``: in training mode each element is kept with probability ``1 - p`` and
    scaled by ``1 / (1 - p)``; identity in eval mode. The mask comes from ``ops.dropout``'s counter-based
    generator: this module's seed (drawn when made from a generator ``nn.manual_seed`` seeds, or given; a
    model's ``seed_dropout(seed)`` sets them all) and a running offset, so backward recomputes the mask
    instead of storing it, and a run is reproducible."""

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        p = float_arg("p", p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
        self.p = p
        self.seed = int(_dropout_rng.integers(0, 2 ** 63)) if seed is None else int_arg("seed", seed)
        self.offset = 0  # words of the stream used so far

    def forward(self, x: ArrayIn) -> Any:
        if not self.training or self.p == 0.0:
            if self.training:
                self._save(offset=None)
            return x
        x = _train_input(x, "x")
        offset = self.offset
        self.offset += x.size
        self._save(offset=offset)
        return ops.dropout(x, self.p, seed=self.seed, offset=offset)

    def backward(self, grad_output: ArrayIn) -> Any:
        offset = self._take()["offset"]
        if offset is None:
            return grad_output
        return ops.dropout_backward(grad_output, self.p, seed=self.seed, offset=offset)

    def stream(self, n: int) -> dict[str, Any]:
        """For a kernel that drops what it computes (attention's probabilities): ``n`` words of this
        module's stream, as the keyword arguments ``dropout_p``, ``seed``, ``offset`` of
        ``ops.scaled_dot_product_attention_forward`` / ``_backward`` (``dropout_p`` 0 in eval mode)."""
        if not self.training or self.p == 0.0:
            return {"dropout_p": 0.0, "seed": None, "offset": 0}
        offset = self.offset
        self.offset += int_arg("n", n)
        return {"dropout_p": self.p, "seed": self.seed, "offset": offset}

    def extra_repr(self) -> str:
        return f"p={self.p}"


class AdditiveAttention(Module):
    """Additive (Bahdanau) attention: ``score = v . tanh(w_query q + w_key k)``, softmax over the keys
    where ``mask`` (True = attend) allows, weighted sum of the values. Parameters ``w_query (A, Dq)``,
    ``w_key (A, Dk)``, ``v (A,)``. ``forward(query, keys, values, mask=None, return_weights=False)``."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        self.query_dim, self.key_dim = int_arg("query_dim", query_dim), int_arg("key_dim", key_dim)
        self.attn_dim = int_arg("attn_dim", attn_dim)
        self.w_query = _uniform((self.attn_dim, self.query_dim), 1.0 / math.sqrt(max(self.query_dim, 1)))
        self.w_key = _uniform((self.attn_dim, self.key_dim), 1.0 / math.sqrt(max(self.key_dim, 1)))
        self.v = _uniform((self.attn_dim,), 1.0 / math.sqrt(max(self.attn_dim, 1)))

    def forward(self, query: ArrayIn, keys: ArrayIn, values: ArrayIn, mask: ArrayIn | None = None,
                return_weights: bool = False) -> Any:
        if self.training:
            query, keys, values = (_train_input(a, n) for a, n in ((query, "query"), (keys, "keys"),
                                                                    (values, "values")))
            self._save(query=query, keys=keys, values=values, mask=mask)
        return ops.additive_attention(query, keys, values, self.w_query, self.w_key, self.v, mask=mask,
                                      return_weights=return_weights)

    def backward(self, grad_output: ArrayIn) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``(d_query, d_keys, d_values)``; the parameters' gradients are added into their ``.grad``."""
        sv = self._take()
        dq, dk, dv, dwq, dwk, dvv = ops.additive_attention_backward(
            grad_output, sv["query"], sv["keys"], sv["values"], self.w_query, self.w_key, self.v, sv["mask"])
        self._accumulate("w_query", dwq)
        self._accumulate("w_key", dwk)
        self._accumulate("v", dvv)
        return dq, dk, dv


class FeedForward(Module):
    """``linear2(activation(linear1(x))) (+ residual)``, the activation fused into the first GEMM and
    the residual into the second."""

    def __init__(self, d_model: int, dim_feedforward: int, activation: str | None = "relu", bias: bool = True):
        super().__init__()
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, activation=activation)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)

    def forward(self, x: ArrayIn, residual: ArrayIn | None = None) -> Any:
        return feed_forward(self.linear1, self.linear2, x, residual)


class TransformerEncoderLayer(Module):
    """``torch.nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, activation=..., layer_norm_eps,
    batch_first=True, norm_first)`` for inference, with its parameter names: ``self_attn``,
    ``linear1``, ``linear2``, ``norm1``, ``norm2``. Post-LN (Vaswani, BERT) by default, pre-LN with
    ``norm_first=True``. Activation ``"relu"``, ``"gelu"`` (erf) or ``"gelu_tanh"``."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, activation: str | None = "relu",
                 layer_norm_eps: float = 1e-5, norm_first: bool = False, bias: bool = True):
        super().__init__()
        self.norm_first = bool(norm_first)
        self.self_attn = MultiHeadAttention(d_model, nhead, bias=bias)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, activation=activation)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, bias=bias)

    def forward(self, src: ArrayIn, src_mask: ArrayIn | None = None, src_key_padding_mask: ArrayIn | None = None,
                is_causal: bool = False, out: Result | None = None) -> Any:
        """The whole layer is one core call (``ops.transformer_encoder_layer``); ``out`` may be src. In
        training mode, the layer's parts one by one, each keeping what its backward needs."""
        sa, n1, n2 = self.self_attn, self.norm1, self.norm2
        if self.training:
            x = _train_input(src, "src")
            masks = dict(attn_mask=src_mask, key_padding_mask=src_key_padding_mask, is_causal=is_causal)
            if self.norm_first:  # x1 = x + sa(norm1(x));  y = x1 + ff(norm2(x1))
                x1 = sa(n1(x), **masks, residual=x)
                y = feed_forward(self.linear1, self.linear2, n2(x1), residual=x1)
            else:  # h = norm1(x + sa(x));  y = norm2(h + ff(h))
                h = n1(sa(x, **masks), residual=x)
                y = n2(feed_forward(self.linear1, self.linear2, h), residual=h)
            return _into(out, y)
        return ops.transformer_encoder_layer(
            src, sa.num_heads, sa._weight("in_proj_weight"), sa.in_proj_bias, sa.out_proj._weight("weight"),
            sa.out_proj.bias, self.linear1._weight("weight"), self.linear1.bias, self.linear2._weight("weight"),
            self.linear2.bias, n1.weight, n1.bias, n2.weight, n2.bias, activation=self.linear1.activation,
            norm_first=self.norm_first, eps=(n1.eps, n2.eps), attn_mask=src_mask,
            key_padding_mask=src_key_padding_mask, is_causal=is_causal, out=out)

    def backward(self, grad_output: ArrayIn) -> FloatArray:
        dy = np.asarray(grad_output, np.float32)
        sa, n1, n2 = self.self_attn, self.norm1, self.norm2
        if self.norm_first:
            dx1 = dy + n2.backward(self.linear1.backward(self.linear2.backward(dy)))
            return dx1 + n1.backward(sa.backward(dx1))
        dsum2 = n2.backward(dy)  # the gradient of h + ff(h)
        dh = dsum2 + self.linear1.backward(self.linear2.backward(dsum2))
        dsum1 = n1.backward(dh)  # of x + sa(x)
        return dsum1 + sa.backward(dsum1)


def _shape(a: Any) -> tuple[int, ...]:
    """An array's or a Tensor's shape (a Tensor's without copying it to numpy)."""
    return a.shape if hasattr(a, "shape") else np.shape(a)


class TransformerDecoderLayer(Module):
    """``torch.nn.TransformerDecoderLayer(..., batch_first=True)`` for inference, with its names
    (``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``, ``norm1..3``) and an optional cache:
    ``cache=(self_kv, cross_kv)`` (``KVCache``s) appends the new target positions to the self-attention
    cache and projects ``memory`` once for cross-attention."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, activation: str | None = "relu",
                 layer_norm_eps: float = 1e-5, norm_first: bool = False, bias: bool = True):
        super().__init__()
        self.norm_first = bool(norm_first)
        self.self_attn = MultiHeadAttention(d_model, nhead, bias=bias)
        self.multihead_attn = MultiHeadAttention(d_model, nhead, bias=bias)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, activation=activation)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.norm1 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, layer_norm_eps, bias=bias)
        self.norm3 = LayerNorm(d_model, layer_norm_eps, bias=bias)

    def new_cache(self, batch: int, capacity: int, memory_len: int = 0) -> tuple[KVCache, KVCache]:
        return (self.self_attn.new_cache(batch, capacity), self.multihead_attn.new_cache(batch, memory_len))

    def forward(self, tgt: ArrayIn, memory: ArrayIn | None, tgt_mask: ArrayIn | None = None,
                memory_mask: ArrayIn | None = None, tgt_key_padding_mask: ArrayIn | None = None,
                memory_key_padding_mask: ArrayIn | None = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False, cache: tuple[KVCache, KVCache] | None = None,
                out: Result | None = None) -> Any:
        """The whole layer as one core call (``ops.transformer_decoder_layer``). With ``cache=(self_kv,
        cross_kv)`` the new target positions join ``self_kv`` and the cross-attention's keys and values
        are projected from ``memory`` into ``cross_kv`` on the first call and read from it after (memory
        is then not needed). ``out`` may be ``tgt`` (in place)."""
        sa, ca = self.self_attn, self.multihead_attn
        if self.training:
            if cache is not None:
                raise ValueError("TransformerDecoderLayer: a KV cache is for inference; training forwards take none")
            x, mem = _train_input(tgt, "tgt"), _train_input(memory, "memory")
            self_kw = dict(attn_mask=tgt_mask, key_padding_mask=tgt_key_padding_mask, is_causal=tgt_is_causal)
            cross_kw = dict(attn_mask=memory_mask, key_padding_mask=memory_key_padding_mask, is_causal=memory_is_causal)
            if self.norm_first:  # x += sa(norm1(x)); x += mha(norm2(x), mem); x += ff(norm3(x))
                x1 = sa(self.norm1(x), **self_kw, residual=x)
                x2 = ca(self.norm2(x1), mem, mem, **cross_kw, residual=x1)
                y = feed_forward(self.linear1, self.linear2, self.norm3(x2), residual=x2)
            else:  # x = norm1(x + sa(x)); x = norm2(x + mha(x, mem)); x = norm3(x + ff(x))
                x1 = self.norm1(sa(x, **self_kw), residual=x)
                x2 = self.norm2(ca(x1, mem, mem, **cross_kw), residual=x1)
                y = self.norm3(feed_forward(self.linear1, self.linear2, x2), residual=x2)
            return _into(out, y)
        kw: dict[str, Any] = {}
        sc, cc = cache if cache is not None else (None, None)
        tshape = _shape(tgt)
        t = tshape[-2] if len(tshape) >= 2 else 0
        if sc is not None:
            sc.reserve(t)
            kw.update(k_cache=sc.k, v_cache=sc.v, cache_length=sc.length)
        if cc is not None:
            if cc.length == 0:
                cc.reserve(_shape(memory)[1])
            kw.update(memory_k=cc.k, memory_v=cc.v, memory_length=cc.length)
        y = ops.transformer_decoder_layer(
            tgt, memory if cc is None or cc.length == 0 else None, sa.num_heads, sa._weight("in_proj_weight"),
            sa.in_proj_bias, sa.out_proj._weight("weight"), sa.out_proj.bias, ca._weight("in_proj_weight"),
            ca.in_proj_bias, ca.out_proj._weight("weight"), ca.out_proj.bias, self.linear1._weight("weight"),
            self.linear1.bias, self.linear2._weight("weight"), self.linear2.bias, self.norm1.weight, self.norm1.bias,
            self.norm2.weight, self.norm2.bias, self.norm3.weight, self.norm3.bias, activation=self.linear1.activation,
            norm_first=self.norm_first, eps=(self.norm1.eps, self.norm2.eps, self.norm3.eps), tgt_mask=tgt_mask,
            tgt_key_padding_mask=tgt_key_padding_mask, memory_mask=memory_mask,
            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal, out=out, **kw)
        if sc is not None:
            sc.length += t
        if cc is not None and cc.length == 0:
            cc.length = _shape(memory)[1]
        return y

    def backward(self, grad_output: ArrayIn) -> tuple[FloatArray, FloatArray]:
        """``(d_tgt, d_memory)`` after a training-mode forward."""
        return _decoder_layer_backward(self, grad_output)


def _decoder_layer_backward(layer: TransformerDecoderLayer, grad_output: ArrayIn) -> tuple[FloatArray, FloatArray]:
    dy = np.asarray(grad_output, np.float32)
    sa, ca = layer.self_attn, layer.multihead_attn
    ff = lambda d: layer.linear1.backward(layer.linear2.backward(d))  # noqa: E731
    if layer.norm_first:
        dx2 = dy + layer.norm3.backward(ff(dy))
        dq, dk, dv = ca.backward(dx2)
        dx1 = dx2 + layer.norm2.backward(dq)
        return dx1 + layer.norm1.backward(sa.backward(dx1)), dk + dv
    dsum3 = layer.norm3.backward(dy)  # of x2 + ff(x2)
    dx2 = dsum3 + ff(dsum3)
    dsum2 = layer.norm2.backward(dx2)  # of x1 + mha(x1, mem)
    dq, dk, dv = ca.backward(dsum2)
    dsum1 = layer.norm1.backward(dsum2 + dq)  # of x + sa(x)
    return dsum1 + sa.backward(dsum1), dk + dv


class TransformerEncoder(Module):
    """A stack of ``TransformerEncoderLayer``s and a final LayerNorm (``norm=True``, as
    ``torch.nn.Transformer`` builds it): loads the state dict of ``torch.nn.TransformerEncoder``
    (``layers.{i}.…``, ``norm.…``). ``forward(src, mask=None, src_key_padding_mask=None,
    is_causal=False)``; outputs at padded positions are unspecified (torch gives zeros there)."""

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 activation: str | None = "relu",
                 norm_first: bool = False, layer_norm_eps: float = 1e-5, norm: bool = True, bias: bool = True):
        super().__init__()
        n = _count("num_layers", num_layers)
        self.layers = ModuleList(TransformerEncoderLayer(d_model, nhead, dim_feedforward, activation, layer_norm_eps,
                                                         norm_first, bias) for _ in range(n))
        self.norm = LayerNorm(d_model, layer_norm_eps, bias=bias) if norm else None

    def forward(self, src: ArrayIn, mask: ArrayIn | None = None, src_key_padding_mask: ArrayIn | None = None,
                is_causal: bool = False) -> Any:
        x = src
        if self.training:  # each layer keeps its input (or, checkpointed, only that)
            for layer in self.layers:
                x = layer_forward(layer, layer, x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                                  is_causal=is_causal)
            return self.norm(x) if self.norm is not None else x
        for i, layer in enumerate(self.layers):  # after the first, each layer runs in place in its input
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal,
                      out=x if i else None)
        return self.norm(x) if self.norm is not None else x

    def backward(self, grad_output: ArrayIn) -> FloatArray:
        dy = self.norm.backward(grad_output) if self.norm is not None else np.asarray(grad_output, np.float32)
        for layer in reversed(list(self.layers)):
            dy = layer_backward(layer, dy)
        return dy


class TransformerDecoder(Module):
    """A stack of ``TransformerDecoderLayer``s and a final LayerNorm (``norm=True``), with
    ``torch.nn.TransformerDecoder``'s names. ``forward(tgt, memory, tgt_mask=None, memory_mask=None,
    tgt_key_padding_mask=None, memory_key_padding_mask=None, tgt_is_causal=False, cache=None)``;
    ``tgt_is_causal=True`` applies the causal mask itself (torch only takes it as a hint about
    ``tgt_mask``). ``new_cache(batch, capacity)`` makes the per-layer caches for incremental decoding."""

    def __init__(self, num_layers: int, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 activation: str | None = "relu",
                 norm_first: bool = False, layer_norm_eps: float = 1e-5, norm: bool = True, bias: bool = True):
        super().__init__()
        n = _count("num_layers", num_layers)
        self.layers = ModuleList(TransformerDecoderLayer(d_model, nhead, dim_feedforward, activation, layer_norm_eps,
                                                         norm_first, bias) for _ in range(n))
        self.norm = LayerNorm(d_model, layer_norm_eps, bias=bias) if norm else None

    def new_cache(self, batch: int, capacity: int, memory_len: int = 0) -> list[tuple[KVCache, KVCache]]:
        return [layer.new_cache(batch, capacity, memory_len) for layer in self.layers]

    def forward(self, tgt: ArrayIn, memory: ArrayIn | None, tgt_mask: ArrayIn | None = None,
                memory_mask: ArrayIn | None = None, tgt_key_padding_mask: ArrayIn | None = None,
                memory_key_padding_mask: ArrayIn | None = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False, cache: list[tuple[KVCache, KVCache]] | None = None) -> Any:
        x = tgt
        for i, layer in enumerate(self.layers):  # after the first, each layer runs in place in its input
            x = layer_forward(layer, layer, x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                              tgt_key_padding_mask=tgt_key_padding_mask,
                              memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                              memory_is_causal=memory_is_causal, cache=None if cache is None else cache[i],
                              out=x if i and not self.training else None)
        if self.training:
            self._save(memory_shape=_shape(memory))
        return self.norm(x) if self.norm is not None else x

    def backward(self, grad_output: ArrayIn) -> tuple[FloatArray, FloatArray]:
        """``(d_tgt, d_memory)`` after a training-mode forward (memory's gradient summed over the layers)."""
        shape = self._take()["memory_shape"]
        dy = self.norm.backward(grad_output) if self.norm is not None else np.asarray(grad_output, np.float32)
        dmem = np.zeros(shape, np.float32)
        for layer in reversed(list(self.layers)):
            dy, dm = layer_backward(layer, dy)
            dmem += dm
        return dy, dmem
