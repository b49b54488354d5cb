"""The opt-in gated α controller (``controller="gated"``, docs/design/alpha.md section 4).

The oracle is the research harness's float implementation (``REC`` in
``benchmarks/ablations/alpha_controller.py``): on the same problem, batches and inner
optimizer, the core must take the same step sizes.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import newt
from benchmarks.ablations import alpha_controller as ac
from newt import rule
from newt.problems import Point, Problem, _minibatches, _no_grad_float

DIM, HIDDEN, SAMPLES, BATCH = 6, 8, 256, 32


def _problem(noise: bool = False) -> Problem:
    """A small float64 tanh MLP regression with minibatches (noisy slopes, curvature);
    ``noise``: targets independent of the inputs, so the loss soon sits at its noise
    floor and the gradient scale stops falling (H22's stall)."""
    gen = torch.Generator().manual_seed(1 if noise else 0)
    x = torch.randn(SAMPLES, DIM, generator=gen, dtype=torch.float64)
    if noise:
        y = torch.randn(SAMPLES, 1, generator=gen, dtype=torch.float64)
    else:
        y = torch.sin(x @ torch.randn(DIM, generator=gen, dtype=torch.float64)).unsqueeze(1)

    def init(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1)).double()

    def loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return 0.5 * (model(batch[0]) - batch[1]).pow(2).mean()

    return Problem(name="noise" if noise else "tiny", init=init, loss=loss,
                   batches=_minibatches((x, y), BATCH),
                   train_loss=_no_grad_float(lambda model: loss(model, (x, y))),
                   stochastic=True, dtype=torch.float64)


