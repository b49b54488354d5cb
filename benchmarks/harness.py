"""One run: one method on one problem, one initial learning rate, one seed.

:func:`run_one` is the unit everything else is built from; use it directly to
tune newt::

    from benchmarks.harness import Budget, run_one
    from benchmarks.methods import catalog

    adam_newt = next(m for m in catalog({"gamma": 0.3}) if m.name == "Adam+newt[free]")
    result = run_one("digits_mlp", adam_newt, x=1e-3, seed=0, budget=Budget(330))
    result.at_evals["loss"], result.trace["lr"][-1]

The budget counts gradient evaluations (closure calls). A run goes on until
it has spent ``budget.evals`` evaluations and, if ``budget.steps`` is set,
taken that many steps, and records the metrics at both points: a method that
evaluates twice per step is judged at ``evals`` (half the steps, the main
axis) and at ``steps`` (for reference). For one-evaluation methods both are
the same point.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from benchmarks.methods import (
    Method,
    effective_lr,
    make_averager,
    make_optimizer,
    make_scheduler,
)
from newt.problems import Problem, get_problem

__all__ = ["Budget", "Run", "RunResult", "run_one"]

_MAX_NONFINITE_STREAK = 10  # consecutive non-finite losses after which a run is stopped


@dataclass(frozen=True)
class Budget:
    """Gradient evaluations for the main comparison and steps for the reference one."""

    evals: int
    steps: int | None = None  # None: no equal-steps measurement
    checkpoints: int = 40  # full-train-loss evaluations along the way (for plots)


@dataclass
class RunResult:
    """Metrics at equal evaluations and at equal steps, and traces for plots.

    ``at_evals`` / ``at_steps`` hold ``steps``, ``evals``, ``loss`` (full
    training loss), ``subopt`` (the judged value, ``Problem.objective_value``:
    loss − f*, the loss when f* is unknown, or the held-out loss),
    ``test_accuracy``/``test_loss`` (``None`` without a test set) and ``lr``
    (the step size in use). ``trace`` has the same keys as lists, at
    checkpoints; ``lr_steps`` is the step size at (downsampled) steps.
    """

    problem: str
    method: str
    method_key: str
    x: float
    seed: int
    budget: dict[str, Any]
    initial: dict[str, Any]
    at_evals: dict[str, Any]
    at_steps: dict[str, Any] | None
    diverged: bool
    seconds: float
    trace: dict[str, list[Any]] = field(default_factory=dict)
    lr_steps: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _evaluation_mode(optimizer: Optimizer) -> Iterator[None]:
    """Schedule-free optimizers evaluate at their averaged point: switch and back."""
    switch = all(callable(getattr(optimizer, name, None)) for name in ("eval", "train"))
    if switch:
        optimizer.eval()
    try:
        yield
    finally:
        if switch:
            optimizer.train()


def _measure(problem: Problem, model: nn.Module, optimizer: Optimizer, steps: int,
             evals: int) -> dict[str, Any]:
    with _evaluation_mode(optimizer):
        loss = problem.train_loss(model)
        test_loss = problem.test_loss(model) if problem.test_loss else None
        if problem.objective == "test":
            judged = test_loss
        else:
            judged = loss - problem.f_star if problem.f_star is not None else loss
        return {
            "steps": steps,
            "evals": evals,
            "loss": loss,
            "subopt": judged,
            "test_accuracy": problem.test_accuracy(model) if problem.test_accuracy else None,
            "test_loss": test_loss,
            "lr": effective_lr(optimizer),
        }


def _downsample(points: list[Any], n: int = 200) -> list[Any]:
    if len(points) <= n:
        return points
    stride = math.ceil(len(points) / n)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


class Run:
    """The state of one run: model, optimizer, batches, counters, traces."""

    def __init__(self, problem: Problem, method: Method, x: float, seed: int,
                 horizon: int | None = None) -> None:
        self.problem, self.method = problem, method
        self.model = problem.init(seed)
        self.optimizer = make_optimizer(method, self.model.parameters(), x, horizon)
        self.scheduler = make_scheduler(method, self.optimizer, horizon or 1)
        self.averager = make_averager(method, self.model)
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()  # schedule-free optimizers start in training mode
        self.batches = problem.batches(seed)
        self.batch = next(self.batches)
        self.evals = self.steps = self.nonfinite_streak = 0
        self.closure_losses: list[float] = []
        # One bound-method object for the whole run: reuse_lookahead checks identity.
        self.closure = self.closure
        self.initial = self.measure()
        self.trace: dict[str, list[Any]] = {key: [value] for key, value in self.initial.items()}
        self.lr_steps: list[tuple[int, float]] = [(0, self.initial["lr"])]

    def closure(self) -> torch.Tensor:
        self.evals += 1
        self.optimizer.zero_grad()
        loss = self.problem.loss(self.model, self.batch)
        loss.backward()
        self.closure_losses.append(float(loss.detach()))
        return loss

    def measure(self) -> dict[str, Any]:
        model = self.model if self.averager is None else self.averager.averaged_model
        return _measure(self.problem, model, self.optimizer, self.steps, self.evals)

    def record(self) -> dict[str, Any]:
        point = self.measure()
        for key, value in point.items():
            self.trace[key].append(value)
        return point

    def step(self) -> bool:
        """One step; returns False once the run is lost.

        Lost means non-finite parameters, or a loss that stays non-finite for
        ``_MAX_NONFINITE_STREAK`` steps (newt's closure-free mode undoes a bad
        step one step late, so one non-finite loss is not the end).
        """
        if self.steps and self.problem.stochastic:
            self.batch = next(self.batches)
        if self.method.mode == "backward":
            with torch.enable_grad():
                loss = self.closure()
            self.optimizer.step()
        else:
            loss = self.optimizer.step(self.closure)
        if self.scheduler is not None:
            self.scheduler.step()
        if self.averager is not None:
            self.averager.step()
        self.steps += 1
        self.lr_steps.append((self.steps, effective_lr(self.optimizer)))
        if loss is not None and math.isfinite(float(loss.detach())):
            self.nonfinite_streak = 0
            return True
        self.nonfinite_streak += 1
        params_finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        return params_finite and self.nonfinite_streak < _MAX_NONFINITE_STREAK

    def train(self, budget: Budget) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
        """Step until the budgets are spent; the metrics at each, and "stayed finite"."""
        at_evals: dict[str, Any] | None = None
        at_steps: dict[str, Any] | None = None
        steps = budget.steps or 0
        every = max(1, max(budget.evals, steps) // budget.checkpoints)
        finite = True
        while finite and (at_evals is None or (steps and at_steps is None)):
            finite = self.step()
            done_evals = at_evals is None and (self.evals >= budget.evals or not finite)
            done_steps = bool(steps) and at_steps is None and (self.steps >= steps or not finite)
            if done_evals or done_steps or self.steps % every == 0:
                point = self.record()
                at_evals = point if done_evals else at_evals
                at_steps = point if done_steps else at_steps
        return at_evals, at_steps, finite

    def train_lbfgs(self, budget: Budget) -> tuple[dict[str, Any], None, bool]:
        """One long L-BFGS call; its strong-Wolfe search may overshoot by < 25 evaluations.

        Its iterations are not steps of the others (no equal-steps metric); the
        trace is the best loss over the points evaluated so far.
        """
        group = self.optimizer.param_groups[0]
        group.update(max_iter=budget.evals, max_eval=budget.evals)
        self.optimizer.step(self.closure)
        self.steps = int(self.optimizer.state[group["params"][0]].get("n_iter", 0))
        best = list(itertools.accumulate(self.closure_losses, min))
        f_star = self.problem.f_star or 0.0
        self.trace = {"evals": list(range(1, self.evals + 1)), "loss": best,
                      "subopt": [value - f_star for value in best]}
        self.trace = {key: _downsample(values) for key, values in self.trace.items()}
        at_evals = self.measure()
        return at_evals, None, math.isfinite(at_evals["loss"])


def run_one(problem: Problem | str, method: Method, x: float, seed: int,
            budget: Budget) -> RunResult:
    """Train ``problem`` with ``method`` (swept hyperparameter ``x``) from ``seed``.

    Stops early once the run is lost (:meth:`Run.step`). A run counts as
    diverged when it was lost, or its final training loss is not finite or is
    above the initial one.
    """
    problem = get_problem(problem) if isinstance(problem, str) else problem
    if method.deterministic_only and problem.stochastic:
        raise ValueError(f"{method.name} needs a deterministic problem; {problem.name} is not")
    start = time.perf_counter()
    run = Run(problem, method, x, seed, horizon=max(1, budget.evals // method.evals_per_step))
    train = run.train_lbfgs if method.mode == "lbfgs" else run.train
    at_evals, at_steps, finite = train(budget)
    final = at_evals["loss"]
    return RunResult(
        problem=problem.name,
        method=method.name,
        method_key=method.key(),
        x=x,
        seed=seed,
        budget=asdict(budget),
        initial=run.initial,
        at_evals=at_evals,
        at_steps=at_steps,
        diverged=not finite or not math.isfinite(final) or final > run.initial["loss"],
        seconds=time.perf_counter() - start,
        trace=run.trace,
        lr_steps=_downsample(run.lr_steps),
    )
