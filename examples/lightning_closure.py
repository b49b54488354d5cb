"""newt inside PyTorch Lightning's automatic optimization.

Lightning's automatic optimization calls ``optimizer.step(closure)``, where the
closure zeroes the gradients, runs ``training_step`` and ``backward``. That is
exactly newt's closure mode: ``NewtOptimizer`` evaluates the closure at θ_t,
lets the inner optimizer step, and evaluates it again at θ_{t+1} on the same
batch to learn α (two forward/backward passes per step). Return the
``NewtOptimizer`` from ``configure_optimizers``; nothing else changes.

    pip install "lightning>=2.2"   # keeps the installed torch; or newt's "lightning" extra
    python examples/lightning_closure.py --out lightning_closure.png

Without Lightning installed, the script prints ``skipped: ...`` with the
install command on stderr and exits with status 2 (the convention of every
example whose prerequisite is missing: nothing ran, nothing was written).
"""

from __future__ import annotations

import argparse
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="passes over the data (default 5)")
    parser.add_argument("--out", default="lightning_closure.png", help="figure path (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one epoch (for CI)")
    args = parser.parse_args()
    try:
        import lightning as L
    except ImportError:
        print("skipped: this example needs PyTorch Lightning: pip install 'lightning>=2.2' "
              "(it keeps the installed torch; or newt's 'lightning' extra)", file=sys.stderr)
        sys.exit(2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from sklearn.datasets import load_digits
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import newt

    class DigitsClassifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
            self.losses: list[float] = []
            self.lrs: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.model(x), y)

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            # Lightning keeps the last closure's result: the loss at θ_{t+1} on this batch.
            self.losses.append(float(outputs["loss"]))
            self.lrs.append(self.optimizers().param_groups[0]["lr"])

        def configure_optimizers(self):
            return newt.NewtOptimizer(torch.optim.Adam(self.parameters(), lr=1e-4))

    torch.set_num_threads(1)
    L.seed_everything(args.seed, verbose=False)
    x, y = load_digits(return_X_y=True)
    data = TensorDataset(torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y))
    loader = DataLoader(data, batch_size=64, shuffle=True, drop_last=True)
    module = DigitsClassifier()
    trainer = L.Trainer(max_epochs=1 if args.quick else args.epochs, accelerator="cpu",
                        devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=not args.quick)
    trainer.fit(module, loader)

    print(f"steps: {len(module.lrs)}, α {1e-4:.2e} → {module.lrs[-1]:.2e}, "
          f"last batch loss {module.losses[-1]:.4f}")
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    steps = range(1, len(module.losses) + 1)
    ax_loss.plot(steps, module.losses, lw=1)
    ax_loss.set(xlabel="step", ylabel="batch loss after the step", yscale="log",
                title="training loss")
    ax_lr.plot(steps, module.lrs, lw=1.6, color="C1")
    ax_lr.set(xlabel="step", ylabel="learning rate α", yscale="log", title="learned α")
    for ax in (ax_loss, ax_lr):
        ax.grid(True, alpha=0.4)
    fig.suptitle("PyTorch Lightning, automatic optimization: NewtOptimizer(Adam) from lr=1e-4")
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