def _quadratic() -> Problem:
    """A float64 noisy quadratic with a sharp stability edge (DeepOBS quadratic_deep in
    small: 18 eigenvalues in U(0, 1), 2 in U(30, 60); ½ (θ − x)ᵀ Q (θ − x) over a batch)."""
    dim, samples, batch = 20, 512, 32
    gen = torch.Generator().manual_seed(0)
    eig = torch.cat([torch.rand(dim - 2, generator=gen, dtype=torch.float64),
                     30 + 30 * torch.rand(2, generator=gen, dtype=torch.float64)])
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    hessian = rotation.T @ torch.diag(eig) @ rotation
    x = 0.6 * torch.randn(samples, dim, generator=gen, dtype=torch.float64)

    def mean_loss(theta: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        diff = theta - points
        return 0.5 * ((diff @ hessian) * diff).sum(dim=1).mean()

    return Problem(name="quadratic", init=lambda seed: Point(torch.ones(dim, dtype=torch.float64)),
                   loss=lambda model, batch: mean_loss(model.theta, batch[0]),
                   batches=_minibatches((x,), batch),
                   train_loss=_no_grad_float(lambda model: mean_loss(model.theta, x)),
                   stochastic=True, dtype=torch.float64)


def _tensor(x: bool | int | float) -> torch.Tensor:
    """A host scalar as the tensor path holds it: a 0-d CPU bool, int64 or float64."""
    dtype = {bool: torch.bool, int: torch.int64}.get(type(x), torch.float64)
    return torch.tensor(x, dtype=dtype)


PROBLEM = _problem()
NOISE = _problem(noise=True)
QUADRATIC = _quadratic()
INNERS = {"Adam": torch.optim.Adam, "SGD": torch.optim.SGD}


def _core(inner: str, alpha0: float, *, closure: bool, steps: int, seed: int = 0,
          stop: int | None = None, resume: dict | None = None, schedule=None,
          problem: Problem = PROBLEM, guards: list[str] | None = None):
    """Run NewtOptimizer(controller="gated") as the harness's loop does; return the step
    sizes the inner optimizer used, the model and the optimizer. ``schedule`` (a function
    of t / steps) is attached as a ``LambdaLR``; ``guards`` collects each step's
    safeguard."""
    model = problem.init(seed)
    params = list(model.parameters())
    opt = newt.NewtOptimizer(INNERS[inner](params, lr=alpha0), controller="gated")
    scheduler = (torch.optim.lr_scheduler.LambdaLR(opt, lambda t: schedule(t / steps))
                 if schedule is not None else None)
    used: list[float] = []
    inner_step = opt.inner.step

    def recording_step(*args, **kwargs):
        used.append(float(opt.inner.param_groups[0]["lr"]))
        return inner_step(*args, **kwargs)

    opt.inner.step = recording_step  # type: ignore[method-assign]
    batches = problem.batches(seed)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        start = resume["t"]
        for _ in range(start):
            next(batches)
    for t in range(start, steps):
        if stop is not None and t == stop:
            return used, model, opt
        batch = next(batches)

        def evaluate(batch=batch):
            opt.zero_grad()
            loss = problem.loss(model, batch)
            loss.backward()
            return loss

        if closure:
            opt.step(evaluate)
        else:
            evaluate()
            opt.step()
        if scheduler is not None:
            scheduler.step()
        if guards is not None:
            guards.append(opt.last_stats()[0].safeguard)
    return used, model, opt


def _harness(inner: str, alpha0: float, *, closure: bool, steps: int,
             monkeypatch: pytest.MonkeyPatch, schedule=None,
             problem: Problem = PROBLEM, controller: ac.Gate = ac.REC) -> ac.RunOut:
    monkeypatch.setattr(ac, "problem", lambda name: problem)
    monkeypatch.setitem(ac.INNER, inner, INNERS[inner])
    evals = 2 * steps if closure else steps
    return ac.train(problem.name, inner, ac.for_inner(controller, inner), alpha0,
                    closure=closure, evals=evals, seed=0, schedule=schedule)


@pytest.mark.parametrize("closure", [False, True], ids=["free", "closure"])
@pytest.mark.parametrize("inner", ["Adam", "SGD"])
def test_matches_the_harness_float_implementation(inner, closure, monkeypatch):
    steps = 150
    alpha0 = 1e-2 if inner == "Adam" else 0.3
    used, model, opt = _core(inner, alpha0, closure=closure, steps=steps)
    ref = _harness(inner, alpha0, closure=closure, steps=steps, monkeypatch=monkeypatch)
    # The harness lists α of every step (the inner step uses it); the core skips none here.
    assert len(used) == len(ref.alphas) == steps
    assert used == pytest.approx(ref.alphas, rel=1e-9, abs=0)
    assert PROBLEM.train_loss(model) == pytest.approx(ref.loss, rel=1e-9)
    # the run left phase 1 and was gated at least once (the test exercises phase 2)
    state = opt._states[0].rule
    assert int(state.phase) == 2 and int(state.count) > 10
    assert max(used) > 10 * used[0]
    if closure and inner == "Adam":
        assert ref.rejects > 0  # the undo path is exercised too
    # closure-free SGD (β₁ = 0) meets its first fresh overshoot: the H11 event is exercised
    assert bool(state.shot) is (inner == "SGD" and not closure)


def test_a_stall_matches_the_harness(monkeypatch):
    """Past three stall windows (H22), on targets that are pure noise: the core takes the
    harness's step sizes. (The stall with α above the floor is the next test's.)"""
    steps = 560
    guards: list[str] = []
    used, model, opt = _core("Adam", 1e-2, closure=False, steps=steps, problem=NOISE,
                             guards=guards)
    ref = _harness("Adam", 1e-2, closure=False, steps=steps, monkeypatch=monkeypatch,
                   problem=NOISE)
    assert used == pytest.approx(ref.alphas, rel=1e-9, abs=0)
    assert NOISE.train_loss(model) == pytest.approx(ref.loss, rel=1e-9)
    state = opt._states[0].rule
    assert state.stall_window == pytest.approx(100 * 1.5**3)  # three windows completed
    # the stall fired once, at step 495 (the end of the third window), with α at the
    # floor, 0.3 × its peak: α did not move, and the cap fell below it (no more growth)
    assert [t for t, g in enumerate(guards) if g == "stall"] == [495]
    assert used[494] == used[495] == used[-1]
    assert used[-1] == pytest.approx(0.3 * float(state.peak), rel=1e-12)
    assert float(state.cap) < used[-1]


def _drive(momentum: float, closure: bool, device: torch.device | None, calls: int,
           scale=lambda update: 1.0):
    """The gated rule alone, and the harness's ``REC`` beside it, on a gradient scale
    a = A/η = ``scale(update)`` (update t is formed at call t, from call t − 1's A) with
    fresh slopes that keep every Newton factor inside the significance gates (f = 1), so
    that only the stall can move α. Returns the core's safeguards and α of every
    `before_step`, and the harness's α."""
    options = newt.NewtOptimizer(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1e-2),
                                 controller="gated")._all_options()[0]
    tensor = (lambda v: v) if device is None else (
        lambda v: torch.tensor(v, dtype=torch.float64, device=device))
    state, alpha = rule.gated_init(device), tensor(1e-2)
    gate = replace(ac.REC, momentum=momentum)
    ref = gate.init(1e-2, closure)
    tau = rule.GATED_TAU * (1 - momentum)
    guards, alphas, expected = [], [], []
    eta = math.nan
    for t in range(calls):
        # ρ = B/A = −τ ± 0.5: the shifted slope averages to 0, its s.d. keeps it gated
        fresh = (-tau + (0.5 if t % 2 else -0.5)) * eta if t else None
        state, decision = rule.gated_before_step(
            state, rule.Probe(tensor(math.nan if fresh is None else fresh),
                              True if device is None else torch.tensor(True), momentum),
            alpha, options)
        ref, ref_alpha = gate.before_step(ref, ac.Before(fresh, True, 1.0))
        guards.append(int(decision.safeguard))
        alphas.append(float(decision.alpha))
        expected.append(ref_alpha)
        alpha = decision.alpha
        eta = float(alpha)
        A = scale(t + 1) * eta  # the next update's a = A/η
        look = (0.5 * A, 1.0, 0.9) if closure else (None, None, None)
        state, decision = rule.gated_after_step(state, rule.Outcome(
            tensor(A), *(None if v is None else tensor(v) for v in look), own_loss=True,
            scale=tensor(1.0)), alpha, options)
        ref, accept, _ = gate.after_step(ref, ac.After(A, look[0], look[1] or 1.0, look[2]))
        assert bool(decision.accept) and accept
        alpha = decision.alpha
    return guards, alphas, expected


