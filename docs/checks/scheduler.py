"""faq.md and README.md: an LR scheduler scales the learned α and is not compensated by it.

1. Reading α and the step: linear least squares, SGD at lr=1e-2, closure mode, a
   CosineAnnealingLR(T_max=20); after 5 steps the scheduler's group['lr'],
   opt.alphas (learned, unscheduled scale), opt.step_sizes (α · lr / initial_lr)
   and last_stats()[0].
2. A constant factor s (LambdaLR): SGD on ½·h·x² (h = 4, line search 1/h = 0.25)
   from lr 0.05 with the undamped, unclamped rule, 160 steps: α and the step taken.
3. The end of a cosine: mini-batch least squares (batches of 32), Adam at lr=1e-2,
   default preset, closure mode, CosineAnnealingLR(T_max=60) to 0 over 60 steps;
   s, α and the step size at a few steps, against the same run without a schedule.
4. Chainable and non-chainable schedulers compose alike: ExponentialLR(gamma=0.9)
   and LambdaLR(lambda t: 0.9**t) on the run of part 1, 20 steps.

    python docs/checks/scheduler.py
"""

import torch

import newt

torch.set_num_threads(1)

# 1. Reading α and the step.
torch.manual_seed(0)
X, Y = torch.randn(256, 8), torch.randn(256, 1)
model = torch.nn.Linear(8, 1)
opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=1e-2), controller="newton")
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)


def closure():
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(X), Y)
    loss.backward()
    return loss


for _ in range(5):
    opt.step(closure)
    sched.step()
g = opt.param_groups[0]
s = opt.last_stats()[0]
print(f"1. after 5 steps: group['lr'] = {g['lr']:.6g} (the schedule), initial_lr = "
      f"{g['initial_lr']}, opt.alphas = [{opt.alphas[0]:.6g}] (learned), "
      f"opt.step_sizes = [{opt.step_sizes[0]:.6g}] (= α · {g['lr'] / g['initial_lr']:.6g})")
print(f"   last_stats()[0]: alpha {s.alpha:.6g}, step_size {s.step_size:.6g}, used_alpha "
      f"{s.used_alpha:.6g}, safeguard {s.safeguard}, step {s.step}")

# 2. A constant factor.
UNDAMPED = dict(gamma=1.0, eps=0.0, lr_min=1e-300, lr_max=float("inf"),
                factor_min=0.0, factor_max=float("inf"))
for factor in (None, 0.5, 0.125):
    x = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = newt.NewtOptimizer(torch.optim.SGD([x], lr=0.05), **UNDAMPED, controller="newton")
    sched = (torch.optim.lr_scheduler.LambdaLR(opt, lambda t, f=factor: f)
             if factor is not None else None)

    def quadratic(opt=opt, x=x):
        opt.zero_grad()
        loss = 2.0 * (x**2).sum()
        loss.backward()
        return loss

    for _ in range(160):
        opt.step(quadratic)
        if sched is not None:
            sched.step()
    label = "no schedule" if factor is None else f"constant s = {factor}"
    print(f"2. {label:16s}: α {opt.alphas[0]:.9g}, step taken {opt.step_sizes[0]:.9g}")

# 3. The end of a cosine.
torch.manual_seed(0)
X, Y = torch.randn(1024, 16), torch.randn(1024, 1)
W = torch.randn(16, 1)
Y = X @ W + 0.3 * Y
for scheduled in (False, True):
    torch.manual_seed(1)
    model = torch.nn.Linear(16, 1)
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    taken = []  # the lr each inner step actually uses
    inner.register_step_pre_hook(
        lambda o, a, k, taken=taken: taken.append(float(o.param_groups[0]["lr"])))
    opt = newt.NewtOptimizer(inner, controller="newton")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60) if scheduled else None
    rows, late = [], []
    for t in range(1, 61):
        i = ((t - 1) * 32) % 1024
        x, y = X[i:i + 32], Y[i:i + 32]

        def batch_closure(x=x, y=y, opt=opt, model=model):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        factor = opt.param_groups[0]["lr"] / 1e-2 if scheduled else 1.0
        opt.step(batch_closure)
        if t > 50:
            late.append(opt.alphas[0])
        if t in (10, 30, 50, 55, 58, 59, 60):
            rows.append(f"{t}: s {factor:.3g}, α {opt.alphas[0]:.3g}, step {taken[-1]:.3g}")
        if sched is not None:
            sched.step()
    with torch.no_grad():
        full = float(torch.nn.functional.mse_loss(model(X), Y))
    print(f"3. {'cosine to 0' if scheduled else 'no schedule'}: full-batch loss {full:.4f}; "
          f"{len(taken)} inner steps; α over steps 51-60 in [{min(late):.4g}, {max(late):.4g}]")
    for row in rows:
        print("   " + row)

# 4. Chainable (ExponentialLR) and non-chainable (LambdaLR) schedulers with the same factors.
results = {}
for name in ("ExponentialLR", "LambdaLR"):
    torch.manual_seed(0)
    X, Y = torch.randn(256, 8), torch.randn(256, 1)
    model = torch.nn.Linear(8, 1)
    opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=1e-2), controller="newton")
    sched = (torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9) if name == "ExponentialLR"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9**t))
    for _ in range(20):
        opt.step(closure)
        sched.step()
    results[name] = (opt.alphas[0], opt.step_sizes[0], [p.detach().clone()
                                                        for p in model.parameters()])
(a1, s1, p1), (a2, s2, p2) = results.values()
print(f"4. ExponentialLR(0.9) vs LambdaLR(0.9**t), 20 steps: α {a1:.6g} vs {a2:.6g}, step "
      f"{s1:.6g} vs {s2:.6g}, parameters max difference "
      f"{max(float((a - b).abs().max()) for a, b in zip(p1, p2, strict=True)):.2g}")
