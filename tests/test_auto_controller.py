"""``controller="auto"``: the gated controller on noisy gradients, the Newton rule on
deterministic ones (docs/design/alpha.md, H15).

The oracles are the two controllers it dispatches to: on mini-batches an auto run is the
gated run bit for bit; on a full batch it takes `rule.AUTO_CHECKS` tiny gated steps and
then the Newton rule's steps from the user's α₀.
"""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import newt
from newt import rule
from tests.helpers import host_read_counter, step_in_mode

DIM, SAMPLES, BATCH = 8, 256, 16


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, DIM, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(DIM, 1, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(
        SAMPLES, 1, generator=gen, dtype=torch.float64)
    return x, y


def _run(controller: str, *, full_batch: bool, closure: bool = False, steps: int = 30,
         lr: float = 0.05, inner: str = "Adam", stop: int | None = None,
         resume: dict | None = None, tensor: bool = False):
    """Least squares on a linear model; returns (α after each step, model, optimizer),
    or with ``stop`` the α so far, the model and a checkpoint of the run after ``stop``
    steps (for ``resume``)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM, 1).double()
    x, y = _data()
    cls = torch.optim.Adam if inner == "Adam" else torch.optim.SGD
    step_size = torch.tensor(lr, dtype=torch.float64) if tensor else lr
    opt = newt.NewtOptimizer(cls(model.parameters(), lr=step_size,
                                 **({"foreach": False} if tensor else {})),
                             controller=controller)
    if tensor:
        opt._host_scalars = False
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
    gen = torch.Generator().manual_seed(1)
    alphas = []
    for t in range(steps):
        index = (torch.arange(SAMPLES) if full_batch
                 else torch.randint(0, SAMPLES, (BATCH,), generator=gen))
        if resume is not None and t < resume["steps"]:
            continue  # the batches the saved run already used

        def loss_fn(index: torch.Tensor = index) -> torch.Tensor:
            opt.zero_grad()
            loss = 0.5 * (model(x[index]) - y[index]).pow(2).mean()
            loss.backward()
            return loss

        step_in_mode(opt, loss_fn, "closure" if closure else "free")
        alphas.append(opt.alphas[0])
        if stop is not None and t + 1 == stop:
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                        "steps": stop}, buffer)
            buffer.seek(0)
            return alphas, model, torch.load(buffer, weights_only=False)
    return alphas, model, opt


@pytest.mark.parametrize("closure", [False, True], ids=["free", "closure"])
@pytest.mark.parametrize("inner", ["Adam", "SGD"])
def test_on_minibatches_auto_is_the_gated_controller_bit_for_bit(closure, inner):
    auto, model_a, opt = _run("auto", full_batch=False, closure=closure, inner=inner)
    gated, model_g, _ = _run("gated", full_batch=False, closure=closure, inner=inner)
    assert auto == gated
    for p, q in zip(model_a.parameters(), model_g.parameters(), strict=True):
        assert torch.equal(p, q)
    state = opt._states[0].rule
    assert isinstance(state, rule.GatedState) and state.watch is False  # decided: noisy
    assert len(set(auto)) > 5  # α moved


@pytest.mark.parametrize("closure", [False, True], ids=["free", "closure"])
@pytest.mark.parametrize("inner", ["Adam", "SGD"])
def test_on_a_full_batch_auto_hands_over_to_the_newton_rule_at_alpha0(closure, inner):
    lr = 0.05
    auto, model, opt = _run("auto", full_batch=True, closure=closure, inner=inner, lr=lr)
    checks = rule.AUTO_CHECKS
    # the gated start: α = 1e-6, doubling, until the last quiet measurement
    assert auto[:checks] == pytest.approx([1e-6 * 2**k for k in range(checks)])
    assert isinstance(opt._states[0].rule, rule.RuleState)
    assert auto[checks] == lr  # the Newton rule's first step, at the user's α₀
    newton, model_n, _ = _run("newton", full_batch=True, closure=closure, inner=inner, lr=lr,
                              steps=30 - checks)
    x, y = _data()
    final = [0.5 * (m(x) - y).pow(2).mean().item() for m in (model, model_n)]
    initial = float(0.5 * y.pow(2).mean())  # the loss at θ = 0, about the start's
    assert final[0] < 0.2 * initial  # it trains
    # The tiny steps barely moved θ, and the inner optimizer starts afresh at the handover
    # (Adam's moments forget the tiny steps' gradients): from there on the Newton rule's
    # run (the first steps to rounding; the rule's clamps amplify the 1e-6-sized difference
    # later).
    assert auto[checks:checks + 8] == pytest.approx(newton[:8], rel=1e-4)
    assert final[0] == pytest.approx(final[1], rel=0.2)
    if inner == "Adam":
        steps = {int(s["step"]) for s in opt.inner.state.values()}
        assert steps == {30 - checks}  # Adam's step count restarted at the handover


def _full_batch_steps(steps: int, groups: str = "one", nan_at: int | None = None):
    """Full-batch least squares; returns (optimizer, the state's type after each step)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM, 1).double()
    x, y = _data()
    params = ([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.0}]
              if groups == "frozen" else model.parameters())
    opt = newt.NewtOptimizer(torch.optim.Adam(params, lr=0.05), controller="auto")
    kinds = []
    for t in range(steps):
        opt.zero_grad()
        (0.5 * (model(x) - y).pow(2).mean()).backward()
        if t == nan_at:
            model.weight.grad[0, 0] = float("nan")
        opt.step()
        kinds.append(type(opt._states[0].rule).__name__)
    return opt, kinds, model


def test_the_handover_comes_at_the_third_quiet_measurement_and_a_nan_is_none():
    _, kinds, _ = _full_batch_steps(6)
    # step 0 has nothing to measure; steps 1, 2, 3 measure; the third quiet one hands over
    assert kinds == ["GatedState"] * rule.AUTO_CHECKS + ["RuleState"] * 3
    # a NaN gradient at step 1 is skipped: no measurement there, nor at step 2 (the
    # skipped step left nothing pending); steps 3, 4, 5 are the three quiet ones
    _, kinds, model = _full_batch_steps(8, nan_at=1)
    assert kinds == ["GatedState"] * 5 + ["RuleState"] * 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_last_stats_at_the_handover_is_a_first_step_at_alpha0():
    opt, kinds, _ = _full_batch_steps(rule.AUTO_CHECKS + 1)
    assert kinds[-1] == "RuleState"
    stats = opt.last_stats()[0]
    assert stats.safeguard == "first_step" and stats.step == 0
    assert stats.alpha == stats.used_alpha == 0.05


def test_a_frozen_group_ends_its_watch_at_once_and_stays_frozen():
    opt, kinds, model = _full_batch_steps(8, groups="frozen")
    frozen = opt._states[1].rule
    assert isinstance(frozen, rule.GatedState) and frozen.watch is False
    torch.manual_seed(0)
    start = torch.nn.Linear(DIM, 1).double()  # the model's initial parameters
    assert opt.alphas[1] == 0.0 and torch.equal(model.bias, start.bias)
    assert kinds[-1] == "RuleState"  # the other group handed over


def test_a_noisy_measurement_after_quiet_ones_keeps_the_gated_controller():
    theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = newt.NewtOptimizer(torch.optim.SGD([theta], lr=0.1), controller="auto")
    gen = torch.Generator().manual_seed(0)
    for t in range(8):
        grad = theta.detach() - 1  # ½‖θ − 1‖²: deterministic ...
        if t == rule.AUTO_CHECKS - 1:  # ... except one noisy gradient before the last check
            grad = grad + 0.5 * torch.randn(4, generator=gen, dtype=torch.float64)
        theta.grad = grad
        opt.step()
        if t == rule.AUTO_CHECKS - 2:
            assert opt._states[0].rule.quiet == rule.AUTO_CHECKS - 2  # quiet so far
    state = opt._states[0].rule
    assert isinstance(state, rule.GatedState) and state.watch is False


@pytest.mark.parametrize("tensor", [False, True], ids=["host", "tensor"])
@pytest.mark.parametrize("full_batch", [False, True], ids=["minibatch", "full_batch"])
@pytest.mark.parametrize("stop", [2, 8])
def test_a_checkpoint_mid_watch_or_after_it_resumes_the_same_run(full_batch, stop, tensor):
    whole, model_w, _ = _run("auto", full_batch=full_batch, steps=16, tensor=tensor)
    head, _, saved = _run("auto", full_batch=full_batch, steps=16, stop=stop, tensor=tensor)
    tail, model_r, _ = _run("auto", full_batch=full_batch, steps=16, resume=saved,
                            tensor=tensor)
    assert head + tail == pytest.approx(whole, rel=1e-12)
    for p, q in zip(model_w.parameters(), model_r.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=0)


@pytest.mark.parametrize("full_batch", [False, True], ids=["minibatch", "full_batch"])
def test_host_and_tensor_paths_agree(full_batch):
    host, model_h, _ = _run("auto", full_batch=full_batch)
    device, model_d, opt = _run("auto", full_batch=full_batch, tensor=True)
    assert not opt._states[0].host
    assert host == pytest.approx(device, rel=1e-9)
    for p, q in zip(model_h.parameters(), model_d.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), log_kappa=st.floats(0.0, 6.0),
       lr=st.sampled_from([1e-6, 1e-3, 1.0]), noise=st.sampled_from([0.0, 0.05, 0.5]),
       inner=st.sampled_from(["Adam", "SGD"]))
