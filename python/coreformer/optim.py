"""Optimisers, gradient clipping and learning-rate schedules, as ``torch.optim`` and transformers name them.

``SGD`` and ``AdamW`` apply torch.optim's update rules element for element (so a trajectory follows
torch's to float32 rounding), one fused C++ call per parameter group per step over all of its arrays,
with the GIL released. Parameters are :class:`coreformer.nn.Parameter` objects (``.data`` updated in
place, ``.grad`` read); those whose ``grad`` is None are skipped, as torch skips them.

    opt = optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    sched = optim.get_linear_schedule_with_warmup(opt, num_warmup_steps=100, num_training_steps=1000)
    ...  # backward fills each parameter's .grad
    optim.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); sched.step(); opt.zero_grad()
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from . import _core
from ._args import flag, float_arg, int_arg
from ._typing import FloatArray
from .nn import Parameter, _addr, adjacent, joined, store_of

__all__ = [
    "Optimizer", "SGD", "AdamW", "clip_grad_norm_", "LambdaLR", "get_constant_schedule",
    "get_constant_schedule_with_warmup", "get_linear_schedule_with_warmup", "get_cosine_schedule_with_warmup",
    "get_scheduler",
]

ParamsIn = Iterable[Parameter] | Iterable[Mapping[str, Any]]


def _params_list(params: Any, where: str) -> list[Parameter]:
    if isinstance(params, Parameter):
        params = [params]
    elif isinstance(params, (np.ndarray, str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(f"{where} must be an iterable of coreformer.nn.Parameter, got {type(params).__name__}")
    out = list(params)
    for i, p in enumerate(out):
        if not isinstance(p, Parameter):
            raise TypeError(f"{where}[{i}] must be a coreformer.nn.Parameter, got {type(p).__name__} (wrap an "
                            "array with nn.Parameter(array))")
    return out


def _grads(params: list[Parameter]) -> list[FloatArray]:
    out = []
    for p in params:
        assert p.grad is not None  # step() passes only the parameters that have one
        out.append(p.grad)
    return out


def _coalesced(*columns: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Parallel lists (parameters, gradients, moments) with each run of neighbours that lie one after
    another in their flat buffers -- in every list at once -- joined into one view: a model in a
    FlatStore steps as a few long ranges instead of a few hundred arrays. The updates are elementwise,
    so the entries are taken in memory order (a group listed as named_parameters() interleaves the
    decayed matrices and the biases, which the store keeps apart)."""
    n = len(columns[0])
    order = sorted(range(n), key=lambda i: (id(columns[0][i].base), _addr(columns[0][i])))
    columns = tuple([c[i] for i in order] for c in columns)
    out: list[list[np.ndarray]] = [[] for _ in columns]
    i = 0
    while i < n:
        j = i + 1
        while j < n and all(adjacent(c[j - 1], c[j]) for c in columns):
            j += 1
        for o, c in zip(out, columns):
            o.append(c[i] if j == i + 1 else joined([a.reshape(-1) for a in c[i:j]]))
        i = j
    return out


