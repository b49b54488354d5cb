"""`reject` on full-batch problems: final f − f* after 200 closure steps, with and without.

Problems from `newt.problems` (Rosenbrock, Beale, rotated quadratic κ = 1e4), inner SGD,
SGD with momentum 0.9 and Adam, initial α 1e-6, 1e-4, 1e-2, 1, default preset.
Run: python docs/checks/reject_full_batch.py
"""

from __future__ import annotations

import torch

import newt
from newt.problems import get_problem

INNERS = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "sgdm": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}


def suboptimality(name: str, inner: str, lr: float, reject: bool, steps: int = 200) -> float:
    problem = get_problem(name)
    model = problem.init(0)
    opt = newt.NewtOptimizer(INNERS[inner](list(model.parameters()), lr), reject=reject,
                             controller="newton")

    def closure():
        opt.zero_grad()
        loss = problem.loss(model, None)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    with torch.no_grad():
        return float(problem.loss(model, None)) - (problem.f_star or 0.0)


if __name__ == "__main__":
    for reject in (True, False):
        print(f"reject={reject}")
        for name in ("rosenbrock", "beale", "quadratic_1e4"):
            for inner in INNERS:
                row = [suboptimality(name, inner, lr, reject) for lr in (1e-6, 1e-4, 1e-2, 1.0)]
                print(f"  {name:14s} {inner:5s} " + " ".join(f"{v:.2e}" for v in row))