def test_random_quadratics_deterministic_go_newton_noisy_stay_gated(seed, log_kappa, lr, noise,
                                                                    inner):
    """L(θ) = ½ (θ − 1)ᵀ H (θ − 1), λ(H) in [10^-log κ, 1], with gradient noise of relative
    size ``noise`` (the fresh-batch stand-in): Newton after the watch iff ``noise`` is 0."""
    gen = torch.Generator().manual_seed(seed)
    dim = 10
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    hessian = (q * torch.logspace(0, -log_kappa, dim, dtype=torch.float64)) @ q.T
    theta = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    cls = torch.optim.Adam if inner == "Adam" else torch.optim.SGD
    opt = newt.NewtOptimizer(cls([theta], lr=lr), controller="auto")
    alphas = []
    for _ in range(rule.AUTO_CHECKS + 2):
        grad = hessian @ (theta.detach() - 1)
        theta.grad = grad + noise * grad.norm() * torch.randn(dim, generator=gen,
                                                             dtype=torch.float64) / dim**0.5
        opt.step()
        alphas.append(opt.alphas[0])
    state = opt._states[0].rule
    if noise == 0:
        assert isinstance(state, rule.RuleState)
        assert alphas[rule.AUTO_CHECKS] == lr  # handed over at the user's lr
    else:
        assert isinstance(state, rule.GatedState) and state.watch is False


