"""README.md and method.md: the closure mode's slope from the next batch vs the same batch.

The 64-64-10 tanh MLP on all 1797 digits, batches of 64, Adam at lr=1e-3,
600 closure steps, default preset with slope="next_batch" (the default) or
slope="same_batch", two seeds: the median α over steps 301-600 and the final
full-batch training loss.

    python docs/checks/slope.py
"""

import statistics

import torch

import newt
from newt.problems import digits_mlp

problem = digits_mlp((64,), "tanh", test_size=None, batch_size=64)


def run(slope: str, seed: int) -> None:
    model = problem.init(seed)
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), slope=slope,
                             controller="newton")
    batches = problem.batches(seed)
    alphas = []
    for t in range(1, 601):
        batch = next(batches)

        def closure(batch=batch):
            opt.zero_grad()
            loss = problem.loss(model, batch)
            loss.backward()
            return loss

        opt.step(closure)
        if t > 300:
            alphas.append(float(opt.param_groups[0]["lr"]))
    print(f"slope={slope:10s} seed {seed}: median α over steps 301-600 "
          f"{statistics.median(alphas):.3g}, full-batch loss {problem.train_loss(model):.4f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    for seed in (0, 1):
        for slope in ("next_batch", "same_batch"):
            run(slope, seed)
