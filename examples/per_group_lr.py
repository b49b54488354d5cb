"""One learned learning rate per parameter group: feature layers and head.

newt keeps one α per parameter group of the inner optimizer. Here an MLP on
scikit-learn's digits has its feature layers and its classification head in
two groups, started at learning rates a hundredfold apart; newt moves each α
from its own inner products ⟨∇L, θ_t − θ_{t+1}⟩ over that group's parameters.

    python examples/per_group_lr.py --out per_group_lr.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import newt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="passes over the data (default 10)")
    parser.add_argument("--features-lr", type=float, default=1e-4,
                        help="initial α of the feature layers (default 1e-4)")
    parser.add_argument("--head-lr", type=float, default=1e-2,
                        help="initial α of the head (default 1e-2)")
    parser.add_argument("--out", default="per_group_lr.png", help="figure path (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two epochs (for CI)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    epochs = 2 if args.quick else args.epochs

    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    loader = DataLoader(data, batch_size=64, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    torch.manual_seed(args.seed)
    features = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
    head = nn.Linear(64, 10)
    model = nn.Sequential(features, head)

    inner = torch.optim.Adam([
        {"params": features.parameters(), "lr": args.features_lr},
        {"params": head.parameters(), "lr": args.head_lr},
    ])
    optimizer = newt.NewtOptimizer(inner)
    loss_criterion = nn.CrossEntropyLoss()

    losses: list[float] = []
    lrs: list[list[float]] = [[], []]
    for _ in range(epochs):
        for x_batch, y_batch in loader:
            optimizer.zero_grad()
            loss = loss_criterion(model(x_batch), y_batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            for trace, group in zip(lrs, optimizer.param_groups, strict=True):
                trace.append(group["lr"])

    names = ("features", "head")
    for name, trace in zip(names, lrs, strict=True):
        print(f"{name:>8}: α {trace[0]:.2e} → {trace[-1]:.2e}")
    per_epoch = len(losses) // epochs
    print(f"last-epoch mean loss {sum(losses[-per_epoch:]) / per_epoch:.4f}")

    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ax_loss.plot(range(1, len(losses) + 1), losses, lw=1)
    ax_loss.set(xlabel="step", ylabel="batch loss", yscale="log", title="training loss")
    for name, trace in zip(names, lrs, strict=True):
        ax_lr.plot(range(1, len(trace) + 1), trace, lw=1.6, label=f"α of the {name}")
    ax_lr.set(xlabel="step", ylabel="learning rate α", yscale="log",
              title="one α per parameter group")
    ax_lr.legend()
    for ax in (ax_loss, ax_lr):
        ax.grid(True, alpha=0.4)
    fig.suptitle("digits MLP, NewtOptimizer(Adam) with two parameter groups")
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
