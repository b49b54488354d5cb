"""faq.md: an LR scheduler multiplies the learned α by lr / initial_lr."""

import torch

import newt

torch.manual_seed(0)
X, Y = torch.randn(256, 8), torch.randn(256, 1)
model = torch.nn.Linear(8, 1)
opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=1e-2))
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
print(f"after 5 steps: group['lr'] = {g['lr']:.6g} (schedule), "
      f"group['newt']['alpha'] = {float(g['newt']['alpha']):.6g} (learned), "
      f"initial_lr = {g['initial_lr']}")
