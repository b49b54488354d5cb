"""design/alpha.md, H15: |1 − B/A| at the gated controller's first fresh measurements.

For every problem of `newt.problems`, Adam and SGD, closure-free and closure mode,
seeds 0 and 1 and starting lr 1e-6 and 1: the core's gated controller
(`NewtOptimizer(..., controller="gated")`, which starts at α = min(lr, 1e-6) and
doubles) for six steps, and |1 − B/A| at its first four measurements (A the step's own
slope, B the fresh slope along it at the next step). `controller="auto"` calls a
measurement quiet below `newt.rule.AUTO_QUIET`.

    PYTHONPATH=. python docs/checks/auto_detect.py [problem,problem,...]
"""

import math
import sys

import torch

import newt
from newt import rule
from newt.problems import PROBLEMS, get_problem

torch.set_num_threads(1)
measured: list[float] = []
gated_before_step = rule.gated_before_step


def spy(state, probe, alpha, options):  # records B/A where the controller has both
    if bool(state.pending) and math.isfinite(float(state.slope)) and float(state.slope) != 0:
        measured.append(float(probe.fresh_slope) / float(state.slope))
    return gated_before_step(state, probe, alpha, options)


rule.gated_before_step = spy


def first_measurements(name: str, inner: str, mode: str, lr: float, seed: int) -> list[float]:
    problem = get_problem(name)
    model, batches = problem.init(seed), problem.batches(seed)
    cls = torch.optim.Adam if inner == "Adam" else torch.optim.SGD
    opt = newt.NewtOptimizer(cls(model.parameters(), lr=lr), controller="gated")
    measured.clear()
    for _ in range(6):
        batch = next(batches)

        def closure(batch=batch):
            opt.zero_grad()
            loss = problem.loss(model, batch)
            loss.backward()
            return loss

        if mode == "free":
            closure()
            opt.step()
        else:
            opt.step(closure)
    return [abs(1 - r) for r in measured[:4]]


names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(PROBLEMS)
print(f"quiet below {rule.AUTO_QUIET:g}\n")
print("| problem | inner | mode | seed | lr | |1 − B/A|, 1st … 4th |")
print("|---|---|---|---|---|---|")
for name in names:
    for inner in ("Adam", "SGD"):
        for mode in ("free", "closure"):
            for seed in (0, 1):
                for lr in (1e-6, 1.0):
                    values = first_measurements(name, inner, mode, lr, seed)
                    print(f"| {name} | {inner} | {mode} | {seed} | {lr:g} | "
                          + " ".join(f"{v:.2e}" for v in values) + " |", flush=True)