class Optimizer:
    """What every optimiser shares: ``param_groups`` (dicts of ``params`` and hyperparameters, defaults
    filled in), per-parameter ``state``, ``zero_grad``, ``step``, ``state_dict`` / ``load_state_dict``
    (torch's layout: parameters by their index over the groups, state arrays copied)."""

    def __init__(self, params: ParamsIn, defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Parameter, dict[str, Any]] = {}
        self._flat_state: dict[tuple[int, str], tuple[Any, np.ndarray]] = {}
        if isinstance(params, Parameter):
            params = [params]
        if isinstance(params, (np.ndarray, str, bytes)) or not isinstance(params, Iterable):
            raise TypeError(f"params must be an iterable of Parameters or of dicts, got {type(params).__name__}")
        items: list[Any] = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        groups: list[Any] = items if isinstance(items[0], Mapping) else [{"params": items}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError("a parameter group must be a dict with a 'params' entry")
        group = dict(param_group)
        group["params"] = _params_list(group["params"], f"param_groups[{len(self.param_groups)}]['params']")
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr", "name"}
        if unknown:
            raise ValueError(f"unknown hyperparameters {sorted(unknown)} for {type(self).__name__} (it takes "
                             f"{sorted(self.defaults)})")
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check_group(group)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        ids = [id(p) for p in group["params"]]
        if len(set(ids)) != len(ids) or seen & set(ids):
            raise ValueError("some parameters appear more than once (in one group or in several)")
        self.param_groups.append(group)

    def _state_array(self, p: Parameter, key: str) -> FloatArray:
        """Zeros for state ``key`` of ``p``: for a parameter in a model's FlatStore, its slot of a buffer
        in the store's layout (so the moments of neighbouring parameters are neighbours too)."""
        store = store_of(p.data)
        off = store.offset(p.data) if store is not None else None
        if store is None or off is None:
            return np.zeros_like(p.data)
        entry = self._flat_state.get((id(store), key))
        if entry is None or entry[0] is not store:
            entry = self._flat_state[(id(store), key)] = (store, np.zeros(store.size, np.float32))
        buf = entry[1][off:off + p.data.size].reshape(p.data.shape)
        buf[...] = 0
        return buf

    def _check_group(self, group: dict[str, Any]) -> None:
        lr = float_arg("lr", group["lr"])
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a finite number >= 0, got {lr}")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.zero_grad(set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns ``closure()`` if one is given (it
        is called first, as torch's)."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            live = [p for p in group["params"] if p.grad is not None]
            for p in live:
                if p.grad is not None and p.grad.shape != p.data.shape:
                    raise ValueError(f"a gradient has shape {p.grad.shape} but its parameter {p.data.shape}")
            if live:
                self._step_group(group, live)
        return loss

    def _step_group(self, group: dict[str, Any], params: list[Parameter]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                 for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
        if not isinstance(groups, list) or not isinstance(state_dict.get("state"), Mapping):
            raise ValueError("not an optimizer state dict: expected {'state': ..., 'param_groups': [...]}")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(groups)} parameter groups, this optimizer "
                             f"{len(self.param_groups)}")
        by_index: dict[int, Parameter] = {}
        for mine, theirs in zip(self.param_groups, groups):
            if len(theirs.get("params", ())) != len(mine["params"]):
                raise ValueError("a parameter group's size in the state dict differs from this optimizer's")
            for i, p in zip(theirs["params"], mine["params"]):
                by_index[int(i)] = p
        new_state: dict[Parameter, dict[str, Any]] = {}
        arrays: list[tuple[Parameter, str, np.ndarray]] = []
        for i, s in state_dict["state"].items():
            p = by_index.get(int(i))
            if p is None:
                raise ValueError(f"the state dict holds state for parameter {i}, which no group has")
            entry = {}
            for k, v in s.items():
                if isinstance(v, np.ndarray) or (hasattr(v, "shape") and np.ndim(v) > 0):
                    v = np.asarray(v, dtype=np.float32)
                    if v.shape != p.data.shape:
                        raise ValueError(f"state {k!r} of parameter {i} has shape {v.shape}, the parameter "
                                         f"{p.data.shape}")
                    arrays.append((p, k, v))
                elif hasattr(v, "item"):
                    v = v.item()
                entry[k] = v
            new_state[p] = entry
        for mine, theirs in zip(self.param_groups, groups):
            for k, v in theirs.items():
                if k != "params":
                    mine[k] = v
            self._check_group(mine)
        for p, k, v in arrays:  # checked: copied into this optimiser's own (flat) state arrays
            a = self._state_array(p, k)
            a[...] = v
            new_state[p][k] = a
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines + [")"])


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``::

        p *= 1 - lr * weight_decay
        m = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` (torch's names). transformers' practice
    of no decay on biases and LayerNorm weights is two parameter groups, the second with
    ``weight_decay=0``."""

    def __init__(self, params: ParamsIn, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        if flag("amsgrad", amsgrad):
            raise NotImplementedError("AdamW(amsgrad=True) is not implemented")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=False,
                                      maximize=maximize))

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        b1, b2 = float_arg("betas[0]", betas[0]), float_arg("betas[1]", betas[1])
        for name, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {b}")
        for name in ("eps", "weight_decay"):
            x = float_arg(name, group[name])
            if not (math.isfinite(x) and x >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {x}")
        flag("maximize", group["maximize"])

    def _step_group(self, group: dict[str, Any], params: list[Parameter]) -> None:
        by_step: dict[int, list[Parameter]] = {}
        for p in params:
            s = self.state.get(p)
            if not s:
                s = self.state[p] = {"step": 0, "exp_avg": self._state_array(p, "exp_avg"),
                                     "exp_avg_sq": self._state_array(p, "exp_avg_sq")}
            s["step"] = int(s["step"]) + 1
            by_step.setdefault(s["step"], []).append(p)
        b1, b2 = group["betas"]
        for step, ps in by_step.items():  # one call for all of them, unless parameters joined late
            st = [self.state[p] for p in ps]
            data, grads, m, v = _coalesced([p.data for p in ps], _grads(ps), [s["exp_avg"] for s in st],
                                           [s["exp_avg_sq"] for s in st])
            _core.adamw_step(data, grads, m, v, float(group["lr"]), float(b1), float(b2),
                             float(group["eps"]), float(group["weight_decay"]), step, bool(group["maximize"]))


class SGD(Optimizer):
    """Stochastic gradient descent, with momentum, dampening, weight decay and Nesterov momentum as
    ``torch.optim.SGD``::

        d = g + weight_decay * p
        b = d (first step) or momentum * b + (1 - dampening) * d;   d = b  (nesterov: d + momentum * b)
        p -= lr * d

    State per parameter (with momentum): ``momentum_buffer``."""

    def __init__(self, params: ParamsIn, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        for name in ("momentum", "weight_decay"):
            x = float_arg(name, group[name])
            if not (math.isfinite(x) and x >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {x}")
        dampening = float_arg("dampening", group["dampening"])
        if flag("nesterov", group["nesterov"]) and (float(group["momentum"]) <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        flag("maximize", group["maximize"])

    def _step_group(self, group: dict[str, Any], params: list[Parameter]) -> None:
        momentum = float(group["momentum"])
        hyper = (float(group["lr"]), momentum, float(group["dampening"]), float(group["weight_decay"]),
                 bool(group["nesterov"]))
        if momentum == 0:
            data, grads = _coalesced([p.data for p in params], _grads(params))
            _core.sgd_step(data, grads, [], *hyper, maximize=bool(group["maximize"]))
            return
        first = [p for p in params if self.state.get(p, {}).get("momentum_buffer") is None]
        later = [p for p in params if self.state.get(p, {}).get("momentum_buffer") is not None]
        for p in first:
            self.state.setdefault(p, {})["momentum_buffer"] = self._state_array(p, "momentum_buffer")
        for ps, is_first in ((first, True), (later, False)):
            if ps:
                data, grads, bufs = _coalesced([p.data for p in ps], _grads(ps),
                                               [self.state[p]["momentum_buffer"] for p in ps])
                _core.sgd_step(data, grads, bufs, *hyper, first_step=is_first, maximize=bool(group["maximize"]))


def clip_grad_norm_(parameters: Parameter | Iterable[Parameter], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False) -> float:
    """Scale the gradients of ``parameters`` in place so that their norm taken together is at most
    ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``: the coefficient ``max_norm / (norm + 1e-6)``,
    applied when below 1. Returns the norm before clipping. ``norm_type`` 2 or ``inf``; the norm is
    summed in float64 over fixed chunks in order (the same on any thread count). A non-finite norm makes
    every gradient NaN, as torch's does, or raises RuntimeError with ``error_if_nonfinite``."""
    params = _params_list(parameters, "parameters")
    max_norm = float_arg("max_norm", max_norm)
    norm_type = float_arg("norm_type", norm_type)
    if norm_type not in (2.0, math.inf):
        raise ValueError(f"norm_type must be 2.0 or inf, got {norm_type}")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    (grads,) = _coalesced(grads)
    total = float(_core.total_norm(grads, norm_type == math.inf))
    if flag("error_if_nonfinite", error_if_nonfinite) and not math.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is non-finite ({total}), so it "
                           "cannot be clipped")
    coef = max_norm / (total + 1e-6) if math.isfinite(total) else math.nan
    if math.isfinite(coef):
        if coef < 1.0:
            _core.scale_all(grads, coef)
    else:  # torch's clamp keeps a NaN coefficient, which then spreads to every gradient
        for g in grads:
            g.fill(np.nan)
    return total


class LambdaLR:
    """Each group's learning rate is its initial one times ``lr_lambda(step)``, as
    ``torch.optim.lr_scheduler.LambdaLR``: set for step 0 when made, then once per ``step()``."""

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float], last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a coreformer.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.lr_lambda = lr_lambda
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = int_arg("last_epoch", last_epoch)
        self._last_lr: list[float] = []
        self.step()

    def get_lr(self) -> list[float]:
        return [base * float(self.lr_lambda(self.last_epoch)) for base in self.base_lrs]

    def step(self) -> None:
        self.last_epoch += 1
        self._last_lr = self.get_lr()
        for g, lr in zip(self.optimizer.param_groups, self._last_lr):
            g["lr"] = lr

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs), "_last_lr": list(self._last_lr)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.last_epoch = int_arg("last_epoch", state_dict["last_epoch"])
        self.base_lrs = [float(x) for x in state_dict["base_lrs"]]
        self._last_lr = [float(x) for x in state_dict.get("_last_lr", self.get_lr())]
        for g, lr in zip(self.optimizer.param_groups, self._last_lr):
            g["lr"] = lr

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self._last_lr})"


def _warmup(step: int, warmup: int) -> float | None:
    return step / max(1, warmup) if step < warmup else None


def _steps(num_warmup_steps: Any, num_training_steps: Any = 0) -> tuple[int, int]:
    w, t = int_arg("num_warmup_steps", num_warmup_steps), int_arg("num_training_steps", num_training_steps)
    if w < 0 or t < 0:
        raise ValueError(f"num_warmup_steps and num_training_steps must be >= 0, got {w} and {t}")
    return w, t


def get_constant_schedule(optimizer: Optimizer, last_epoch: int = -1) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: 1.0, last_epoch)


def get_constant_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, last_epoch: int = -1) -> LambdaLR:
    """Linear warm-up from 0 over ``num_warmup_steps``, then constant (transformers' schedule)."""
    w, _ = _steps(num_warmup_steps)

    def f(step: int) -> float:
        up = _warmup(step, w)
        return 1.0 if up is None else up
    return LambdaLR(optimizer, f, last_epoch)


def get_linear_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                                    last_epoch: int = -1) -> LambdaLR:
    """Linear warm-up from 0, then linear decay to 0 at ``num_training_steps`` (transformers' schedule)."""
    w, t = _steps(num_warmup_steps, num_training_steps)

    def f(step: int) -> float:
        up = _warmup(step, w)
        return up if up is not None else max(0.0, (t - step) / max(1, t - w))
    return LambdaLR(optimizer, f, last_epoch)


def get_cosine_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                                    num_cycles: float = 0.5, last_epoch: int = -1) -> LambdaLR:
    """Linear warm-up from 0, then a cosine decay, as transformers' (``num_cycles=0.5``: one half-cosine
    from the peak to 0 at ``num_training_steps``)."""
    w, t = _steps(num_warmup_steps, num_training_steps)
    cycles = float_arg("num_cycles", num_cycles)

    def f(step: int) -> float:
        up = _warmup(step, w)
        if up is not None:
            return up
        progress = (step - w) / max(1, t - w)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * cycles * 2.0 * progress)))
    return LambdaLR(optimizer, f, last_epoch)


def get_scheduler(name: str, optimizer: Optimizer, num_warmup_steps: int | None = None,
                  num_training_steps: int | None = None) -> LambdaLR:
    """transformers' ``get_scheduler`` for ``"linear"``, ``"cosine"``, ``"constant"`` and
    ``"constant_with_warmup"``."""
    if name == "constant":
        return get_constant_schedule(optimizer)
    if name not in ("linear", "cosine", "constant_with_warmup"):
        raise ValueError(f"unknown scheduler {name!r}: expected 'linear', 'cosine', 'constant' or "
                         "'constant_with_warmup'")
    if num_warmup_steps is None:
        raise ValueError(f"the {name!r} schedule needs num_warmup_steps")
    if name == "constant_with_warmup":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps)
    if num_training_steps is None:
        raise ValueError(f"the {name!r} schedule needs num_training_steps")
    make = get_linear_schedule_with_warmup if name == "linear" else get_cosine_schedule_with_warmup
    return make(optimizer, num_warmup_steps, num_training_steps)