def test_auto_is_validated_and_named_in_the_error_for_a_bad_controller():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="'auto'"):
        newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), controller="automatic")


@pytest.mark.parametrize("full_batch", [False, True], ids=["minibatch", "full_batch"])
def test_tensor_path_reads_one_number_per_step_while_watching_and_none_after(full_batch):
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM, 1).double()
    x, y = _data()
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), foreach=False,
                                              lr=torch.tensor(0.05, dtype=torch.float64)),
                             controller="auto")
    opt._host_scalars = False
    counter = host_read_counter(opt)
    gen = torch.Generator().manual_seed(1)
    reads = []
    for _ in range(12):
        index = (torch.arange(SAMPLES) if full_batch
                 else torch.randint(0, SAMPLES, (BATCH,), generator=gen))
        opt.zero_grad()
        (0.5 * (model(x[index]) - y[index]).pow(2).mean()).backward()
        before = counter.reads
        with counter:
            opt.step()
        reads.append(counter.reads - before)
    watched = rule.AUTO_CHECKS + 1 if full_batch else 2  # the first step has no measurement
    assert all(r == 1 for r in reads[:watched]) and sum(reads[watched:]) == 0
    kind = rule.RuleState if full_batch else rule.GatedState
    assert isinstance(opt._states[0].rule, kind)


@pytest.mark.parametrize("tensor", [False, True], ids=["host", "tensor"])
def test_a_group_that_never_measures_stops_watching_after_the_patience(tensor):
    """Exactly zero gradients give no measurement (A = 0): after `rule.AUTO_PATIENCE`
    such steps the group stays gated, and the tensor path stops reading the verdict."""
    theta = torch.ones(4, dtype=torch.float64, requires_grad=True)
    lr = torch.tensor(0.1, dtype=torch.float64) if tensor else 0.1
    opt = newt.NewtOptimizer(torch.optim.SGD([theta], lr=lr, foreach=False),
                             controller="auto")
    opt._host_scalars = not tensor
    counter = host_read_counter(opt)
    reads, watching = [], []
    for _ in range(rule.AUTO_PATIENCE + 4):
        theta.grad = torch.zeros(4, dtype=torch.float64)
        before = counter.reads
        with counter:
            opt.step()
        reads.append(counter.reads - before)
        watching.append(bool(opt._states[0].rule.watch))
    patience = rule.AUTO_PATIENCE
    # the first step has nothing to measure; each later one could have been measured
    assert watching == [True] * patience + [False] * 4
    state = opt._states[0].rule
    assert isinstance(state, rule.GatedState) and int(state.idle) == patience
    assert torch.equal(theta.detach(), torch.ones(4, dtype=torch.float64))
    if tensor:
        assert all(r == 1 for r in reads[:patience + 1]) and sum(reads[patience + 1:]) == 0


