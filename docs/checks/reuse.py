"""faq.md and choosing.md: what reuse_lookahead recognises.

1. A bound-method closure (`trainer.closure`, a new object at each access) is
   reused: ten steps take 11 evaluations and no warning.
2. Parameter edits between steps: `with torch.no_grad(): p.add_(...)` bumps
   the tensor's version counter and newt evaluates again; `p.data.add_(...)`
   does not, so newt reuses the stale evaluation from before the edit.
3. The loop `opt.zero_grad(); opt.step(closure)`: the cleared gradients are seen,
   so every step evaluates again (20 evaluations in ten steps, against 11).
"""

import warnings

import torch

import newt


class Trainer:
    def __init__(self):
        torch.manual_seed(0)
        self.X, self.Y = torch.randn(256, 8), torch.randn(256, 1)
        self.model = torch.nn.Linear(8, 1)
        self.opt = newt.NewtOptimizer(torch.optim.SGD(self.model.parameters(), lr=1e-2),
                                      reuse_lookahead=True, controller="newton")
        self.calls = 0

    def closure(self):
        self.calls += 1
        self.opt.zero_grad()
        loss = torch.nn.functional.mse_loss(self.model(self.X), self.Y)
        loss.backward()
        return loss


with warnings.catch_warnings():
    warnings.simplefilter("error")
    trainer = Trainer()
    for _ in range(10):
        trainer.opt.step(trainer.closure)
print(f"bound-method closure: {trainer.calls} evaluations in 10 steps")

for how in ("torch.no_grad(): p.add_", "p.data.add_"):
    trainer = Trainer()
    trainer.opt.step(trainer.closure)
    p = trainer.model.bias
    version = p._version
    if how == "p.data.add_":
        p.data.add_(1.0)
    else:
        with torch.no_grad():
            p.add_(1.0)
    bumped = p._version != version
    calls = trainer.calls
    trainer.opt.step(trainer.closure)
    evaluations = trainer.calls - calls
    print(f"edit with {how:24s}: version counter {'bumped' if bumped else 'unchanged'}, "
          f"evaluations in the next step: {evaluations} "
          f"({'re-evaluated' if evaluations == 2 else 'stale evaluation reused'})")

trainer = Trainer()
for _ in range(10):
    trainer.opt.zero_grad()
    trainer.opt.step(trainer.closure)
print(f"opt.zero_grad(); opt.step(closure): {trainer.calls} evaluations in 10 steps")
