"""Digits classification with SGD, Adam and AdamW, each wrapped by newt.

The seed project's MNIST example, on scikit-learn's bundled 8×8 digits so it
runs offline in seconds: each inner optimizer starts at its PyTorch default
learning rate, ``NewtOptimizer`` learns α, and the figure shows the training
loss and α over the steps, one panel per inner optimizer.

    python examples/digits_inner_optimizers.py --out digits_inner_optimizers.png

The loop is the usual one: ``zero_grad``, ``backward``, ``step()``. Without a
closure, newt takes the next batch's gradient as the lookahead: no extra
forward or backward pass.
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

INNER = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train(inner_name: str, epochs: int, seed: int) -> tuple[list[float], list[float]]:
    """Train with ``NewtOptimizer(inner)``; return the batch losses and α per step."""
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    loader = DataLoader(data, batch_size=64, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    model = make_model()
    loss_criterion = nn.CrossEntropyLoss()
    optimizer = newt.NewtOptimizer(INNER[inner_name](model.parameters()))  # default lr

    losses, lrs = [], []
    for _ in range(epochs):
        for x_batch, y_batch in loader:
            optimizer.zero_grad()
            loss = loss_criterion(model(x_batch), y_batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            lrs.append(optimizer.param_groups[0]["lr"])
    return losses, lrs


def running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="passes over the data (default 10)")
    parser.add_argument("--out", default="digits_inner_optimizers.png", help="figure path (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two epochs (for CI)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a model this small runs fastest on one thread
    epochs = 2 if args.quick else args.epochs

    fig, axes = plt.subplots(2, len(INNER), figsize=(4.2 * len(INNER), 6), sharex=True,
                             constrained_layout=True)
    for column, name in enumerate(INNER):
        losses, lrs = train(name, epochs, args.seed)
        per_epoch = len(losses) // epochs
        smooth = running_mean(losses, per_epoch)
        print(f"newt({name}): last-epoch mean loss {smooth[-1]:.4f}, "
              f"α {lrs[0]:.2e} → {lrs[-1]:.2e}")
        steps = range(1, len(losses) + 1)
        axes[0, column].plot(steps, losses, lw=0.8, alpha=0.35, label="batch")
        axes[0, column].plot(steps, smooth, lw=1.8, color="C0", label="mean over one epoch")
        axes[0, column].legend(fontsize=8, loc="upper right")
        axes[0, column].set(title=f"newt({name})", ylabel="training loss", yscale="log")
        axes[1, column].plot(steps, lrs, lw=1.5, color="C1")
        axes[1, column].set(xlabel="step", ylabel="learning rate α", yscale="log")
        for ax in axes[:, column]:
            ax.grid(True, alpha=0.4)
    fig.suptitle("digits MLP: NewtOptimizer around three inner optimizers (default initial lr)")
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