ENDS = (100, 250, 475, 813)  # the first four windows (100, 150, 225, 337.5 updates) end here


def _per_window(fall: float):
    """a = fall^(−k) in the k-th window of updates (ends at ``ENDS``)."""
    return lambda update: fall ** -sum(update > end for end in ENDS)


@pytest.mark.parametrize("device", [None, torch.device("cpu")], ids=["host", "tensor"])
@pytest.mark.parametrize("case", ["momentum", "plain", "closure", "falling", "slow"])
def test_a_stalled_gradient_scale_steps_down_at_the_end_of_growing_windows(case, device):
    """H22: closure-free with β₁ > 0, windows of 100, 150, 225, 337.5 updates; at the end
    of each after the first, a mean log a that did not fall by log 1.5 multiplies α by
    0.8: a constant a (``momentum``) or one that falls 1.2× a window (``slow``) stalls at
    every test, one that falls 2× a window (``falling``) never does. β₁ = 0 and closure
    mode have their own brakes: no stall. The harness's ``REC`` takes the same α."""
    calls = 900
    scale = {"falling": _per_window(2.0), "slow": _per_window(1.2)}.get(case, lambda u: 1.0)
    guards, alphas, expected = _drive(0.0 if case == "plain" else 0.9, case == "closure",
                                      device, calls, scale)
    assert alphas == pytest.approx(expected, rel=1e-12, abs=0)
    stalls = [t for t, g in enumerate(guards) if g == rule.Safeguard.STALL]
    # call t > 0 is update t; the windows end at ENDS (813: the first count ≥ 812.5)
    if case in ("momentum", "slow"):
        assert stalls == list(ENDS[1:])
        for t in stalls:
            assert alphas[t] == pytest.approx(0.8 * alphas[t - 1], rel=1e-12)
        assert alphas[-1] == pytest.approx(alphas[1] * 0.8**3, rel=1e-12)
    else:
        assert stalls == []
        assert alphas[-1] == alphas[1]
    # the first update has one sample (s.d. 0, not gated); later factors are gated, so α
    # moves only at the stalls
    assert guards[:2] == [rule.Safeguard.FIRST_STEP, rule.Safeguard.NEWTON]
    assert all(g in (rule.Safeguard.GATED, rule.Safeguard.STALL) for g in guards[2:])


