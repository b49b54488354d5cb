"""faq.md: GradScaler with the closure-free mode; an overflow skips the step, α waits."""

import torch

import newt

torch.manual_seed(0)
X, Y = torch.randn(256, 8), torch.randn(256, 1)
model = torch.nn.Linear(8, 1)
opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=1e-2), controller="newton")
scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
for t in range(6):
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.mse_loss(model(X), Y)
    scaler.scale(loss).backward()
    if t == 3:
        model.weight.grad[0, 0] = float("inf")  # simulate an overflow at the fourth step
    before = model.weight.detach().clone()
    scaler.step(opt)
    scaler.update()
    moved = not torch.equal(before, model.weight.detach())
    print(f"step {t + 1}: scale {scaler.get_scale():g}, α {opt.param_groups[0]['lr']:.4g}, "
          f"parameters moved: {moved}")

try:
    scaler.step(opt, closure=lambda: None)
except RuntimeError as e:
    print("closure mode:", e)
