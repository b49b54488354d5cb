"""Full-batch training with a closure, the way torch.optim.LBFGS is used.

L2-regularised logistic regression on scikit-learn's breast-cancer data
(569 samples, 30 standardised features, float64). newt wraps SGD and Adam and
is driven exactly like L-BFGS: ``optimizer.step(closure)``. With a
deterministic closure, ``reuse_lookahead=True`` makes the evaluation at
θ_{t+1} serve as the next step's first one, so each step costs one closure
call. Both losses are printed against closure calls, and plotted.

    python examples/breast_cancer_lbfgs_style.py --out breast_cancer.png

On a smooth convex problem like this one, L-BFGS with a strong-Wolfe line
search is the method to beat: it uses curvature along many directions, newt
only the step size along the inner optimizer's direction.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

import newt

L2 = 1e-3


def data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return torch.tensor(x), torch.tensor(y, dtype=torch.float64)


def make_model() -> nn.Module:
    model = nn.Linear(30, 1, dtype=torch.float64)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    return model


def fit(make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], steps: int
        ) -> list[float]:
    """Run ``steps`` optimizer steps with a closure; return the loss at every closure call."""
    x, y = data()
    model = make_model()
    optimizer = make_optimizer(model)
    losses: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = model(x).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = loss + 0.5 * L2 * model.weight.pow(2).sum()
        loss.backward()
        losses.append(loss.item())
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="newt steps (default 150)")
    parser.add_argument("--out", default="breast_cancer_lbfgs_style.png", help="figure path (PNG)")
    parser.add_argument("--quick", action="store_true", help="40 steps (for CI)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 40 if args.quick else args.steps

    runs = {
        "newt(SGD), from lr=1e-3": fit(lambda m: newt.NewtOptimizer(
            torch.optim.SGD(m.parameters(), lr=1e-3), reuse_lookahead=True), steps),
        "newt(Adam), from lr=1e-3": fit(lambda m: newt.NewtOptimizer(
            torch.optim.Adam(m.parameters(), lr=1e-3), reuse_lookahead=True), steps),
        # L-BFGS: each step runs up to max_iter iterations, each with a line search.
        "L-BFGS (strong Wolfe)": fit(lambda m: torch.optim.LBFGS(
            m.parameters(), lr=1.0, max_iter=10, history_size=10,
            line_search_fn="strong_wolfe"), max(1, steps // 20)),
    }
    # The minimum, from L-BFGS run until it stops moving.
    best = fit(lambda m: torch.optim.LBFGS(m.parameters(), max_iter=500, tolerance_grad=1e-12,
                                           tolerance_change=0.0, history_size=20,
                                           line_search_fn="strong_wolfe"), 1)[-1]
    print(f"minimum (L-BFGS to convergence): {best:.12f}")
    print(f"{'method':<28} {'closure calls':>13} {'final loss':>15} {'final − min':>12}")
    for name, losses in runs.items():
        print(f"{name:<28} {len(losses):>13d} {losses[-1]:>15.12f} {losses[-1] - best:>12.2e}")

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for name, losses in runs.items():
        gap = [max(v - best, 1e-15) for v in losses]
        ax.plot(range(1, len(gap) + 1), gap, label=name, lw=1.8)
    ax.set(xlabel="closure calls (forward + backward on the full data set)",
           ylabel="loss − minimum", yscale="log",
           title="breast-cancer logistic regression, full batch")
    ax.grid(True, alpha=0.4)
    ax.legend()
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