@pytest.mark.parametrize("device", [None, torch.device("cpu")], ids=["host", "tensor"])
def test_the_stall_counts_only_updates_with_a_positive_gradient_scale(device):
    """Every fifth update has a = −1 (the step went uphill along its own batch's
    gradient): it is left out of the windows, so with a constant a = 1 otherwise the
    windows of 100, 150, 225 and 337.5 positive updates end at updates 124, 312, 593 and
    1016 instead of 100, 250, 475 and 813."""
    guards, alphas, expected = _drive(0.9, False, device, 1100,
                                      lambda update: -1.0 if update % 5 == 0 else 1.0)
    assert alphas == pytest.approx(expected, rel=1e-12, abs=0)
    assert [t for t, g in enumerate(guards) if g == rule.Safeguard.STALL] == [312, 593, 1016]
    assert alphas[-1] == pytest.approx(alphas[1] * 0.8**3, rel=1e-12)


@pytest.mark.parametrize("closure", [False, True], ids=["free", "closure"])
@pytest.mark.parametrize("inner", ["Adam", "SGD"])
def test_under_a_schedule_matches_the_harness(inner, closure, monkeypatch):
    """With warmup + cosine attached, the core takes the harness's steps: its Newton target
    is the step taken, α·s (design record H16: naming α instead was measured and refuted),
    which differs from the ``uncompensated`` variant's."""
    steps = 150
    alpha0 = 1e-2 if inner == "Adam" else 0.3
    used, _, opt = _core(inner, alpha0, closure=closure, steps=steps, schedule=ac.cosine)
    ref = _harness(inner, alpha0, closure=closure, steps=steps, monkeypatch=monkeypatch,
                   schedule=ac.cosine)
    factors = [ac.cosine(t / steps) for t in range(steps)]
    assert used == pytest.approx([a * f for a, f in zip(ref.alphas, factors, strict=True)],
                                 rel=1e-9, abs=0)
    uncompensated = ac.train("tiny", inner,
                             ac.for_inner(replace(ac.REC, uncompensated=True), inner), alpha0,
                             closure=closure, evals=2 * steps if closure else steps, seed=0,
                             schedule=ac.cosine)
    assert uncompensated.alphas != pytest.approx(ref.alphas, rel=1e-3)
    assert int(opt._states[0].rule.phase) == 2


@pytest.mark.parametrize(("problem", "closure"), [(NOISE, False), (NOISE, True),
                                                 (PROBLEM, True)],
                         ids=["noise-free", "noise-closure", "tiny-closure"])
def test_a_decaying_schedule_holds_alpha_after_the_first_updates(problem, closure,
                                                                 monkeypatch):
    """H35, Adam under warmup + cosine: past the schedule's peak and 100 phase-2 updates,
    the gated rule no longer lowers α (the schedule decays the step). The core takes the
    harness's steps; the rule without the hold (``rec_h32``) lowers α in the same run, and
    ends at a higher loss."""
    steps = 300
    used, model, opt = _core("Adam", 1e-2, closure=closure, steps=steps, schedule=ac.cosine,
                             problem=problem)
    ref = _harness("Adam", 1e-2, closure=closure, steps=steps, monkeypatch=monkeypatch,
                   schedule=ac.cosine, problem=problem)
    factors = [ac.cosine(t / steps) for t in range(steps)]
    assert used == pytest.approx([a * f for a, f in zip(ref.alphas, factors, strict=True)],
                                 rel=1e-9, abs=0)
    unheld = _harness("Adam", 1e-2, closure=closure, steps=steps, monkeypatch=monkeypatch,
                      schedule=ac.cosine, problem=problem, controller=ac.REC_H32)
    late = [t for t, (a, b) in enumerate(zip(ref.alphas, unheld.alphas, strict=True))
            if not math.isclose(a, b, rel_tol=1e-6)]
    assert late and late[0] > steps // 4  # the runs part only once the hold can act
    assert min(ref.alphas[late[0]:]) > min(unheld.alphas[late[0]:])
    assert problem.train_loss(model) < unheld.loss
    state = opt._states[0].rule
    assert int(state.count) > rule.GATED_HOLD_AFTER and float(state.scale_peak) == 1.0