def test_with_interval_only_steps_that_could_be_measured_use_up_the_patience():
    """With ``interval=K`` a measured step's fresh slope is read one step later: with zero
    gradients one step per cycle misses its measurement, so the watch ends in the cycle
    of the `AUTO_PATIENCE`-th miss, and a full batch still hands over at its third quiet
    measurement."""
    k = 4
    theta = torch.ones(4, dtype=torch.float64, requires_grad=True)
    opt = newt.NewtOptimizer(torch.optim.SGD([theta], lr=0.1), controller="auto", interval=k)
    watching = []
    for _ in range(k * rule.AUTO_PATIENCE + 2):
        theta.grad = torch.zeros(4, dtype=torch.float64)
        opt.step()
        watching.append(bool(opt._states[0].rule.watch))
    end = k * (rule.AUTO_PATIENCE - 1) + 1  # the probe step of the 10th cycle
    assert watching == [True] * end + [False] * (len(watching) - end)


def test_with_interval_the_watch_counts_measured_steps_only():
    """With ``interval=K`` the measurements come every K steps: on a full batch the
    handover comes at the third quiet one, read at step K·(AUTO_CHECKS − 1) + 1 (from 0);
    on mini-batches the first measurement ends the watch."""
    k = 4
    for full_batch in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Linear(DIM, 1).double()
        x, y = _data()
        opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=0.05),
                                 controller="auto", interval=k)
        gen = torch.Generator().manual_seed(1)
        kinds, watched = [], []
        for _ in range(k * rule.AUTO_CHECKS + 3):
            index = (torch.arange(SAMPLES) if full_batch
                     else torch.randint(0, SAMPLES, (BATCH,), generator=gen))
            opt.zero_grad()
            (0.5 * (model(x[index]) - y[index]).pow(2).mean()).backward()
            opt.step()
            kinds.append(type(opt._states[0].rule).__name__)
            watched.append(bool(getattr(opt._states[0].rule, "watch", False)))
        if full_batch:
            # fresh slopes are read one step after each measured step: 1, K + 1, 2K + 1, …
            handover = k * (rule.AUTO_CHECKS - 1) + 1
            assert kinds == ["GatedState"] * handover + ["RuleState"] * (len(kinds) - handover)
            assert opt.alphas[0] != pytest.approx(1e-6 * 2**rule.AUTO_CHECKS)
            assert int(opt._states[0].rule.updates) > 0  # the Newton rule has moved α
        else:
            assert set(kinds) == {"GatedState"}
            assert watched == [True, False] + [False] * (len(watched) - 2)


def test_under_a_schedule_the_handover_restores_the_unscheduled_alpha0():
    """The watch steps are α·s; the Newton rule starts from the user's α₀ (the group's
    initial lr), and the inner step keeps the schedule's factor."""
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM, 1).double()
    x, y = _data()
    opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), controller="auto")
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5)
    used = []
    inner_step = opt.inner.step

    def recording_step(*args, **kwargs):
        used.append(float(opt.inner.param_groups[0]["lr"]))
        return inner_step(*args, **kwargs)

    opt.inner.step = recording_step  # type: ignore[method-assign]
    for _ in range(rule.AUTO_CHECKS + 1):
        opt.zero_grad()
        (0.5 * (model(x) - y).pow(2).mean()).backward()
        opt.step()
        scheduler.step()
    assert isinstance(opt._states[0].rule, rule.RuleState)
    assert used[:rule.AUTO_CHECKS] == pytest.approx(
        [0.5 * 1e-6 * 2**j for j in range(rule.AUTO_CHECKS)])
    assert used[rule.AUTO_CHECKS] == pytest.approx(0.5 * 0.05)  # α₀ · s at the handover


def test_each_group_gets_its_own_verdict():
    """L = ½‖A θ₁ − b‖² (full batch) + a mini-batch least squares in θ₂: the first group
    hands over to the Newton rule, the second stays gated."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    x, y = _data()
    first = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    second = torch.nn.Linear(DIM, 1).double()
    opt = newt.NewtOptimizer(torch.optim.Adam([{"params": [first]},
                                               {"params": second.parameters()}], lr=0.05),
                             controller="auto")
    batches = torch.Generator().manual_seed(1)
    for _ in range(rule.AUTO_CHECKS + 3):
        index = torch.randint(0, SAMPLES, (BATCH,), generator=batches)
        opt.zero_grad()
        loss = (0.5 * (a @ first - b).pow(2).sum()
                + 0.5 * (second(x[index]) - y[index]).pow(2).mean())
        loss.backward()
        opt.step()
    deterministic, noisy = (state.rule for state in opt._states)
    assert isinstance(deterministic, rule.RuleState)
    assert isinstance(noisy, rule.GatedState) and noisy.watch is False
    # Only the group handed over restarted its inner state, at the step of the handover.
    assert int(opt.inner.state[first]["step"]) == 3
    assert {int(opt.inner.state[p]["step"]) for p in second.parameters()} == {
        rule.AUTO_CHECKS + 3}
