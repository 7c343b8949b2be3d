"""coreformer.optim against torch.optim, torch's clip_grad_norm_ and transformers' schedules: the same
gradients fed to both, step by step; parameters of odd sizes (one chunk's tail, several chunks)."""
import math

import numpy as np
import pytest

from coreformer import optim
from coreformer.nn import Parameter

from conftest import assert_same_on_thread_counts, randn

SHAPES = [(1,), (7,), (63, 65), (3, 1000), (70000,)]  # 70000: three of the kernel's 32768-float chunks


def norm_rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def make_pair(rng, torch):
    init = [randn(rng, *s) for s in SHAPES]
    ours = [Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.tensor(a)) for a in init]
    return ours, theirs


def feed(rng, ours, theirs, torch, scale=1.0):
    for p, t in zip(ours, theirs):
        g = randn(rng, *p.shape, scale=scale)
        p.grad = g
        t.grad = torch.tensor(g.copy())


def twenty_steps(rng, name, kw):
    """Our optimiser `name` and torch's over the same parameters and 20 steps of the same gradients; the
    weights end within 1e-6. Returns both optimisers and both parameter lists."""
    torch = pytest.importorskip("torch")
    ours, theirs = make_pair(rng, torch)
    opt, ref = getattr(optim, name)(ours, **kw), getattr(torch.optim, name)(theirs, foreach=False, **kw)
    for _ in range(20):
        feed(rng, ours, theirs, torch)
        opt.step()
        ref.step()
    for p, t in zip(ours, theirs):
        assert norm_rel(p.data, t.detach().numpy()) < 1e-6
    return opt, ref, ours, theirs


@pytest.mark.parametrize("kw", [dict(lr=1e-2), dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
                                dict(lr=1e-3, weight_decay=0.0, maximize=True)])
def test_adamw_matches_torch(isa, rng, kw):
    opt, ref, ours, theirs = twenty_steps(rng, "AdamW", kw)
    for p, t in zip(ours, theirs):
        s, ts = opt.state[p], ref.state[t]
        assert s["step"] == 20 == int(ts["step"])
        assert norm_rel(s["exp_avg"], ts["exp_avg"].numpy()) < 1e-6
        assert norm_rel(s["exp_avg_sq"], ts["exp_avg_sq"].numpy()) < 1e-6


@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3,
                                weight_decay=1e-2), dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.1),
                                dict(lr=0.01, momentum=0.5, maximize=True)])
def test_sgd_matches_torch(isa, rng, kw):
    opt, ref, ours, theirs = twenty_steps(rng, "SGD", kw)
    for p, t in zip(ours, theirs):
        if kw.get("momentum"):
            assert norm_rel(opt.state[p]["momentum_buffer"], ref.state[t]["momentum_buffer"].numpy()) < 1e-6


def test_groups_clipping_and_schedule_match_torch_and_transformers(rng):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ours, theirs = make_pair(rng, torch)
    # transformers' practice: no weight decay on biases and norms (here: the 1-d parameters)
    groups = lambda ps: [{"params": [p for p in ps if len(p.shape) > 1], "weight_decay": 0.05},  # noqa: E731
                         {"params": [p for p in ps if len(p.shape) == 1], "weight_decay": 0.0}]
    opt, ref = optim.AdamW(groups(ours), lr=5e-3), torch.optim.AdamW(groups(theirs), lr=5e-3, foreach=False)
    sched = optim.get_linear_schedule_with_warmup(opt, 5, 20)
    ref_sched = transformers.get_linear_schedule_with_warmup(ref, 5, 20)
    for step in range(20):
        feed(rng, ours, theirs, torch, scale=3.0)
        n = optim.clip_grad_norm_(ours, 1.0)
        tn = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        assert abs(n - float(tn)) <= 1e-6 * float(tn)
        for p, t in zip(ours, theirs):
            assert norm_rel(p.grad, t.grad.numpy()) < 1e-6
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
        assert sched.get_last_lr() == pytest.approx(ref_sched.get_last_lr(), rel=1e-12)
    for p, t in zip(ours, theirs):
        assert norm_rel(p.data, t.detach().numpy()) < 1e-5


@pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")
@pytest.mark.parametrize("name", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_schedules_match_transformers(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    opt = optim.SGD([Parameter(np.zeros(3, np.float32))], lr=0.3)
    ref = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.3)
    s = optim.get_scheduler(name, opt, num_warmup_steps=4, num_training_steps=17)
    t = transformers.get_scheduler(name, ref, num_warmup_steps=4, num_training_steps=17)
    for _ in range(25):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        s.step()
        t.step()


def test_clip_grad_norm_inf_nonfinite_and_thread_counts(rng):
    torch = pytest.importorskip("torch")
    ours, theirs = make_pair(rng, torch)
    feed(rng, ours, theirs, torch)
    n = optim.clip_grad_norm_(ours, 0.5, norm_type=math.inf)
    tn = torch.nn.utils.clip_grad_norm_(theirs, 0.5, norm_type=math.inf)
    assert n == pytest.approx(float(tn), rel=1e-7)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-6)
    # the 2-norm is summed in fixed chunks, in order: the same on any thread count
    big = [Parameter(randn(rng, 100003)), Parameter(randn(rng, 5))]
    grads = [randn(rng, 100003), randn(rng, 5)]
    for p, g in zip(big, grads):
        p.grad = g
    norm = assert_same_on_thread_counts(lambda: optim.clip_grad_norm_(big, 1e9))
    want = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    assert norm == pytest.approx(want, rel=1e-12)  # squares summed in float64
    # a non-finite norm: every gradient NaN (torch's behaviour), or an error when asked
    grads[0][7] = np.inf
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm_(big, 1.0, error_if_nonfinite=True)
    assert math.isinf(optim.clip_grad_norm_(big, 1.0))
    assert np.isnan(grads[1]).all()
    assert optim.clip_grad_norm_([Parameter(np.ones(3, np.float32))], 1.0) == 0.0  # no gradients: norm 0