def test_a_run_of_overshoots_under_a_rising_warmup_steps_back_again(monkeypatch):
    """Closure-free SGD under a warmup over half the run (docs/design/alpha.md, H32): the
    rising factor carries a held α past the stability edge, where the growing spread of the
    slopes keeps the significance gate shut. Every third fresh overshoot in a row steps α
    back as the first one did; without that (``rec_h28``) the same run diverges."""
    steps = 200

    def warmup(u: float) -> float:
        return min(1.0, u / 0.5)

    guards: list[str] = []
    used, model, _ = _core("SGD", 0.3, closure=False, steps=steps, schedule=warmup,
                           problem=QUADRATIC, guards=guards)
    ref = _harness("SGD", 0.3, closure=False, steps=steps, monkeypatch=monkeypatch,
                   schedule=warmup, problem=QUADRATIC)
    factors = [warmup(t / steps) for t in range(steps)]
    assert used == pytest.approx([a * f for a, f in zip(ref.alphas, factors, strict=True)],
                                 rel=1e-9, abs=0)
    assert guards.count("overshoot") >= 2, guards  # the first overshoot, then a run
    start = QUADRATIC.train_loss(QUADRATIC.init(0))
    assert QUADRATIC.train_loss(model) < start
    old = ac.train(QUADRATIC.name, "SGD", ac.for_inner(ac.REC_H28, "SGD"), 0.3, closure=False,
                   evals=steps, seed=0, schedule=warmup)
    assert old.loss > 1e6 * start


@pytest.mark.parametrize("device", [None, torch.device("cpu")], ids=["host", "tensor"])
def test_a_run_of_overshoots_needs_three_in_a_row_without_momentum(device):
    """The rule in isolation, on Python floats and on 0-d tensors: from phase 2 after the
    first overshoot, ρ = −2 twice, then a quiet step (the count restarts), then three in a
    row: α × ½, the cap at 0.9 α and the floor's peak at α. With β₁ = 0.9 nothing acts."""
    options = newt.NewtOptimizer(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0),
                                 controller="gated")._all_options()[0]

    def value(x):  # a host scalar, or a 0-d tensor of the state's kind
        return x if device is None else _tensor(x)

    base = rule.gated_init(device)._replace(
        started=value(True), phase=value(2), shot=value(True), peak=value(10.0),
        count=value(20), mean_b=value(0.0), mean_b2=value(1e6), mean_a=value(1.0),
        mean_c=value(1.0), free=value(True))

    def run(momentum: float, ratios: list[float]) -> list[tuple[float, float, float]]:
        state, alpha, out = base, value(4.0), []
        for rho in ratios:
            state = state._replace(pending=value(True), slope=value(1.0), step=alpha)
            state, decision = rule.gated_before_step(
                state, rule.Probe(value(rho), value(True), momentum), alpha, options)
            alpha = decision.alpha
            out.append((float(alpha), float(state.cap), float(state.peak)))
        return out

    plain = run(0.0, [-2.0, -2.0, 0.5, -2.0, -2.0, -2.0])
    assert [a for a, _, _ in plain[:5]] == [4.0] * 5  # the wide spread: the gate holds α
    assert plain[5] == (2.0, pytest.approx(3.6), 4.0)
    assert all(math.isinf(cap) for _, cap, _ in plain[:5])
    assert [a for a, _, _ in run(0.9, [-2.0] * 6)] == [4.0] * 6


def test_starts_small_and_doubles_on_a_quadratic():
    w = nn.Parameter(torch.ones(4, dtype=torch.float64))
    h = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1), controller="gated")
    alphas = []
    for _ in range(8):
        opt.zero_grad()
        (0.5 * (h * w * w).sum()).backward()
        opt.step()
        alphas.append(opt.alphas[0])
    assert alphas[0] == 1e-6  # min(α₀, 1e-6)
    # ρ = B/A = 1 − α/α_line ≫ 1/2 while α ≪ 1/4: ×2 per step
    assert alphas == pytest.approx([1e-6 * 2**k for k in range(8)], rel=1e-12)
    assert [s.safeguard for s in opt.last_stats()] == ["growth"]
    # a start below 1e-6 is kept
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=1e-8), controller="gated")
    opt.zero_grad()
    (0.5 * (h * w * w).sum()).backward()
    opt.step()
    assert opt.alphas[0] == 1e-8


@pytest.mark.parametrize(("inner", "closure", "noise"), [
    ("Adam", False, False), ("Adam", True, False), ("SGD", False, False),
    ("Adam", False, True)], ids=["Adam-free", "Adam-closure", "SGD-free", "Adam-free-stall"])
