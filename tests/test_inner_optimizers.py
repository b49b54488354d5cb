"""newt's options never collide with the inner optimizer's, for every common inner optimizer;
schedulers that read the inner optimizer's defaults work on the wrapper; the seed API is
the same core as `preset="seed"`; the defects of 0.1.0 that ordinary usage hit."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import make_mlp, mlp_closure, mlp_data, record_lrs

import newt

INNER = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-3),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2, eps=1e-3, weight_decay=0.01),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, eps=1e-3),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, eps=1e-3),
    "Adafactor": lambda p: torch.optim.Adafactor(p, lr=1e-2),
    "NAdam": lambda p: torch.optim.NAdam(p, lr=1e-2, eps=1e-3),
    "RAdam": lambda p: torch.optim.RAdam(p, lr=1e-2, eps=1e-3),
}


@pytest.mark.parametrize("name", list(INNER))
@pytest.mark.parametrize("mode", ["closure", "free"])
def test_inner_keys_are_untouched_and_newts_options_are_its_own(name, mode):
    x, y = mlp_data()
    model = make_mlp(0)
    inner = INNER[name](model.parameters())
    before = {k: v for k, v in inner.param_groups[0].items() if k != "params"}
    opt = newt.NewtOptimizer(inner, eps=1e-9, gamma=0.25)
    closure = mlp_closure(model, opt, x, y)
    first = float(closure())
    for _ in range(15):
        if mode == "closure":
            opt.step(closure)
        else:
            closure()
            opt.step()
    group = opt.param_groups[0]
    for key in before:
        if key != "lr":
            assert group[key] == before[key], key  # eps, betas, momentum, ... as the user set
    assert group["newt"]["eps"] == 1e-9 and group["newt"]["gamma"] == 0.25
    assert float(closure()) < first
    assert opt.alphas[0] != before["lr"]  # α was learned


@pytest.mark.parametrize("name", ["SGD", "Adam"])
@pytest.mark.parametrize("kind", ["onecycle", "cyclic"])
def test_schedulers_that_cycle_momentum_work_on_the_wrapper(name, kind):
    x, y = mlp_data()
    model = make_mlp(0)
    opt = newt.NewtOptimizer(INNER[name](model.parameters()))
    if kind == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
    else:
        sched = torch.optim.lr_scheduler.CyclicLR(opt, 1e-3, 0.05, step_size_up=5,
                                                  cycle_momentum=True)
    key = "momentum" if name == "SGD" else "betas"
    seen = set()
    closure = mlp_closure(model, opt, x, y)
    for _ in range(10):
        opt.step(closure)
        sched.step()
        value = opt.inner.param_groups[0][key]
        seen.add(value if key == "momentum" else value[0])
    assert len(seen) > 3  # the scheduler cycles the inner optimizer's momentum


def _two_group_quadratic(seed_api: bool):
    """Two groups on ½(4a² + 0.5b²); group 0 starts past its line minimum (overshoots)."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 1, bias=False),
                                 "b": torch.nn.Linear(3, 1, bias=False)})
    x = torch.randn(64, 3, dtype=torch.float32)
    y = torch.randn(64, 1)
    model = model.float()

    def criterion(out, target):
        return ((out[0] - target) ** 2).mean() * 4.0 + 0.5 * ((out[1] - target) ** 2).mean()

    def forward(inp):
        return model["a"](inp), model["b"](inp)

    inner = torch.optim.SGD([{"params": model["a"].parameters(), "lr": 0.9},
                             {"params": model["b"].parameters(), "lr": 0.05}])
    return model, forward, criterion, inner, x, y


def test_the_seed_api_and_preset_seed_take_the_same_decisions():
    results = []
    for seed_api in (True, False):
        model, forward, criterion, inner, x, y = _two_group_quadratic(seed_api)
        if seed_api:
            module = _Forward(forward, model)
            sched = newt.Newt(inner, newt.NewtConfig(model=module, loss_criterion=criterion,
                                                     gamma=0.5, lr_clamp_max=1.0))
            for _ in range(40):
                inner.zero_grad()
                loss = criterion(module(x), y)
                loss.backward()
                inner.step()
                sched.step_setup(loss, x, y)
                sched.step()
            lrs = [g["lr"] for g in inner.param_groups]
        else:
            opt = newt.NewtOptimizer(inner, preset="seed", gamma=0.5, lr_max=1.0)

            def closure(opt=opt, forward=forward, criterion=criterion, x=x, y=y):
                opt.zero_grad()
                loss = criterion(forward(x), y)
                loss.backward()
                return loss

            for _ in range(40):
                opt.step(closure)
            lrs = opt.alphas
        results.append((lrs, [p.detach().clone() for p in model.parameters()]))
    (lrs_a, params_a), (lrs_b, params_b) = results
    assert lrs_a == pytest.approx(lrs_b, rel=1e-12)
    assert lrs_a[0] != lrs_a[1]
    for a, b in zip(params_a, params_b, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


class _Forward(torch.nn.Module):
    def __init__(self, forward, model):
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, x):
        return self._forward(x)