def test_state_dict_round_trip_resumes_the_same_trajectory(rng):
    def run(steps, resume_at=None):
        r = np.random.default_rng(5)
        ps = [Parameter(np.linspace(-1, 1, 50, dtype=np.float32).reshape(5, 10)), Parameter(np.ones(3, np.float32))]
        opt = optim.AdamW(ps, lr=1e-2)
        sched = optim.get_cosine_schedule_with_warmup(opt, 2, steps)
        for i in range(steps):
            if i == resume_at:  # a new optimizer and schedule from the saved states
                sd, ssd = opt.state_dict(), sched.state_dict()
                opt = optim.AdamW(ps, lr=1e-2)
                sched = optim.get_cosine_schedule_with_warmup(opt, 2, steps)
                opt.load_state_dict(sd)
                sched.load_state_dict(ssd)
            for p in ps:
                p.grad = r.standard_normal(p.shape).astype(np.float32)
            opt.step()
            sched.step()
        return [p.data.copy() for p in ps]
    for a, b in zip(run(10), run(10, resume_at=6)):
        np.testing.assert_array_equal(a, b)


def test_zero_grad_skips_and_accumulation(rng):
    p, q = Parameter(randn(rng, 4)), Parameter(randn(rng, 4))
    before = q.data.copy()
    opt = optim.SGD([p, q], lr=0.1)
    p.grad = np.ones(4, np.float32)
    opt.step()  # q has no gradient: untouched, as torch
    np.testing.assert_array_equal(q.data, before)
    opt.zero_grad()
    assert p.grad is None
    p.grad = np.ones(4, np.float32)
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and not p.grad.any()
    # the parameter wraps the caller's array: an update is visible through it
    w = np.zeros(3, np.float32)
    pw = Parameter(w)
    pw.grad = np.ones(3, np.float32)
    optim.SGD([pw], lr=0.5).step()
    np.testing.assert_array_equal(w, [-0.5, -0.5, -0.5])


def test_bad_input(rng):
    p = Parameter(randn(rng, 4))
    with pytest.raises(TypeError, match=r"\['params'\]\[0\] must be a coreformer.nn.Parameter, got ndarray"):
        optim.SGD([np.zeros(3, np.float32)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        optim.SGD(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([])
    with pytest.raises(ValueError, match="more than once"):
        optim.AdamW([p, p])
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        optim.AdamW([p], lr=-1)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\)"):
        optim.AdamW([p], betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="lr must be a real number"):
        optim.SGD([p], lr="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        optim.SGD([{"params": [p], "beta": 3}])
    with pytest.raises(NotImplementedError):
        optim.AdamW([p], amsgrad=True)
    frozen = np.zeros(3, np.float32)
    frozen.setflags(write=False)
    pf = Parameter(frozen)  # a mapped checkpoint's arrays: wrapped, but no optimiser writes them
    pf.grad = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"params\[0\] is read-only"):
        optim.SGD([pf], lr=0.1).step()
    opt = optim.AdamW([p])
    p.grad = np.ones(5, np.float32)
    with pytest.raises(ValueError, match=r"gradient has shape \(5,\) but its parameter \(4,\)"):
        opt.step()
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="not an optimizer state dict"):
        opt.load_state_dict({"x": 1})
    with pytest.raises(ValueError, match="norm_type"):
        optim.clip_grad_norm_([p], 1.0, norm_type=1)
    with pytest.raises(ValueError, match="unknown scheduler"):
        optim.get_scheduler("exponential", opt)
    with pytest.raises(ValueError, match="needs num_training_steps"):
        optim.get_scheduler("linear", opt, num_warmup_steps=3)
    # the core's own checks, for callers of the kernels
    from coreformer import _core
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(3,\) but params\[0\] has shape \(4,\)"):
        _core.adamw_step([p.data], [np.ones(3, np.float32)], [np.zeros(4, np.float32)], [np.zeros(4, np.float32)],
                         1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(TypeError, match=r"exp_avgs\[0\] must be a float32 array"):
        _core.adamw_step([p.data], [np.ones(4, np.float32)], [np.zeros(4)], [np.zeros(4, np.float32)],
                         1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="exp_avg_sqs has 0 arrays but params has 1"):
        _core.adamw_step([p.data], [np.ones(4, np.float32)], [np.zeros(4, np.float32)], [], 1e-3, 0.9, 0.999, 1e-8,
                         0.0, 1)
    with pytest.raises(ValueError, match=r"params\[0\] is read-only"):
        _core.sgd_step([frozen], [np.ones(3, np.float32)], [], 0.1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        _core.adamw_step([p.data], [np.ones(4, np.float32)], [np.zeros(4, np.float32)], [np.zeros(4, np.float32)],
                         1e-3, 0.9, 0.999, 1e-8, 0.0, 0)


def test_repr(rng):
    p = Parameter(randn(rng, 2, 3))
    assert repr(p) == "Parameter(shape=(2, 3), grad=None, requires_grad=True)"
    opt = optim.AdamW([p], lr=0.5)
    assert "AdamW (" in repr(opt) and "lr: 0.5" in repr(opt)
    assert "last_epoch=0" in repr(optim.get_constant_schedule(opt))
