"""update="exp" against the default update="log" on the digits MLP (choosing.md).

Setting: newt.problems.digits_mlp((64,), "tanh", test_size=None, batch_size=64),
Adam at lr 1e-3, 600 steps, seeds 0 and 1; full-batch training loss at the end.
Run: python docs/checks/exp_update.py
"""

from __future__ import annotations

import torch

import newt
from newt.problems import digits_mlp


def final_loss(update: str, closure_free: bool, seed: int, steps: int = 600) -> tuple[float, float]:
    problem = digits_mlp((64,), "tanh", test_size=None, batch_size=64)
    model = problem.init(seed)
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), update=update,
                             controller="newton")
    batches = problem.batches(seed)
    for _ in range(steps):
        batch = next(batches)

        def closure(batch=batch):
            opt.zero_grad()
            loss = problem.loss(model, batch)
            loss.backward()
            return loss

        if closure_free:
            closure()
            opt.step()
        else:
            opt.step(closure)
    return problem.train_loss(model), opt.param_groups[0]["lr"]


if __name__ == "__main__":
    torch.set_num_threads(1)
    for closure_free in (True, False):
        for update in ("log", "exp"):
            results = [final_loss(update, closure_free, seed) for seed in (0, 1)]
            mode = "closure-free" if closure_free else "closure"
            cells = [f"seed {s}: loss {loss:.4f}, final α {lr:.2e}"
                     for s, (loss, lr) in enumerate(results)]
            print(f"{mode:12s} update={update}: " + ", ".join(cells))
