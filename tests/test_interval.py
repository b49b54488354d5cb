"""``NewtOptimizer(interval=K)``: α measured and updated on one step in K, plain inner steps
between, guarded against non-finite gradients, resumable mid-cycle."""

from __future__ import annotations

import io
import math

import pytest
import torch

import newt
from tests.helpers import make_mlp, mlp_batches, mlp_data


def _run(interval: int, steps: int, closure: bool = False, controller: str = "newton",
         lr: float = 1e-2, model=None, opt=None, batches=None):
    model = model if model is not None else make_mlp(seed=0, dtype=torch.float64)
    if opt is None:
        opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=lr),
                                 interval=interval, controller=controller)
    batches = batches if batches is not None else mlp_batches(steps, batch=16)
    alphas, calls = [], []
    for (x, y), _ in zip(batches, range(steps), strict=False):
        count = [0]

        def loss_fn(x=x, y=y, count=count):
            count[0] += 1
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x.double()), y)
            loss.backward()
            return loss

        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()
        alphas.append(opt.alphas[0])
        calls.append(count[0])
    return alphas, calls, model, opt


@pytest.mark.parametrize("interval", [2, 3, 5])
@pytest.mark.parametrize("closure", [False, True], ids=["free", "closure"])
def test_alpha_changes_only_on_the_step_after_a_measured_one(interval, closure):
    steps = 6 * interval + 1
    alphas, calls, _, opt = _run(interval, steps, closure=closure)
    changed = [t for t in range(1, steps) if alphas[t] != alphas[t - 1]]
    assert changed, "α never moved"
    # step t (0-based) is measured when t % K == 0; α moves at the probe step t % K == 1
    # (closure mode may also shrink α on the measured step itself when it undoes it)
    allowed = {1} | ({0} if closure else set())
    assert all(t % interval in allowed for t in changed)
    assert opt.last_stats()[0].step <= math.ceil(steps / interval)
    if closure:  # two evaluations on a measured step, one on the others
        assert calls == [2 if t % interval == 0 else 1 for t in range(steps)]


def test_interval_one_is_the_default_and_the_same_run():
    a, _, _, _ = _run(1, 12)
    model = make_mlp(seed=0, dtype=torch.float64)
    b, _, _, _ = _run(1, 12, model=model, opt=newt.NewtOptimizer(
        torch.optim.Adam(model.parameters(), lr=1e-2), controller="newton"))
    assert a == b


def test_snapshot_is_not_touched_between_measurements():
    model = make_mlp(seed=0, dtype=torch.float64)
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), interval=4)
    _run(4, 2, model=model, opt=opt)  # a measured step and its probe
    snapshots = [opt.state[p]["snapshot"].clone() for p in model.parameters()]
    _run(4, 2, model=model, opt=opt, batches=mlp_batches(2, batch=16, seed=7))  # plain steps
    for p, s in zip(model.parameters(), snapshots, strict=True):
        assert torch.equal(opt.state[p]["snapshot"], s)


@pytest.mark.parametrize("cycle", [1, 2], ids=["probe", "plain"])
def test_nonfinite_gradient_between_measurements_leaves_the_model_intact(cycle):
    model = make_mlp(seed=0, dtype=torch.float64)
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), interval=4)
    _run(4, cycle, model=model, opt=opt)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = next(iter(mlp_batches(1, batch=16, seed=9)))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x.double()), y).backward()
    next(model.parameters()).grad.view(-1)[0] = math.inf
    opt.step()
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    assert all(torch.isfinite(v).all() for s in opt.inner.state.values() for v in s.values())


@pytest.mark.parametrize("controller", ["newton", "gated"])
def test_converges_with_an_interval(controller):
    x, y = mlp_data(64, seed=2)  # the data the batches are drawn from

    def loss(model) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x.double()), y))

    start = loss(make_mlp(seed=0, dtype=torch.float64))
    # α moves once per 4 steps: 4 × the steps of 300 updates
    alphas, _, model, _ = _run(4, 1200, lr=1e-4, controller=controller)
    assert max(alphas) > 100 * alphas[0]  # α grew from a too-small start
    assert loss(model) < 0.5 * start


@pytest.mark.parametrize("split", [1, 2, 3])
def test_resume_mid_cycle_is_exact(split):
    steps = 9
    full, _, _, _ = _run(3, steps)
    batches = list(mlp_batches(steps, batch=16))
    first, _, model, opt = _run(3, split, batches=batches[:split])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2 = make_mlp(seed=0, dtype=torch.float64)
    model2.load_state_dict(saved["model"])
    opt2 = newt.NewtOptimizer(torch.optim.Adam(model2.parameters(), lr=1e-2), interval=3)
    opt2.load_state_dict(saved["opt"])
    rest, _, _, _ = _run(3, steps - split, model=model2, opt=opt2, batches=batches[split:])
    assert first + rest == full


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (2.5, TypeError),
                                        (True, TypeError), ("4", TypeError)])
def test_bad_interval_is_refused(bad, error):
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(error, match="interval"):
        newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1), interval=bad)


def test_reuse_lookahead_feeds_the_step_after_a_measured_one():
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64)
    a = a @ a.T + torch.eye(6, dtype=torch.float64)
    w = torch.nn.Parameter(torch.ones(6, dtype=torch.float64))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=1e-3), reuse_lookahead=True, interval=3,
                             controller="newton")
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        loss = 0.5 * w @ a @ w
        loss.backward()
        return loss

    per_step, losses = [], []
    for _ in range(9):
        before = calls[0]
        losses.append(float(opt.step(closure)))
        per_step.append(calls[0] - before)
    # measured step: θ_t and the lookahead; the probe step reuses the lookahead; then one
    assert per_step == [2, 0, 1] * 3
    assert losses[-1] < 0.5 * losses[0]
