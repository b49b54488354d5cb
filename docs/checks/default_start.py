"""choosing.md and design/alpha.md (H36): what the default controller's tiny start costs.

The benchmark's digits MLP (`newt.problems.get_problem("digits_mlp")`: 64-128-128-10 tanh,
batch 64, seed 0), full-batch training loss after 30 … 600 steps of: the inner optimizer
alone at three learning rates, newt with `controller="newton"` (the default before H36)
from the same three, and newt's default (`controller="auto"`, the gated rule on these
mini-batches: the same run from every lr ≥ 1e-6, so one row). Closure-free and, for the
newt rows, closure mode (two evaluations per step: the columns count steps).

    PYTHONPATH=. python docs/checks/default_start.py
    PYTHONPATH=. python docs/checks/default_start.py --trace   # design/alpha.md, H37

``--trace`` prints instead the default's α and safeguard every third step of its first 60,
Adam from lr 1e-3, closure-free and with a closure.
"""

import sys

import torch

import newt
from newt.problems import get_problem

torch.set_num_threads(1)
PROBLEM = get_problem("digits_mlp")
STEPS = (30, 60, 120, 300, 600)
INNERS = {"Adam": (torch.optim.Adam, (1e-4, 1e-3, 1e-2)),
          "SGD": (torch.optim.SGD, (0.01, 0.1, 1.0))}


def one_step(opt: torch.optim.Optimizer, model: torch.nn.Module, batch: object,
             closure: bool) -> None:
    """One training step on ``batch``: ``step(closure)`` or ``backward(); step()``."""
    def evaluate() -> torch.Tensor:
        opt.zero_grad()
        loss = PROBLEM.loss(model, batch)
        loss.backward()
        return loss

    if closure:
        opt.step(evaluate)
    else:
        evaluate()
        opt.step()


def run(inner: str, lr: float, controller: str | None, closure: bool) -> list[float]:
    """Training loss at each of ``STEPS``; ``controller=None``: the inner optimizer alone."""
    model, batches = PROBLEM.init(0), PROBLEM.batches(0)
    opt = INNERS[inner][0](model.parameters(), lr=lr)
    if controller is not None:
        opt = newt.NewtOptimizer(opt, controller=controller)
    out = []
    for t in range(1, STEPS[-1] + 1):
        one_step(opt, model, next(batches), closure)
        if t in STEPS:
            out.append(PROBLEM.train_loss(model))
    return out


def main() -> None:
    print("| mode, inner | run | " + " | ".join(f"{s} steps" for s in STEPS) + " |")
    print("|---|---|" + "---|" * len(STEPS))
    for closure in (False, True):
        for inner, (_, lrs) in INNERS.items():
            mode = f"{'closure' if closure else 'closure-free'}, {inner}"
            rows = [] if closure else [(f"{inner} alone, lr {lr:g}", run(inner, lr, None, False))
                                       for lr in lrs]
            rows += [(f"newton, lr {lr:g}", run(inner, lr, "newton", closure)) for lr in lrs]
            rows.append(("default (auto: gated)", run(inner, lrs[0], "auto", closure)))
            for name, losses in rows:
                print(f"| {mode} | {name} | " + " | ".join(f"{x:.3g}" for x in losses) + " |",
                      flush=True)


def trace() -> None:
    for closure in (False, True):
        model, batches = PROBLEM.init(0), PROBLEM.batches(0)
        opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3))
        cells = []
        for t in range(60):
            one_step(opt, model, next(batches), closure)
            stats = opt.last_stats()[0]
            if t % 3 == 0:
                cells.append(f"{t}: {opt.alphas[0]:.2g} {stats.safeguard if stats else '-'}")
        print("closure" if closure else "closure-free", "; ".join(cells))


if __name__ == "__main__":
    trace() if "--trace" in sys.argv[1:] else main()