def test_resume_mid_run_is_bit_exact(inner, closure, noise):
    """Adam in both modes; closure-free SGD resumed before its first overshoot (H11);
    closure-free Adam on pure noise resumed inside its third stall window (H22), with the
    windows' state away from its defaults."""
    steps, stop = (520, 300) if noise else (150, 70)
    problem = NOISE if noise else PROBLEM
    alpha0 = 1e-2 if inner == "Adam" else 0.3
    used, model, opt = _core(inner, alpha0, closure=closure, steps=steps, problem=problem)
    first, model1, opt1 = _core(inner, alpha0, closure=closure, steps=steps, stop=stop,
                                problem=problem)
    if noise:  # two windows done: the third (225 updates) is under way, the mean is set
        saved_rule = opt1._states[0].rule
        assert float(saved_rule.stall_window) == 225 and 0 < int(saved_rule.stall_count)
        assert math.isfinite(float(saved_rule.stall_mean))
    buffer = io.BytesIO()
    torch.save({"model": model1.state_dict(), "opt": opt1.state_dict(), "t": stop}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert int(saved["opt"]["newt"]["groups"][0]["rule"]["phase"]) == 2  # the gated state
    rest, model2, opt2 = _core(inner, alpha0, closure=closure, steps=steps, resume=saved,
                               problem=problem)
    assert first + rest == used  # bit-exact step sizes
    assert opt2.alphas == opt.alphas
    # closure-free SGD's event came after `stop`: the resumed run met it
    assert not bool(opt1._states[0].rule.shot)
    assert bool(opt2._states[0].rule.shot) is (inner == "SGD")
    for x, y in zip(opt._states[0].rule, opt2._states[0].rule, strict=True):
        assert x == y or (x != x and y != y)  # host scalars (NaN == NaN counts)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_final_alpha_independent_of_alpha0():
    finals = []
    for alpha0 in (1e-6, 1e-2, 1.0):
        _, _, opt = _core("Adam", alpha0, closure=False, steps=100)
        finals.append(opt.alphas[0])
    assert finals[0] == finals[1] == finals[2]
    assert math.isfinite(finals[0]) and finals[0] > 1e-5


def test_default_is_auto_and_option_is_validated():
    w = nn.Parameter(torch.ones(2))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1))
    assert opt.param_groups[0]["newt"]["controller"] == "auto"
    seed = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1), preset="seed")
    assert seed.param_groups[0]["newt"]["controller"] == "newton"  # the seed's rule
    with pytest.raises(ValueError, match="controller"):
        newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1), controller="fast")


def _phase2(**fields) -> rule.GatedState:
    """A phase-2 host state with a pending closure-free step: A = 1 at η = α = 0.5."""
    state = rule.gated_init(None)._replace(
        pending=True, slope=1.0, step=0.5, started=True, phase=2, peak=0.5, count=20,
        mean_b=0.0, mean_b2=1.0, mean_a=2.0, mean_c=4.0, free=True)
    return state._replace(**fields)


@pytest.mark.parametrize("case", ["plain", "floor", "momentum", "closure", "again", "mild"])
def test_the_first_fresh_overshoot_caps_and_shrinks_only_without_momentum_closure_free(case):
    """ρ = B/A = −2 < −1: closure-free with β₁ = 0, the first such step sets the cap to
    0.9α and halves α (H11), above the floor 0.3 × peak; with momentum, after a closure
    step, a second time, or for ρ ≥ −1, the rule is the one without the event."""
    options = newt.NewtOptimizer(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.5),
                                 controller="gated")._all_options()[0]
    state = _phase2(shot=case == "again", peak=1.0 if case == "floor" else 0.5)
    if case == "closure":  # the pending step came from a closure step (with a lookahead)
        state, _ = rule.gated_after_step(state, rule.Outcome(
            slope=1.0, lookahead_slope=0.5, loss=1.0, lookahead_loss=0.9, own_loss=True,
            scale=1.0), 0.5, options)
        assert state.free is False and state.pending
    slope = -0.5 if case == "mild" else -2.0
    momentum = 0.9 if case == "momentum" else 0.0
    new, decision = rule.gated_before_step(state, rule.Probe(slope, True, momentum), 0.5,
                                           options)
    # the rule without the event: the same step as a closure step, whose τ is the
    # closure-free one when nothing is undone (H28's τ needs ``reject``)
    without, reference = rule.gated_before_step(state._replace(free=False),
                                                rule.Probe(slope, True, momentum), 0.5,
                                                replace(options, reject=False))
    if case in ("plain", "floor"):
        assert new.shot and new.cap == pytest.approx(0.45)
        assert decision.safeguard == rule.Safeguard.OVERSHOOT
        if case == "plain":
            assert decision.alpha == pytest.approx(0.25)
            assert decision.alpha < reference.alpha
        else:  # the floor comes after the shrink: 0.3 × the peak 1.0
            assert decision.alpha == pytest.approx(0.3)
    else:
        assert new.shot == state.shot and new.cap == without.cap
        assert decision.alpha == reference.alpha


