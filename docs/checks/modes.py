"""choosing.md: model evaluations per step in each mode (ten steps, linear least squares)."""

import warnings

import torch

import newt

warnings.simplefilter("error")  # a reuse that silently fails would warn
torch.manual_seed(0)
X, Y = torch.randn(256, 8), torch.randn(256, 1)


def run(mode, steps=10):
    torch.manual_seed(1)
    model = torch.nn.Linear(8, 1)
    opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=1e-2),
                             reuse_lookahead=(mode == "reuse"), controller="newton")
    calls = 0

    def closure():
        nonlocal calls
        calls += 1
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), Y)
        loss.backward()
        return loss

    for _ in range(steps):
        if mode == "closure-free":
            closure()  # the user's own forward and backward
            opt.step()
        else:
            opt.step(closure)
    return calls


for mode in ("closure", "reuse", "closure-free"):
    print(f"{mode:12s} evaluations in 10 steps: {run(mode)}")
