"""method.md and choosing.md: `reject` undoes a closure step that raised the loss.

1. One group, L = x², SGD at lr=3 from x = 1 (the step lands on x = −5): with
   the default preset the step is undone and α is multiplied by backoff**gamma;
   with reject=False (the seed preset's setting) it is kept.
2. gamma=0: newt is exactly the inner optimizer: SGD at lr=1.1 on x² (x ← −1.2 x,
   every step raises the loss) is never undone.
3. Two groups, L = x² + y², x at lr=3 (overshoots), y at lr=0.1: only x's step
   is undone (its trapezoid share (A + B)/2 of the loss change is negative).
"""

import warnings

import torch

import newt

warnings.simplefilter("error")


def params(*values):
    return [torch.nn.Parameter(torch.tensor([v], dtype=torch.float64)) for v in values]


def closure_for(opt, ps):
    def closure():
        opt.zero_grad()
        loss = sum((p**2).sum() for p in ps)
        loss.backward()
        return loss
    return closure


# 1. One group.
for options in ({}, {"reject": False}):
    (x,) = params(1.0)
    opt = newt.NewtOptimizer(torch.optim.SGD([x], lr=3.0), **options, controller="newton")
    opt.step(closure_for(opt, [x]))
    print(f"one group {options or '(default)'}: x after the step {x.item():g}, "
          f"α {opt.param_groups[0]['lr']:.6g}, safeguard {opt.last_stats()[0].safeguard}")

# 2. gamma = 0 is the inner optimizer, bit for bit.
(x,) = params(1.0)
(y,) = params(1.0)
opt = newt.NewtOptimizer(torch.optim.SGD([x], lr=1.1), gamma=0.0, controller="newton")
plain = torch.optim.SGD([y], lr=1.1)
for _ in range(20):
    opt.step(closure_for(opt, [x]))
    closure_for(plain, [y])()
    plain.step()
print(f"gamma=0, 20 steps of a diverging SGD: newt x = {x.item():.6g}, plain SGD x = "
      f"{y.item():.6g}, bitwise equal: {torch.equal(x, y)}")

# 3. Two groups: each group's own share of the loss change decides.
x, y = params(1.0, 1.0)
opt = newt.NewtOptimizer(torch.optim.SGD([{"params": [x], "lr": 3.0},
                                          {"params": [y], "lr": 0.1}]), controller="newton")
opt.step(closure_for(opt, [x, y]))
print(f"two groups: x {x.item():g} (α {opt.param_groups[0]['lr']:.6g}), "
      f"y {y.item():g} (α {opt.param_groups[1]['lr']:.6g})")
