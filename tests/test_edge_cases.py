"""Edge cases: skipped parameters, zero and missing gradients, empty groups, tensor lr,
dtypes, complex parameters, and non-finite losses and gradients."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from helpers import INNER_NAMES, make_inner, step_in_mode
from hypothesis import given
from hypothesis import strategies as st

import newt


def all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def quadratic_closure(opt, params, scale: float = 1.0):
    def closure():
        opt.zero_grad()
        loss = scale * sum((p.float() ** 2).sum() for p in params)
        loss.backward()
        return loss

    return closure


# ----------------------------------------------------------------------------- skipped params
@pytest.mark.parametrize("mode", ["closure", "closure_free"])
def test_frozen_and_gradient_free_parameters_are_skipped_and_untouched(mode):
    used = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    frozen = torch.nn.Parameter(torch.tensor([3.0, 4.0]), requires_grad=False)
    unused = torch.nn.Parameter(torch.tensor([5.0, 6.0]))
    opt = newt.NewtOptimizer(torch.optim.Adam([used, frozen, unused], lr=0.1))

    def closure():
        opt.zero_grad()
        loss = ((used * frozen) ** 2).sum()
        loss.backward()
        return loss

    start = used.detach().clone()
    for _ in range(4):
        step_in_mode(opt, closure, mode)
    assert torch.equal(frozen, torch.tensor([3.0, 4.0]))
    assert torch.equal(unused, torch.tensor([5.0, 6.0]))
    assert unused.grad is None
    assert not torch.equal(used, start)
    assert frozen not in opt.state and unused not in opt.state


@pytest.mark.parametrize("inner", INNER_NAMES)
@pytest.mark.parametrize("mode", ["closure", "closure_free"])
def test_zero_gradients_change_neither_alpha_nor_parameters(inner, mode):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = newt.NewtOptimizer(make_inner(inner, [w], 0.1), controller="newton")

    def closure():
        opt.zero_grad()
        loss = 0.0 * w.sum() + 3.0
        loss.backward()
        return loss

    for _ in range(4):
        if mode == "closure":
            assert float(opt.step(closure)) == 3.0
        else:
            closure()
            opt.step()
    assert torch.equal(w, torch.tensor([1.0, -2.0]))
    assert opt.param_groups[0]["lr"] == 0.1
    assert all_finite(v for s in opt.inner.state.values() for v in s.values()
                      if isinstance(v, torch.Tensor))
    stats = opt.last_stats()[0]
    assert stats is not None and stats.safeguard == "no_information"


def test_closure_returning_a_constant_without_backward_is_a_no_op():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1))
    calls = [0]

    def closure():
        calls[0] += 1
        return torch.tensor(7.0)

    for _ in range(3):
        assert float(opt.step(closure)) == 7.0
    assert torch.equal(w, torch.tensor([1.0, -2.0]))
    assert opt.param_groups[0]["lr"] == 0.1
    assert calls[0] == 3  # nothing moves, so there is nothing to look ahead at
    assert opt.last_stats() == [None]


def test_closure_free_step_without_any_gradient_is_a_no_op():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1))
    opt.step()
    opt.step()
    assert torch.equal(w, torch.tensor([1.0, -2.0]))
    assert opt.last_stats() == [None]


@pytest.mark.parametrize("mode", ["closure", "closure_free"])
def test_empty_group_and_group_without_gradients_are_left_alone(mode):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    idle = torch.nn.Parameter(torch.tensor([0.5]))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1))
    opt.add_param_group({"params": []})
    opt.add_param_group({"params": [idle], "lr": 0.3})
    assert len(opt.inner.param_groups) == 3
    assert opt.param_groups[2] is opt.inner.param_groups[2]
    closure = quadratic_closure(opt, [w])
    for _ in range(5):
        step_in_mode(opt, closure, mode)
    assert opt.param_groups[0]["lr"] != 0.1
    assert opt.param_groups[1]["lr"] == 0.1 and opt.param_groups[2]["lr"] == 0.3
    assert torch.equal(idle, torch.tensor([0.5]))
    stats = opt.last_stats()
    assert stats[0] is not None and stats[1] is None and stats[2] is None


def test_closure_free_step_under_no_grad_works():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1), controller="newton")
    for _ in range(5):
        opt.zero_grad()
        (w**2).sum().backward()
        with torch.no_grad():
            opt.step()
    assert float((w**2).sum()) < 0.5
    assert opt.param_groups[0]["lr"] != 0.1


# ----------------------------------------------------------------------------- tensor lr
@pytest.mark.parametrize("mode", ["closure", "closure_free"])
@pytest.mark.parametrize(
    "make",
    [
        lambda p, lr: torch.optim.SGD(p, lr=lr),
        lambda p, lr: torch.optim.Adam(p, lr=lr, foreach=False),
    ],
    ids=["sgd", "adam"],
)
def test_tensor_lr_stays_the_same_object_and_is_updated_in_place(make, mode):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    lr = torch.tensor(1e-2)
    opt = newt.NewtOptimizer(make([w], lr), controller="newton")
    closure = quadratic_closure(opt, [w])
    for _ in range(4):
        step_in_mode(opt, closure, mode)
    assert opt.param_groups[0]["lr"] is lr
    assert opt.inner.param_groups[0]["lr"] is lr
    assert float(lr) != pytest.approx(1e-2)
    assert lr.dtype == torch.float32 and lr.shape == ()


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_parameters_keep_their_dtype_and_the_loss_falls(dtype, inner):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=dtype))
    opt = newt.NewtOptimizer(make_inner(inner, [w], 0.05), controller="newton")
    closure = quadratic_closure(opt, [w])
    first = float(closure())
    for _ in range(15):
        opt.step(closure)
        assert w.dtype == dtype
    assert float(closure()) < 0.2 * first
    assert all(s["snapshot"].dtype == dtype for s in opt.state.values() if "snapshot" in s)
    assert math.isfinite(opt.param_groups[0]["lr"])


def complex_problem(dtype=torch.complex128):
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(4, 4, dtype=dtype, generator=gen) + 2 * torch.eye(4, dtype=dtype)
    b = torch.randn(4, dtype=dtype, generator=gen)
    z0 = torch.randn(4, dtype=dtype, generator=gen)
    return m, b, z0


@pytest.mark.parametrize("foreach", [True, False])
def test_complex_quadratic_converges(foreach):
    m, b, z0 = complex_problem()
    z = torch.nn.Parameter(z0.clone())
    opt = newt.NewtOptimizer(torch.optim.SGD([z], lr=0.01), foreach=foreach)

    def closure():
        opt.zero_grad()
        loss = (m @ z - b).abs().pow(2).sum()
        loss.backward()
        return loss

    first = float(closure())
    for _ in range(200):
        opt.step(closure)
    assert z.dtype == torch.complex128
    assert float(closure()) < 1e-6 * first


@pytest.mark.parametrize("foreach", [True, False])
def test_complex_parameters_learn_the_same_alpha_as_their_real_view(foreach):
    """A complex parameter is a pair of real numbers: newt on z and on view_as_real(z)
    must take the same steps."""
    m, b, z0 = complex_problem()
    z = torch.nn.Parameter(z0.clone())
    x = torch.nn.Parameter(torch.view_as_real(z0).clone())
    opt_z = newt.NewtOptimizer(torch.optim.SGD([z], lr=0.01), foreach=foreach)
    opt_x = newt.NewtOptimizer(torch.optim.SGD([x], lr=0.01), foreach=foreach)

    def closure_for(opt, value):
        def closure():
            opt.zero_grad()
            loss = (m @ value() - b).abs().pow(2).sum()
            loss.backward()
            return loss

        return closure

    cz = closure_for(opt_z, lambda: z)
    cx = closure_for(opt_x, lambda: torch.view_as_complex(x))
    for _ in range(6):
        opt_z.step(cz)
        opt_x.step(cx)
        assert opt_z.param_groups[0]["lr"] == pytest.approx(opt_x.param_groups[0]["lr"],
                                                            rel=1e-9)
    assert opt_x.param_groups[0]["lr"] != 0.01


# ----------------------------------------------------------------------------- non-finite
def test_lookahead_with_infinite_loss_restores_theta_t_and_shrinks_alpha():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.5]))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=5.0), controller="newton")

    def closure():
        opt.zero_grad()
        # Finite for |w| < 3, infinite beyond: the SGD step (w − 10 w) crosses it.
        loss = torch.where(w.abs() < 3, w**2, torch.full_like(w, math.inf)).sum()
        loss.backward()
        return loss

    before = w.detach().clone()
    opt.step(closure)
    assert torch.equal(w, before)
    assert opt.param_groups[0]["lr"] == pytest.approx(5.0 * newt.DEFAULT["nonfinite_factor"])
    assert opt.last_stats()[0].safeguard == "nonfinite"
    # Shrinking until the step is finite, then training proceeds.
    for _ in range(10):
        opt.step(closure)
        assert all_finite([w])
    assert float((w**2).sum()) < float((before**2).sum())


@pytest.mark.parametrize("inner", INNER_NAMES)
@given(log_lr=st.floats(min_value=-3.0, max_value=6.0),
       start=st.lists(st.floats(min_value=-3.0, max_value=3.0), min_size=1, max_size=4))
def test_parameters_stay_finite_in_closure_mode(inner, log_lr, start):
    w = torch.nn.Parameter(torch.tensor(start))
    opt = newt.NewtOptimizer(make_inner(inner, [w], 10.0**log_lr), lr_max=1e6)

    def closure():
        opt.zero_grad()
        loss = torch.exp(w**2).sum()
        loss.backward()
        return loss

    for _ in range(8):
        opt.step(closure)
        # (Adam's own second moment may overflow on a finite but huge gradient: that
        # is Adam's arithmetic, not newt's; the parameters must stay finite regardless.)
        assert all_finite([w])
        assert math.isfinite(opt.param_groups[0]["lr"])


def closure_free_run(opt, w, nan_at: set[int], steps: int):
    history = []
    for t in range(steps):
        history.append(w.detach().clone())
        opt.zero_grad()
        loss = (w**2).sum()
        if t in nan_at:
            loss = loss * math.nan
        loss.backward()
        opt.step()
    return history


def test_closure_free_nan_gradient_skips_the_step_without_undoing_the_good_one():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.5]))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1), controller="newton")
    closure_free_run(opt, w, set(), 3)
    alpha = opt.alphas[0]
    history = closure_free_run(opt, w, {0}, 1)  # the NaN batch arrives at θ_3
    assert torch.equal(w, history[0])  # θ_3 kept: the finite step before it is not undone
    assert opt.alphas[0] == alpha  # and α is not shrunk
    assert opt.last_stats()[0].safeguard == "skipped"
    closure_free_run(opt, w, set(), 10)
    assert all_finite([w]) and float((w**2).sum()) < float((history[0] ** 2).sum())


def test_closure_free_nan_batches_do_not_collapse_alpha():
    """8 NaN batches in 300 steps leave α where a clean run has it (0.1.0 multiplied α by
    0.1 at each and ended near lr_min)."""
    medians = []
    for nan_at in (set(), set(range(20, 300, 37))):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(8))
        opt = newt.NewtOptimizer(torch.optim.Adam([w], lr=1e-3))
        alphas = []
        for t in range(300):
            opt.zero_grad()
            loss = ((w - 0.1 * torch.randn(8)) ** 2).sum()
            (loss * (math.nan if t in nan_at else 1.0)).backward()
            opt.step()
            alphas.append(opt.alphas[0])
        medians.append(statistics.median(alphas[100:]))
    assert len(set(range(20, 300, 37))) == 8
    assert 0.5 < medians[1] / medians[0] < 2.0


@pytest.mark.parametrize("inner", ["momentum", "adam"])
def test_closure_free_nan_gradient_keeps_nan_out_of_params_and_inner_state(inner):
    w = torch.nn.Parameter(torch.tensor([1.0, 0.5]))
    opt = newt.NewtOptimizer(make_inner(inner, [w], 0.05))
    closure_free_run(opt, w, {3, 6}, 12)
    assert all_finite([w])
    assert all_finite(v for s in opt.inner.state.values() for v in s.values()
                      if isinstance(v, torch.Tensor))
    assert float((w**2).sum()) < 1.25


def test_closure_free_nan_gradient_on_the_first_step_leaves_parameters_finite():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.5]))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1))
    closure_free_run(opt, w, {0}, 5)
    assert all_finite([w])


def test_closure_free_overflowing_step_is_undone_at_the_next_step():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.5]))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=1e38), lr_max=1e38)
    closure_free_run(opt, w, set(), 6)
    assert all_finite([w])
    assert opt.param_groups[0]["lr"] < 1e38


def test_closure_mode_nan_gradient_at_theta_t_keeps_nan_out_of_adam_state():
    w = torch.nn.Parameter(torch.tensor([0.0, 0.5]))
    opt = newt.NewtOptimizer(torch.optim.Adam([w], lr=0.05), controller="newton")
    batch = [0]

    def closure():
        opt.zero_grad()
        # First batch: sqrt(|w|) at w = 0 has a finite value and a NaN gradient.
        loss = w.abs().sqrt().sum() if batch[0] == 0 else (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    batch[0] += 1
    assert torch.equal(w, torch.tensor([0.0, 0.5]))  # no step from a NaN gradient
    assert opt.param_groups[0]["lr"] == 0.05  # skipped, α kept
    assert opt.last_stats()[0].safeguard == "skipped"
    for _ in range(5):
        opt.step(closure)
        batch[0] += 1
    assert all_finite([w])
    assert all_finite(opt.inner.state[w].values())
    assert float((w**2).sum()) < 0.2
