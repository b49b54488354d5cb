"""The controller's two backends (`newt.scalars`): host floats and 0-d tensors agree, and
the tensor path never reads a value on the host during a closure-free step."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import newt
from newt import rule
from newt.options import NewtOptions
from newt.rule import Outcome, Probe
from newt.scalars import FLOATS, TENSORS, ops
from tests.helpers import host_read_counter

SPECIAL = st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1e-300, -1e-300, 1e300])
FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
VALUE = st.one_of(FINITE, FINITE, FINITE, SPECIAL)
POSITIVE = st.floats(1e-8, 10.0)


def same(x, y) -> bool:
    """Equal to rounding (1e-12 relative), NaN equal to NaN, bools and ints exact."""
    x, y = (v.item() if isinstance(v, torch.Tensor) else v for v in (x, y))
    if isinstance(x, bool) or isinstance(y, bool) or (isinstance(x, int) and isinstance(y, int)):
        return x == y
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return x == y
    return math.isclose(x, y, rel_tol=1e-12, abs_tol=1e-300)


def tensors(*values):
    return [torch.tensor(v, dtype=torch.float64) for v in values]


def test_ops_picks_the_backend_from_its_inputs():
    assert ops(1.0, 2, True) is FLOATS
    assert ops(1.0, torch.tensor(2.0)) is TENSORS
    assert FLOATS.minimum(math.nan, 1.0) != FLOATS.minimum(math.nan, 1.0)  # NaN propagates
    assert math.isnan(FLOATS.maximum(1.0, math.nan))
    assert FLOATS.log(0.0) == -math.inf and math.isnan(FLOATS.log(-1.0))
    assert FLOATS.exp(1e4) == math.inf and math.isnan(FLOATS.sqrt(-1.0))


@settings(max_examples=300, deadline=None)
@given(lr=POSITIVE, A=VALUE, B=VALUE, C=VALUE, increase=st.booleans(),
       update=st.sampled_from(["log", "exp", "linear"]), gamma=st.floats(0.0, 1.0),
       scale=st.sampled_from([1.0, 0.5, 1e-3, 0.0]))
def test_newton_update_is_the_same_on_floats_and_tensors(lr, A, B, C, increase, update, gamma,
                                                         scale):
    options = dict(update=update, gamma=gamma, eps=1e-6, lr_min=1e-8, lr_max=10.0,
                   factor_min=0.5, factor_max=4.0, backoff=0.5, nonconvex_factor=1.25)
    host = rule.newton_update(lr, A, B, C, loss_increase=increase, scale=scale, **options)
    device = rule.newton_update(*tensors(lr, A, B, C), loss_increase=torch.tensor(increase),
                                scale=torch.tensor(scale, dtype=torch.float64), **options)
    for x, y in zip(host, device, strict=True):
        assert same(x, y)
    assert isinstance(host.lr, float) and isinstance(host.safeguard, int)


def _state(kind, device):
    return rule.gated_init(device) if kind == "gated" else rule.init(device)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["newton", "gated"]),
       steps=st.lists(st.tuples(VALUE, VALUE, st.booleans(), st.booleans(), POSITIVE,
                                st.sampled_from([1.0, 0.3])), min_size=1, max_size=12),
       closure=st.booleans(), momentum=st.sampled_from([0.0, 0.9]))
def test_controller_is_the_same_on_floats_and_tensors(kind, steps, closure, momentum):
    options = NewtOptions.resolve("default", {"controller": kind})
    host, device = _state(kind, None), _state(kind, torch.device("cpu"))
    alpha_host, alpha_device = 1e-2, torch.tensor(1e-2, dtype=torch.float64)
    for fresh, slope, finite, rose, lookahead, scale in steps:
        host, d_host = rule.before_step(host, Probe(fresh, finite, momentum, scale),
                                        alpha_host, options)
        device, d_device = rule.before_step(
            device, Probe(*tensors(fresh), torch.tensor(finite), momentum, *tensors(scale)),
            alpha_device, options)
        for x, y in zip(d_host, d_device, strict=True):
            assert same(x, y)
        alpha_host, alpha_device = d_host.alpha, d_device.alpha
        loss0, loss1 = (1.0, 1.0 + lookahead) if rose else (1.0, 1.0 - lookahead / 2)
        extra = (slope / 2, loss0, loss1) if closure else (None, None, None)
        host, a_host = rule.after_step(
            host, Outcome(slope, *extra, own_loss=True, scale=scale), alpha_host, options)
        device, a_device = rule.after_step(
            device, Outcome(*tensors(slope), *(None if v is None else tensors(v)[0]
                                              for v in extra),
                            own_loss=True, scale=tensors(scale)[0]), alpha_device, options)
        for x, y in zip(a_host, a_device, strict=True):
            assert same(x, y)
        for x, y in zip(host, device, strict=True):
            assert same(x, y)
        alpha_host, alpha_device = a_host.alpha, a_device.alpha


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _train(host: bool, controller: str, closure: bool, steps: int = 40, tensor_lr=True,
           scheduler=False):
    model = _model()
    lr = torch.tensor(1e-2, dtype=torch.float64) if tensor_lr else 1e-2
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=lr, foreach=False),
                             controller=controller)
    opt._host_scalars = host
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.98**t) if scheduler else None
    gen = torch.Generator().manual_seed(1)
    used = []
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen)
        y = x.sum(1, keepdim=True).sin()

        def loss_fn(x=x, y=y):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()
        if sched is not None:
            sched.step()
        used.append(opt.alphas[0])
    return used, model, opt


@pytest.mark.parametrize("controller", ["newton", "gated"])
@pytest.mark.parametrize("closure", [False, True], ids=["free", "closure"])
@pytest.mark.parametrize("scheduler", [False, True], ids=["plain", "scheduled"])
def test_host_and_tensor_paths_train_identically(controller, closure, scheduler):
    used_h, model_h, opt_h = _train(True, controller, closure, scheduler=scheduler)
    used_d, model_d, opt_d = _train(False, controller, closure, scheduler=scheduler)
    assert opt_h._states[0].host and not opt_d._states[0].host
    assert used_h == pytest.approx(used_d, rel=1e-10)
    assert len(set(used_h)) > 3  # α moved
    for p, q in zip(model_h.parameters(), model_d.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-9)
    # the checkpoints are the same format: one loads into the other
    opt_h.load_state_dict(opt_d.state_dict())
    assert opt_h._states[0].host and opt_h.alphas == pytest.approx(opt_d.alphas, rel=1e-12)


def _host_reads(controller: str, scheduler: bool, host: bool) -> tuple[int, newt.NewtOptimizer]:
    model = _model()
    opt = newt.NewtOptimizer(torch.optim.Adam(
        model.parameters(), lr=torch.tensor(1e-2), foreach=False), controller=controller)
    opt._host_scalars = host  # False: the accelerator path, on the CPU
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.98**t) if scheduler else None
    counter = host_read_counter(opt)
    x, y = torch.randn(16, 5), torch.randn(16, 1)
    for _ in range(6):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        with counter:
            opt.step()
        if sched is not None:
            sched.step()
    return counter.reads, opt


@pytest.mark.parametrize("controller", ["newton", "gated"])
@pytest.mark.parametrize("scheduler", [False, True], ids=["plain", "scheduled"])
def test_tensor_path_reads_no_value_on_the_host_in_a_closure_free_step(controller, scheduler):
    reads, opt = _host_reads(controller, scheduler, host=False)
    assert reads == 0
    assert opt.last_stats()[0].step >= 4  # α was updated on the way (the test measures work)
    control, _ = _host_reads(controller, scheduler, host=True)
    assert control >= 6 * 2  # the host path reads its scalars: the counter sees reads


def test_tensor_path_undoes_a_step_with_a_nonfinite_gradient_without_reading_it():
    model = _model()
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-2),
                                              foreach=False), controller="newton")
    opt._host_scalars = False
    x, y = torch.randn(16, 5), torch.randn(16, 1)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    alpha = opt.alphas[0]
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    next(model.parameters()).grad[0, 0] = math.nan
    opt.step()
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)  # the step was undone exactly
    assert all(torch.isfinite(v).all() for s in opt.inner.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))  # the gradient was zeroed before the inner step
    assert opt.alphas[0] == alpha and opt.last_stats()[0].safeguard == "skipped"
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()  # and training goes on
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
