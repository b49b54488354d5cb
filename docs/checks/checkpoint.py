"""getting-started.md: a run resumed from a checkpoint matches the uninterrupted run."""

import io

import torch

import newt

torch.manual_seed(0)
X, Y = torch.randn(512, 8), torch.randn(512, 1)
batches = [(X[i:i + 64], Y[i:i + 64]) for i in range(0, 512, 64)] * 2  # 16 steps


def build():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = newt.NewtOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), controller="newton")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    return model, opt, sched


def train(model, opt, sched, part):
    for x, y in part:  # closure-free
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


model, opt, sched = build()
train(model, opt, sched, batches)
reference = [p.detach().clone() for p in model.parameters()]

model, opt, sched = build()
train(model, opt, sched, batches[:7])
buffer = io.BytesIO()
torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
           buffer)
buffer.seek(0)
model, opt, sched = build()
ckpt = torch.load(buffer)  # weights_only=True
model.load_state_dict(ckpt["model"])
opt.load_state_dict(ckpt["opt"])
sched.load_state_dict(ckpt["sched"])
train(model, opt, sched, batches[7:])
same = all(torch.equal(a, b) for a, b in zip(reference, model.parameters(), strict=True))
print(f"16 steps, interrupted after 7: resumed parameters bitwise equal: {same}")
