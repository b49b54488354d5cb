"""design/alpha.md, H16: the controllers on short runs from a sensible lr, with and without
the linear decay of Hugging Face's Trainer.

The digits MLP (64-32-10 tanh, float64, X/16, batch 64, reshuffled every epoch, seed 0),
closure-free, SGD from lr 0.02 and Adam from lr 1e-3, for 120 and 600 steps, the lr constant
or decayed linearly to 0 (a ``LambdaLR`` of 1 − t/T, the Trainer's default schedule).
Prints the full-batch training loss at the end and α every T/12 steps; with ``--plot PATH``
also draws the 600-step runs' loss and α against the step.
(``controller="auto"`` is ``"gated"`` here: every first measurement is noisy.)

    PYTHONPATH=. python docs/checks/short_runs.py [--plot docs/img/short_runs.png]
"""

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import newt

torch.set_num_threads(1)
x_np, y_np = load_digits(return_X_y=True)
X = torch.tensor(x_np / 16.0, dtype=torch.float64)
Y = torch.tensor(y_np)
INNERS = {"SGD": (torch.optim.SGD, 0.02), "Adam": (torch.optim.Adam, 1e-3)}


def full_loss(model: nn.Module) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(X), Y))


def run(controller: str, inner: str, steps: int, decay: bool) -> dict[str, list[float]]:
    """α after every step and the full-batch loss every T/24 steps (and at the end)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10)).double()
    cls, lr = INNERS[inner]
    opt = newt.NewtOptimizer(cls(model.parameters(), lr=lr), controller=controller)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / steps)
                 if decay else None)
    gen = torch.Generator().manual_seed(0)
    out: dict[str, list[float]] = {"alpha": [], "loss_step": [0.0], "loss": [full_loss(model)]}
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
            out["alpha"].append(opt.alphas[0])
            t += 1
            if t % (steps // 24) == 0 or t == steps:
                out["loss_step"].append(float(t))
                out["loss"].append(full_loss(model))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", help="write the 600-step runs' figure to this PNG")
    args = parser.parse_args()
    runs = {}
    print("| controller | inner | steps | lr | final loss | α every T/12 steps |")
    print("|---|---|---|---|---|---|")
    for steps in (120, 600):
        for inner in INNERS:
            for decay in (False, True):
                for controller in ("newton", "gated"):
                    out = runs[controller, inner, steps, decay] = run(controller, inner, steps,
                                                                      decay)
                    trace = " ".join(f"{a:.2g}" for a in out["alpha"][::steps // 12])
                    schedule = "linear decay" if decay else "constant"
                    print(f"| {controller} | {inner} | {steps} | {schedule} | "
                          f"{out['loss'][-1]:.4g} | {trace} |", flush=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 4, figsize=(14, 6), sharex=True)
        for col, (inner, decay) in enumerate((i, d) for i in INNERS for d in (False, True)):
            for controller, style in (("newton", "-"), ("gated", "--")):
                out = runs[controller, inner, 600, decay]
                label = "default rule" if controller == "newton" else "gated"
                axes[0, col].semilogy(out["loss_step"], out["loss"], style, label=label)
                axes[1, col].semilogy(range(1, 601), out["alpha"], style, label=label)
            title = f"{inner}, lr {INNERS[inner][1]:g}, {'linear decay' if decay else 'constant'}"
            axes[0, col].set_title(title, fontsize=10)
            axes[1, col].set_xlabel("step")
        axes[0, 0].set_ylabel("full-batch training loss")
        axes[1, 0].set_ylabel("learned α")
        axes[0, 0].legend()
        fig.suptitle("digits MLP, batch 64, closure-free: the default rule against the gated "
                     "controller over 600 steps")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=90)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
