"""faq.md: the closure recipe for BatchNorm and dropout in the lookahead.

Part 1: a frozen, tiny step (γ = 0), where both losses of a step should agree.
Part 2: 200 default-preset closure steps of Adam (lr=1e-3, batches of 32): how
many steps the loss-increase check undid and where α ended, with a plain
closure, with the recipe, and with a plain closure and reject=False.
"""

import torch

import newt


def make_closure(model, opt, loss_fn, x, y, seed):
    """Same dropout masks at θ_t and θ_{t+1}; BatchNorm statistics updated once."""
    calls = 0
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def closure():
        nonlocal calls
        calls += 1
        saved = [b.clone() for m in norms for b in m.buffers()] if calls > 1 else None
        opt.zero_grad()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loss = loss_fn(model(x), y)
        loss.backward()
        if saved is not None:
            with torch.no_grad():
                for b, s in zip((b for m in norms for b in m.buffers()), saved, strict=True):
                    b.copy_(s)
        return loss
    return closure


torch.manual_seed(0)
X, Y = torch.randn(128, 8), torch.randn(128, 1)
loss_fn = torch.nn.functional.mse_loss
for recipe in (False, True):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.Linear(32, 1))
    # A tiny, frozen step: θ_{t+1} ≈ θ_t, so the two losses should agree.
    opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=1e-8), gamma=0.0)
    for step in range(3):
        if recipe:
            closure = make_closure(model, opt, loss_fn, X, Y, seed=step)
        else:
            def closure(opt=opt, model=model):
                opt.zero_grad()
                loss = loss_fn(model(X), Y)
                loss.backward()
                return loss
        opt.step(closure)
    s = opt.last_stats()[0]
    print(f"{'recipe' if recipe else 'plain '}: BatchNorm updates in 3 steps: "
          f"{int(model[1].num_batches_tracked)}, |L(θ_t+1) − L(θ_t)| = "
          f"{abs(s.lookahead_loss - s.loss):.2g}")


def build():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                               torch.nn.Dropout(0.5), torch.nn.Linear(32, 1))


torch.manual_seed(0)
X, Y = torch.randn(512, 8), torch.randn(512, 1)
for label, recipe, options in (("plain closure", False, {}), ("recipe", True, {}),
                               ("plain closure, reject=False", False, {"reject": False})):
    model = build()
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3), **options)
    undone = 0
    for step in range(200):
        i = (step * 32) % 512
        x, y = X[i:i + 32], Y[i:i + 32]
        if recipe:
            closure = make_closure(model, opt, loss_fn, x, y, seed=step)
        else:
            def closure(x=x, y=y, opt=opt, model=model):
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                return loss
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(closure)
        undone += all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    print(f"{label}: {undone} of 200 steps undone, final α {opt.param_groups[0]['lr']:.3g}")
