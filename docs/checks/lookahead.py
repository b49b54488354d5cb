"""docs/distributed.md: dropout and BatchNorm in the closure's second evaluation.

The optimizer's two evaluations per closure step, simulated by hand on a
dropout + BatchNorm MLP on the digits (64-64-10, batches of 64, 200 steps):
first evaluation at θ_t, an SGD step, the lookahead evaluation at θ_{t+1}.
Printed for a plain lookahead and for one inside `newt.lookahead`:

- BatchNorm updates per step (num_batches_tracked / steps);
- how often the lookahead loss exceeds the first loss, i.e. how often the
  loss-increase check would reject the step, at a tiny step (lr = 1e-6, where
  L(θ_{t+1}) ≈ L(θ_t) - so any rejection is noise) and at lr = 0.05;
- whether the random stream after the run equals that of one evaluation per step.

Run: PYTHONPATH=. python docs/checks/lookahead.py
"""

from __future__ import annotations

import contextlib

import torch
from sklearn.datasets import load_digits

from newt import lookahead as la

torch.set_num_threads(1)
X, Y = load_digits(return_X_y=True)
X = torch.tensor(X / 16.0, dtype=torch.float32)
Y = torch.tensor(Y, dtype=torch.int64)
STEPS, BATCH = 200, 64


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
        torch.nn.Dropout(0.3), torch.nn.Linear(64, 10),
    )


def run(lr: float, replay: bool, evaluations: int = 2) -> tuple[float, float, torch.Tensor]:
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    torch.manual_seed(1)
    rejected = 0
    for t in range(STEPS):
        i = (t * BATCH) % (X.shape[0] - BATCH)
        x, y = X[i:i + BATCH], Y[i:i + BATCH]

        def closure(x=x, y=y) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        with la.capture() if replay else contextlib.nullcontext() as saved:
            loss = closure()
        opt.step()
        if evaluations == 2:
            with la.lookahead(saved) if replay else contextlib.nullcontext():
                lookahead_loss = closure()
            rejected += bool(lookahead_loss > loss)
    updates = int(model[1].num_batches_tracked) / STEPS
    return updates, rejected / STEPS, torch.rand(4)


_, _, one_evaluation = run(0.05, replay=False, evaluations=1)
print(f"{'lookahead':>22} {'lr':>6} {'BN updates/step':>16} {'rejected':>9} {'RNG as 1 eval':>14}")
for replay in (False, True):
    for lr in (1e-6, 0.05):
        updates, rejected, draw = run(lr, replay)
        label = "newt.lookahead" if replay else "plain"
        print(f"{label:>22} {lr:>6.0e} {updates:>16.2f} {rejected:>9.1%} "
              f"{torch.equal(draw, one_evaluation)!s:>14}")


# Part 2: NewtOptimizer(Adam) in closure mode on the same model and batches, 200 steps, three
# RNG seeds (dropout masks): steps undone by the loss-increase check, BatchNorm updates per
# step, final α. Run it on a commit before newt.lookahead was wired into NewtOptimizer for
# the "before" row.
import newt  # noqa: E402


def newt_run(seed: int) -> tuple[int, float, float]:
    model = build()
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), controller="newton")
    torch.manual_seed(seed)
    undone = 0
    for t in range(STEPS):
        i = (t * BATCH) % (X.shape[0] - BATCH)
        x, y = X[i:i + BATCH], Y[i:i + BATCH]

        def closure(x=x, y=y) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        before = [p.detach().clone() for p in model.parameters()]
        opt.step(closure)
        undone += all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return undone, int(model[1].num_batches_tracked) / STEPS, opt.alphas[0]


for seed in (1, 2, 3):
    undone, updates, alpha = newt_run(seed)
    print(f"newt(Adam) closure mode, seed {seed}, {STEPS} steps: {undone} undone, "
          f"BatchNorm updates/step {updates:.2f}, final α {alpha:.3g}")
