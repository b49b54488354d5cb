"""MNIST: the seed project's example, on newt's two APIs.

Trains the seed's small ConvNet on MNIST with SGD, Adam and AdamW at their
default learning rates, and plots the loss and α over the batches, one panel
per optimizer.

- ``--api optimizer`` (default): ``newt.NewtOptimizer(inner)`` in a plain
  loop; the next batch's gradient is the lookahead (no extra pass).
- ``--api scheduler``: the seed's loop, unchanged: ``optimizer.step()``,
  ``newt.step_setup(loss, x, y)``, ``newt.step()`` with ``newt.Newt`` and its
  default ``NewtConfig`` (the seed's constants; one extra pass per step).

The data are the four MNIST files in their original idx format
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte`` and the two
``t10k-`` files, gzipped or not), read with NumPy from ``--data DIR`` or from
``DIR/MNIST/raw/``, where torchvision puts them: no torchvision is needed to
train. Get them once, by either of

    python examples/mnist_torchvision.py --data DIR --download  # needs torchvision
    # or download the four .gz files of the MNIST database into DIR by hand

torchvision is only used by ``--download``. Install the release that matches
your torch, pinning both, so that pip keeps the CPU build of torch you have
(a bare ``pip install torchvision`` can replace it with a multi-GB CUDA build):
torch 2.13 goes with torchvision 0.28 (2.x with 0.x+15),

    pip install "torch==2.13.0" "torchvision==0.28.*"

from the same package index your torch came from (the script prints the line
for your torch when ``--download`` finds no torchvision). Then

    python examples/mnist_torchvision.py --data DIR --epochs 1 --out mnist.png

Without the data (or with ``--download`` and no torchvision) the script prints
``skipped: ...`` with where to get them on stderr and exits with status 2, the
convention of every example whose prerequisite is missing. CI runs ``--quick``
on small generated images written in the idx format.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import numpy as np

IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"
IDX_MAGIC = {IMAGES: 2051, LABELS: 2049}  # big-endian: 0x0803 (3-D ubyte), 0x0801 (1-D)


def find_idx(data: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` in ``data``, ``data/MNIST/raw`` or ``data/raw``."""
    for folder in (data, data / "MNIST" / "raw", data / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path, name: str) -> np.ndarray:
    """One idx file (optionally gzipped) as a uint8 array of its stated shape."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if magic != IDX_MAGIC[name]:
        raise ValueError(f"{path} is not an MNIST idx file of kind {name}: its magic number is "
                         f"{magic}, expected {IDX_MAGIC[name]}; download it again")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    array = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {array.size} values, its header says {shape}: it is "
                         "truncated; download it again")
    return array.reshape(shape)


def torchvision_pin() -> str:
    """The pip requirement for the torchvision that matches the installed torch (2.x ↔ 0.x+15)."""
    import torch

    release = torch.__version__.split("+")[0]
    major, minor = (int(v) for v in release.split(".")[:2])
    matching = f"torchvision==0.{minor + 15}.*" if major == 2 else "torchvision"
    return f"pip install 'torch=={release}' '{matching}'"


def skip(reason: str) -> None:
    """The examples' convention for a missing prerequisite: a message and status 2."""
    print(f"skipped: {reason}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", choices=("optimizer", "scheduler"), default="optimizer",
                        help="NewtOptimizer (default) or the seed's Newt scheduler loop")
    parser.add_argument("--epochs", type=int, default=1, help="passes over MNIST (default 1)")
    parser.add_argument("--data", type=Path, default=Path.home() / ".cache" / "newt-mnist",
                        help="folder with the MNIST idx files (default ~/.cache/newt-mnist)")
    parser.add_argument("--download", action="store_true",
                        help="fetch MNIST into --data with torchvision first (needs internet)")
    parser.add_argument("--out", default="mnist_torchvision.png", help="figure path (PNG)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--quick", action="store_true", help="50 batches per optimizer")
    args = parser.parse_args()
    if args.download:
        try:
            from torchvision import datasets
        except ImportError:
            skip(f"--download needs torchvision, matched to your torch and pinned with it so that "
                 f"pip keeps your CPU build: {torchvision_pin()}, from the package index your "
                 "torch came from; or put the MNIST idx files in --data by hand")
        datasets.MNIST(str(args.data), train=True, download=True)
    paths = {name: find_idx(args.data, name) for name in (IMAGES, LABELS)}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        skip(f"no MNIST in {args.data} (missing {', '.join(missing)}[.gz]). Put the idx files "
             "of the MNIST database (yann.lecun.com/exdb/mnist: train-images-idx3-ubyte.gz, "
             "train-labels-idx1-ubyte.gz) there, or run again with --download (needs "
             "torchvision and internet); see this script's docstring")
    images = read_idx(paths[IMAGES], IMAGES)
    labels = read_idx(paths[LABELS], LABELS)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{paths[IMAGES]} and {paths[LABELS]} do not hold matching 28×28 "
                         f"images and labels: shapes {images.shape}, {labels.shape}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

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

    # torchvision's ToTensor() then Normalize((0.5,), (0.5,)): pixels to [-1, 1].
    x_all = torch.from_numpy(images.astype(np.float32) / 255.0).sub_(0.5).div_(0.5).unsqueeze(1)
    train_set = TensorDataset(x_all, torch.from_numpy(labels.astype(np.int64)))
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