@pytest.mark.parametrize("host", [True, False], ids=["host", "tensor"])
@pytest.mark.parametrize(("scale", "count", "held"),
                         [(0.5, 150, True), (1.0, 150, False), (0.5, 50, False)],
                         ids=["decaying", "at-peak", "early"])
def test_a_significant_decrease_is_held_once_the_schedule_decays(scale, count, held, host):
    """H35 on one update (β₁ = 0.9, closure-free; b̄ = −1 with no spread, so the decrease is
    significant and capped at ×0.8): below the schedule's peak so far and after 100
    phase-2 updates, α and the cap stay; at the peak, or earlier in phase 2, α falls to
    0.4 and the cap to 0.45."""
    options = newt.NewtOptimizer(torch.optim.Adam([nn.Parameter(torch.ones(1))], lr=0.5),
                                 controller="gated")._all_options()[0]
    state = _phase2(count=count, mean_b=-1.0, scale_peak=1.0)
    probe = rule.Probe(-0.8, True, 0.9, scale)  # ρ = −0.8: no overshoot, and β₁ > 0 anyway
    alpha: float | torch.Tensor = 0.5
    if not host:
        state, alpha = rule.GatedState(*map(_tensor, state)), _tensor(0.5)
        probe = rule.Probe(_tensor(-0.8), _tensor(True), 0.9, _tensor(scale))
    new, decision = rule.gated_before_step(state, probe, alpha, options)
    assert float(decision.alpha) == pytest.approx(0.5 if held else 0.4)
    assert float(new.cap) == (math.inf if held else pytest.approx(0.45))
    assert int(decision.safeguard) == (rule.Safeguard.GATED if held else rule.Safeguard.NEWTON)
    assert float(new.scale_peak) == 1.0


@pytest.mark.parametrize("host", [True, False], ids=["host", "tensor"])
def test_a_checkpoint_saved_before_the_overshoot_fields_loads(host):
    """A gated state_dict without ``free`` and ``shot`` (saved before H11) or the stall
    fields (before H22), the overshoot run (H32), the schedule's peak (H35) or the pending
    step's losses loads, with their defaults; the state then round-trips with them."""
    _, model, opt = _core("SGD", 0.3, closure=False, steps=150)
    saved = opt.state_dict()
    assert bool(saved["newt"]["groups"][0]["rule"]["shot"])  # this run met its overshoot
    for key in ("free", "shot", "stall_sum", "stall_count", "stall_window", "stall_mean",
                "overshoots", "scale_peak", "loss", "lookahead_loss"):
        del saved["newt"]["groups"][0]["rule"][key]
    fresh = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=0.3), controller="gated")
    fresh._host_scalars = host
    fresh.load_state_dict(saved)
    rule_state = fresh._states[0].rule
    assert not bool(rule_state.free) and not bool(rule_state.shot)
    assert float(rule_state.stall_window) == 100 and math.isnan(float(rule_state.stall_mean))
    assert int(rule_state.overshoots) == 0 and float(rule_state.scale_peak) == 0.0
    assert math.isnan(float(rule_state.loss)) and math.isnan(float(rule_state.lookahead_loss))
    assert isinstance(rule_state.shot, torch.Tensor) is (not host)
    again = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=0.3), controller="gated")
    again.load_state_dict(opt.state_dict())
    assert bool(again._states[0].rule.shot) and bool(again._states[0].rule.free)


@pytest.mark.parametrize(("momentum", "reject", "aims_further"),
                         [(0.0, True, True), (0.0, False, False), (0.9, True, False)])
