"""MNIST with torchvision: the seed project's example, on newt's two APIs.

Downloads MNIST with torchvision (needs internet the first time), trains the
seed's small ConvNet with SGD, Adam and AdamW at their default learning
rates, and plots the loss and α over the batches, one panel per optimizer.

- ``--api optimizer`` (default): ``newt.NewtOptimizer(inner)`` in a plain
  loop; the next batch's gradient is the lookahead (no extra pass).
- ``--api scheduler``: the seed's loop, unchanged: ``optimizer.step()``,
  ``newt.step_setup(loss, x, y)``, ``newt.step()`` with ``newt.Newt`` and its
  default ``NewtConfig`` (the seed's constants; one extra pass per step).

    pip install torchvision
    python examples/mnist_torchvision.py --epochs 1 --out mnist.png

Not run in CI (it downloads data); ``--help`` works without torchvision.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", choices=("optimizer", "scheduler"), default="optimizer",
                        help="NewtOptimizer (default) or the seed's Newt scheduler loop")
    parser.add_argument("--epochs", type=int, default=1, help="passes over MNIST (default 1)")
    parser.add_argument("--data", default=str(Path.home() / ".cache" / "newt-mnist"),
                        help="where torchvision stores MNIST (default ~/.cache/newt-mnist)")
    parser.add_argument("--out", default="mnist_torchvision.png", help="figure path (PNG)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--quick", action="store_true", help="50 batches per optimizer")
    args = parser.parse_args()
    try:
        from torchvision import datasets, transforms
    except ImportError:
        print("This example needs torchvision (and internet to download MNIST once): "
              "pip install torchvision", file=sys.stderr)
        sys.exit(1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    import newt

    class ConvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                nn.MaxPool2d(2), nn.Flatten())
            self.head = nn.Sequential(nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    train_set = datasets.MNIST(args.data, train=True, download=True, transform=transform)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    inner_optimizers = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam,
                        "AdamW": torch.optim.AdamW}
    fig, axes = plt.subplots(2, 3, figsize=(13, 6), sharex=True, constrained_layout=True)
    for column, (name, inner_cls) in enumerate(inner_optimizers.items()):
        torch.manual_seed(args.seed)
        loader = DataLoader(train_set, batch_size=128, shuffle=True)
        model = ConvNet().to(device)
        loss_criterion = nn.CrossEntropyLoss()
        optimizer = inner_cls(model.parameters())
        if args.api == "optimizer":
            optimizer = newt.NewtOptimizer(optimizer)
            scheduler = None
        else:
            scheduler = newt.Newt(optimizer, newt.NewtConfig(model=model,
                                                             loss_criterion=loss_criterion))
        losses, lrs = [], []
        for _ in range(args.epochs):
            for batch_idx, (x, y) in enumerate(loader):
                if args.quick and batch_idx == 50:
                    break
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad()
                loss = loss_criterion(model(x), y)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step_setup(loss, x, y)
                    scheduler.step()
                losses.append(loss.item())
                lrs.append(float(optimizer.param_groups[0]["lr"]))
        print(f"{name}: α {lrs[0]:.2e} → {lrs[-1]:.2e}, last loss {losses[-1]:.4f}")
        axes[0, column].plot(losses, lw=0.8)
        axes[0, column].set(title=f"{name}", ylabel="batch loss", yscale="log")
        axes[1, column].plot(lrs, lw=1.5, color="C1")
        axes[1, column].set(xlabel="batch", ylabel="learning rate α", yscale="log")
        for ax in axes[:, column]:
            ax.grid(True, alpha=0.4)
    fig.suptitle(f"MNIST ConvNet, newt ({args.api} API)")
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
