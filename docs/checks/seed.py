"""migrating.md: the seed loop with newt.Newt and NewtOptimizer(preset="seed") agree."""

import torch

import newt
from newt import Newt, NewtConfig

torch.manual_seed(0)
X, Y = torch.randn(512, 8), torch.randn(512, 1)
batches = [(X[i:i + 64], Y[i:i + 64]) for i in range(0, 512, 64)] * 3  # 24 steps
loss_criterion = torch.nn.MSELoss()


def build():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


for use_alternate_approx in (False, True):
    # The seed's loop, unchanged.
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    newt_config = NewtConfig(model=model, loss_criterion=loss_criterion,
                             use_alternate_approx=use_alternate_approx)
    scheduler = Newt(optimizer, newt_config)
    seed_lrs = []
    for x, y in batches:
        optimizer.zero_grad()
        y_hat = model(x)
        loss = loss_criterion(y_hat, y)
        loss.backward()
        optimizer.step()
        scheduler.step_setup(loss, x, y)
        scheduler.step()
        seed_lrs.append(optimizer.param_groups[0]["lr"])

    # The NewtOptimizer loop.
    model = build()
    opt = newt.NewtOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), preset="seed",
                             curvature="loss" if use_alternate_approx else "gradient")
    newt_lrs = []
    for x, y in batches:
        def closure(x=x, y=y, opt=opt, model=model):
            opt.zero_grad()
            loss = loss_criterion(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
        newt_lrs.append(opt.param_groups[0]["lr"])
    equal = sum(a == b for a, b in zip(seed_lrs, newt_lrs, strict=True))
    print(f"use_alternate_approx={use_alternate_approx}: α equal at {equal} of {len(seed_lrs)} "
          f"steps; final α {seed_lrs[-1]:.6g} vs {newt_lrs[-1]:.6g}")

# Two parameter groups, one of which overshoots (lr 1.0 on the output layer): the seed's
# loop with newt.Newt and the NewtOptimizer(preset="seed") loop, α per group and parameters.
finals = []
for api in ("Newt", "NewtOptimizer"):
    model = build()
    groups = [{"params": model[0].parameters(), "lr": 1e-2},
              {"params": model[2].parameters(), "lr": 1.0}]
    if api == "Newt":
        optimizer = torch.optim.SGD(groups)
        scheduler = Newt(optimizer, NewtConfig(model=model, loss_criterion=loss_criterion))
        for x, y in batches:
            optimizer.zero_grad()
            loss = loss_criterion(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step_setup(loss, x, y)
            scheduler.step()
        alphas = [g["lr"] for g in optimizer.param_groups]
    else:
        opt = newt.NewtOptimizer(torch.optim.SGD(groups), preset="seed")
        for x, y in batches:
            def closure(x=x, y=y, opt=opt, model=model):
                opt.zero_grad()
                loss = loss_criterion(model(x), y)
                loss.backward()
                return loss
            opt.step(closure)
        alphas = opt.alphas
    finals.append((alphas, [p.detach().clone() for p in model.parameters()]))
(alphas_a, params_a), (alphas_b, params_b) = finals
same = all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
print(f"two groups (lr 1e-2 and 1.0), 24 steps: Newt α {alphas_a[0]:.6g}, {alphas_a[1]:.6g}; "
      f"preset='seed' α {alphas_b[0]:.6g}, {alphas_b[1]:.6g}; parameters bitwise equal: {same}")

# A NaN gradient at the second of four steps, Adam inside: under Newt the user's
# optimizer.step() still runs, but newt clears the gradients first so it skips every
# parameter; under preset="seed" the inner step is skipped. Both keep Adam's moments finite.
torch.manual_seed(0)
X4, Y4 = torch.randn(64, 4), torch.randn(64, 1)
for api in ("Newt", "NewtOptimizer"):
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 1)
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    if api == "Newt":
        scheduler = Newt(inner, NewtConfig(model=model, loss_criterion=loss_criterion))
    else:
        opt = newt.NewtOptimizer(inner, preset="seed")
    rows = []
    for t in range(4):
        if api == "Newt":
            inner.zero_grad()
            loss = loss_criterion(model(X4), Y4)
            loss.backward()
            if t == 1:
                model.weight.grad[0, 0] = float("nan")
            inner.step()
            scheduler.step_setup(loss, X4, Y4)
            scheduler.step()
            safeguard = scheduler.last_safeguards()[0]
        else:
            calls = []

            def closure(t=t, calls=calls, opt=opt, model=model):
                opt.zero_grad()
                loss = loss_criterion(model(X4), Y4)
                loss.backward()
                if t == 1 and not calls:
                    model.weight.grad[0, 0] = float("nan")
                calls.append(1)
                return loss
            opt.step(closure)
            safeguard = opt.last_stats()[0].safeguard
        moments = inner.state[model.weight]["exp_avg"]
        rows.append(f"step {t + 1}: {safeguard}, α {inner.param_groups[0]['lr']:.4g}, "
                    f"Adam's moments finite {bool(torch.isfinite(moments).all())}")
    print(f"NaN gradient at step 2, {api}: " + "; ".join(rows))