def test_a_closure_step_without_momentum_aims_further_past_the_minimum(
        momentum, reject, aims_further, monkeypatch):
    """H28: after a closure step with β₁ = 0 and the undo on, the slope shift is
    τ = 0.4 (the closure-free τ₀ = 0.2 otherwise): the same α as the closure-free rule
    with τ₀ set to 0.4, a larger growth than with τ₀ = 0.2. Without ``reject`` or with
    momentum the closure step takes the closure-free τ₀ (1 − β₁)."""
    options = replace(newt.NewtOptimizer(torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.5),
                                         controller="gated")._all_options()[0], reject=reject)
    probe = rule.Probe(0.5, True, momentum)  # ρ = 0.5: no overshoot event
    quiet = {"mean_b": 1.0, "mean_b2": 1.0}  # b̄ > 0 with no spread: a significant rise
    _, closure = rule.gated_before_step(_phase2(free=False, **quiet), probe, 0.5, options)
    _, free = rule.gated_before_step(_phase2(**quiet), probe, 0.5, options)
    monkeypatch.setattr(rule, "GATED_TAU", rule.GATED_TAU_CLOSURE_PLAIN)
    _, free_further = rule.gated_before_step(_phase2(**quiet), probe, 0.5, options)
    assert free_further.alpha > free.alpha > 0.5  # the shift matters here
    assert closure.alpha == (free_further.alpha if aims_further else free.alpha)


@pytest.mark.parametrize("host", [True, False], ids=["host", "tensor"])
def test_closure_mode_stats_report_the_losses_of_the_step_they_describe(host):
    """In closure mode `last_stats` gives L(θ_t) and L(θ_{t+1}) on the batch of the step
    whose α it reports (``used_alpha``): the step before when the decision came from the
    fresh slope, the step itself when that step was undone. Closure-free: ``None``."""
    gen = torch.Generator().manual_seed(0)
    targets = [torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(40)]
    x = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = newt.NewtOptimizer(torch.optim.SGD([x], lr=0.1), controller="gated")
    opt._host_scalars = host
    losses: list[float] = []  # every closure call, two per step
    used: list[float] = []  # the α each inner step was taken with
    inner_step = opt.inner.step

    def recording_step(*args, **kwargs):
        used.append(float(opt.inner.param_groups[0]["lr"]))
        return inner_step(*args, **kwargs)

    opt.inner.step = recording_step  # type: ignore[method-assign]
    undone = 0
    for t, c in enumerate(targets):
        def closure(c=c):
            opt.zero_grad()
            loss = 0.5 * ((x - c) ** 2).sum()
            loss.backward()
            losses.append(float(loss.detach()))
            return loss

        opt.step(closure)
        stats = opt.last_stats()[0]
        assert len(used) == t + 1 and len(losses) == 2 * (t + 1)
        if t == 0:
            assert stats is None or stats.loss is None
            continue
        own = stats.safeguard == "loss_increase"  # an undo reports the step itself
        undone += own
        s = t if own else t - 1
        assert stats.used_alpha == pytest.approx(used[s], rel=1e-12)
        assert stats.loss == pytest.approx(losses[2 * s], rel=1e-12)
        assert stats.lookahead_loss == pytest.approx(losses[2 * s + 1], rel=1e-12)
    assert len(set(used)) > 10  # α moved: the reports are of different steps
    for _ in range(2):  # closure-free steps: the second reports the first, without losses
        opt.zero_grad()
        (0.5 * (x ** 2).sum()).backward()
        opt.step()
    assert opt.last_stats()[0].loss is None and opt.last_stats()[0].lookahead_loss is None


def test_a_checkpoint_of_the_newton_rule_resumes_it_under_the_auto_default():
    """A state_dict saved with ``controller="newton"`` (the default before H36) carries
    the option in its groups: loaded into an optimizer built with today's default it goes
    on with the Newton rule, step for step as the run that was not interrupted."""
    def run(resume_at: int | None) -> list[float]:
        w = nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))
        opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.05), controller="newton")
        lrs = []
        for t in range(12):
            if t == resume_at:
                saved = opt.state_dict()
                opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.05))  # the default
                assert opt.param_groups[0]["newt"]["controller"] == "auto"
                opt.load_state_dict(saved)
                assert opt.param_groups[0]["newt"]["controller"] == "newton"
            opt.zero_grad()
            (w ** 2 * torch.tensor([1.0, 4.0], dtype=torch.float64)).sum().backward()
            opt.step()
            lrs.append(float(opt.param_groups[0]["lr"]))
        return lrs

    assert run(resume_at=5) == run(resume_at=None)