# ----------------------------------------------------------------------------- defects of 0.1.0
@pytest.mark.parametrize("mode", ["closure", "free"])
@pytest.mark.parametrize("scheduled", [False, True])
def test_a_group_with_lr_zero_stays_frozen(mode, scheduled):
    x, y = mlp_data()
    model = make_mlp(0)
    inner = torch.optim.Adam([{"params": model[0].parameters(), "lr": 0.0},
                              {"params": model[2].parameters(), "lr": 1e-2}])
    opt = newt.NewtOptimizer(inner)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9**t) if scheduled else None
    frozen = [p.detach().clone() for p in model[0].parameters()]
    closure = mlp_closure(model, opt, x, y)
    for _ in range(10):
        if mode == "closure":
            opt.step(closure)
        else:
            closure()
            opt.step()
        if sched is not None:
            sched.step()
    assert opt.alphas[0] == 0.0 and opt.step_sizes[0] == 0.0
    for p, q in zip(model[0].parameters(), frozen, strict=True):
        assert torch.equal(p, q)
    assert opt.alphas[1] != 1e-2


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_in_the_lookahead_restores_theta_t_and_leaves_state_consistent(error):
    x, y = mlp_data()
    model = make_mlp(0)
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    used = record_lrs(inner)
    opt = newt.NewtOptimizer(inner)
    calls = [0]
    inner_closure = mlp_closure(model, opt, x, y)

    def closure():
        calls[0] += 1
        if calls[0] == 6:  # the lookahead of the 3rd step
            raise error("interrupted")
        return inner_closure()

    opt.step(closure)
    opt.step(closure)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(error):
        opt.step(closure)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)  # θ_t, not half-stepped
    assert opt.alphas[0] == used[-1][0]  # α_t of the interrupted step; nothing left pending
    for _ in range(3):
        opt.step(closure)  # and training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("shape", [(1,), (1, 1)])
def test_a_closure_returning_a_one_element_tensor_works_through_an_undone_step(shape):
    x = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = newt.NewtOptimizer(torch.optim.SGD([x], lr=3.0))  # overshoots: first step undone

    def closure():
        opt.zero_grad()
        loss = (x**2).sum().reshape(shape)
        loss.backward()
        return loss

    for _ in range(8):
        loss = opt.step(closure)
    assert loss.shape == shape and not loss.requires_grad
    assert float(x.abs()) < 1.0


def test_step_returns_a_detached_loss():
    x, y = mlp_data()
    model = make_mlp(0)
    opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    loss = opt.step(mlp_closure(model, opt, x, y))
    assert not loss.requires_grad


def test_a_group_added_to_the_inner_optimizer_is_shared_with_newt():
    x, y = mlp_data()
    model = make_mlp(0)
    inner = torch.optim.SGD(model[0].parameters(), lr=0.05)
    opt = newt.NewtOptimizer(inner)
    inner.add_param_group({"params": model[2].parameters(), "lr": 0.05})
    assert opt.param_groups is inner.param_groups and len(opt.param_groups) == 2
    closure = mlp_closure(model, opt, x, y)
    for _ in range(5):
        opt.step(closure)
    assert opt.alphas[1] != 0.05  # α of the added group is learned
    opt.zero_grad()
    assert all(p.grad is None for p in model[2].parameters())
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer, weights_only=True))


def test_a_state_dict_of_other_shapes_is_refused_at_load_naming_the_parameter():
    a = torch.nn.Parameter(torch.ones(2, 3))
    b = torch.nn.Parameter(torch.ones(3, 2))
    opt_a = newt.NewtOptimizer(torch.optim.Adam([a], lr=1e-2))
    a.grad = torch.ones_like(a)
    opt_a.step()
    opt_b = newt.NewtOptimizer(torch.optim.Adam([b], lr=1e-2))
    with pytest.raises(ValueError, match=r"param_groups\[0\] parameter 0.*shape"):
        opt_b.load_state_dict(opt_a.state_dict())


def test_a_state_dict_of_newt_0_1_0_is_refused_with_a_clear_message():
    w = torch.nn.Parameter(torch.ones(2))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1))
    old = {"state": {}, "param_groups": [{"lr": 0.1, "gamma": 0.5, "params": [0],
                                          "newt": {"step": torch.tensor(3)}}],
           "inner": opt.inner.state_dict()}
    with pytest.raises(ValueError, match=r"0\.1\.0"):
        opt.load_state_dict(old)


def test_last_stats_names_what_happened_after_an_undone_step():
    x = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = newt.NewtOptimizer(torch.optim.SGD([x], lr=3.0), controller="newton")

    def closure():
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    names = []
    for _ in range(6):
        opt.step(closure)
        names.append(opt.last_stats()[0].safeguard)
    assert names[0] == "loss_increase"
    assert "first_step" not in names


def test_a_newt_option_at_the_top_level_of_a_group_warns_where_it_belongs():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.warns(UserWarning, match="'newt' key"):
        newt.NewtOptimizer(torch.optim.SGD([{"params": [w], "lr": 0.1, "gamma": 0.3}]))


def test_a_nan_gradient_under_the_seed_api_skips_the_inner_step_and_keeps_its_state_finite():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    criterion = torch.nn.MSELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = newt.Newt(optimizer, newt.NewtConfig(model=model, loss_criterion=criterion))
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    for t in range(6):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        if t == 2:
            model.weight.grad[0, 0] = float("nan")
            before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        if t == 2:
            assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before,
                                                         strict=True))
        sched.step_setup(loss, x, y)
        sched.step()
    assert all(torch.isfinite(v).all() for s in optimizer.state.values() for v in s.values())
    assert sched.last_safeguards()[0] not in ("nonfinite", "skipped")
