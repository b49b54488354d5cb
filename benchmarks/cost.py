"""What a step costs: wall time, evaluations and optimizer state, as ratios to the inner optimizer.

Machines are shared and noisy, so methods are timed interleaved in one
process: in each round every method takes a burst of steps, in a shuffled
order, and the per-step time of a method is its median over rounds. Memory
is the size of the optimizer state (every tensor the optimizer holds,
newt's snapshots included) relative to the parameters; peak process memory
is not measured on CPU.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from benchmarks.harness import Run
from benchmarks.methods import Method, catalog
from newt.problems import get_problem

__all__ = ["measure_cost", "state_bytes"]

_LR = {"SGD": 1e-2, "SGDm": 1e-2, "Adam": 1e-3, "AdamW": 1e-3}


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (and its inner optimizer's)."""

    def size(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(size(v) for v in obj)
        return 0

    optimizers = [optimizer, *([optimizer.inner] if hasattr(optimizer, "inner") else [])]
    per_param = sum(size(state) for opt in optimizers for state in opt.state.values())
    per_group = sum(size({k: v for k, v in g.items() if k != "params"})
                    for g in optimizer.param_groups)  # newt shares its groups with the inner one
    return per_param + per_group


def measure_cost(problem_name: str, inners: Sequence[str] = ("SGD", "Adam"), steps: int = 20,
                 rounds: int = 7, seed: int = 0) -> list[dict[str, Any]]:
    """Per inner optimizer: the plain optimizer and newt in each mode, timed interleaved.

    Returns one row per method with ``ms_per_step``, ``time_ratio`` (to the
    plain inner optimizer), ``evals_per_step`` and ``state_ratio`` (optimizer
    state bytes ÷ parameter bytes).
    """
    problem = get_problem(problem_name)
    methods: list[Method] = [
        m for m in catalog(inners=inners, presets=("default",), schedules=("",))
        if m.kind in ("fixed", "newt") and not (m.deterministic_only and problem.stochastic)
    ]
    runs = {m.name: Run(problem, m, _LR[m.inner], seed) for m in methods}
    for run in runs.values():  # warm-up: allocate state, first-step paths
        for _ in range(3):
            run.step()
    times: dict[str, list[float]] = {name: [] for name in runs}
    counts = {name: (run.steps, run.evals) for name, run in runs.items()}
    order = list(runs)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            run = runs[name]
            start = time.perf_counter()
            for _ in range(steps):
                run.step()
            times[name].append((time.perf_counter() - start) / steps)
    rows = []
    for m in methods:
        run = runs[m.name]
        param_bytes = sum(p.numel() * p.element_size() for p in run.model.parameters())
        per_step = statistics.median(times[m.name])
        plain = statistics.median(times[m.inner])
        steps0, evals0 = counts[m.name]
        rows.append({
            "problem": problem_name,
            "method": m.name,
            "ms_per_step": 1e3 * per_step,
            "time_ratio": per_step / plain,
            "evals_per_step": (run.evals - evals0) / (run.steps - steps0),
            "state_ratio": state_bytes(run.optimizer) / param_bytes,
        })
    return rows
