"""design/alpha.md, H16: the controllers on short runs from a sensible lr, with and without
the linear decay of Hugging Face's Trainer.

The digits MLP (64-32-10 tanh, float64, X/16, batch 64, reshuffled every epoch, seed 0),
closure-free, SGD from lr 0.02 and Adam from lr 1e-3, for 120 and 600 steps, the lr constant
or decayed linearly to 0 (a ``LambdaLR`` of 1 − t/T, the Trainer's default schedule).
Prints the full-batch training loss at the end and α every T/12 steps.
(``controller="auto"`` is ``"gated"`` here: every first measurement is noisy.)

    PYTHONPATH=. python docs/checks/short_runs.py
"""

import torch
from sklearn.datasets import load_digits
from torch import nn

import newt

torch.set_num_threads(1)
x_np, y_np = load_digits(return_X_y=True)
X = torch.tensor(x_np / 16.0, dtype=torch.float64)
Y = torch.tensor(y_np)
INNERS = {"SGD": (torch.optim.SGD, 0.02), "Adam": (torch.optim.Adam, 1e-3)}


def run(controller: str, inner: str, steps: int, decay: bool) -> tuple[float, list[float]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    cls, lr = INNERS[inner]
    opt = newt.NewtOptimizer(cls(model.parameters(), lr=lr), controller=controller)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
                 if decay else None)
    gen = torch.Generator().manual_seed(0)
    alphas: list[float] = []
    t = 0
    while t < steps:
        for idx in torch.randperm(len(Y), generator=gen).split(64):
            if t == steps:
                break
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), Y[idx]).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            if t % (steps // 12) == 0:
                alphas.append(opt.alphas[0])
            t += 1
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(X), Y)), alphas


print("| controller | inner | steps | lr | final loss | α every T/12 steps |")
print("|---|---|---|---|---|---|")
for steps in (120, 600):
    for inner in INNERS:
        for decay in (False, True):
            for controller in ("newton", "gated"):
                loss, alphas = run(controller, inner, steps, decay)
                trace = " ".join(f"{a:.2g}" for a in alphas)
                schedule = "linear decay" if decay else "constant"
                print(f"| {controller} | {inner} | {steps} | {schedule} | {loss:.4g} | {trace} |",
                      flush=True)
