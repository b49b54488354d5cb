"""newt inside the Hugging Face ``Trainer``, with the Trainer's own linear decay.

The ``Trainer`` never passes a closure: it calls ``backward()`` then
``optimizer.step()``, which is newt's closure-free mode (the next batch's
gradient is the lookahead; one forward/backward per step). Hand it the
optimizer and let it build its scheduler::

    optimizer = newt.NewtOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3))
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizers=(optimizer, None))  # None: the Trainer's schedule

The Trainer then attaches its linear-decay schedule (``lr_scheduler_type``,
default ``"linear"``) to the ``NewtOptimizer``. The schedule scales newt's
learned α, it does not replace it, and newt does not undo it: the step the
inner optimizer takes is ``α × lr / initial_lr``, where ``lr`` is the
schedule's value and ``initial_lr`` the lr the optimizer was built with.
So the ``learning_rate`` the Trainer logs is the *schedule* (``initial_lr``
times the decay factor), not what newt learned nor the step taken; the small
callback below logs both (``newt_alpha`` = α, ``newt_step_size`` = the step
size the inner optimizer used).

Runs offline on scikit-learn's digits (an MLP, 80/20 split)::

    pip install "transformers>=4.46" "accelerate>=1.0"   # keeps the installed torch
    python examples/hf_trainer.py --out hf_trainer.png

Without transformers installed, the script prints ``skipped: ...`` with the
install command on stderr and exits with status 2 (the convention of every
example whose prerequisite is missing).
"""

from __future__ import annotations

import argparse
import sys
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="passes over the data (default 10)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW's initial lr (newt's α₀)")
    parser.add_argument("--out", default="hf_trainer.png", help="figure path (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="two epochs (for CI)")
    args = parser.parse_args()
    try:
        import transformers
    except ImportError:
        print("skipped: this example needs Hugging Face transformers: pip install "
              "'transformers>=4.46' 'accelerate>=1.0' (it keeps the installed torch; or newt's "
              "'hf' extra)", file=sys.stderr)
        sys.exit(2)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn
    from transformers import Trainer, TrainerCallback, TrainingArguments

    import newt

    transformers.logging.set_verbosity_error()

    class DigitsMLP(nn.Module):
        """Returns ``{"loss", "logits"}``, as the Trainer expects of a model."""

        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
            logits = self.net(x)
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(logits, labels)
            return out

    class Digits(torch.utils.data.Dataset):
        def __init__(self, x, y) -> None:
            self.x = torch.tensor(x / 16.0, dtype=torch.float32)
            self.y = torch.tensor(y)

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> dict:
            return {"x": self.x[i], "labels": self.y[i]}

    class NewtLogger(TrainerCallback):
        """Records newt's α and the step actually taken, and adds them to the Trainer's logs.

        ``on_optimizer_step`` runs after ``optimizer.step()`` and before the
        Trainer steps its schedule: α is the one that step used, and the step
        size is α × the schedule's factor for that step.
        """

        def __init__(self, optimizer: newt.NewtOptimizer) -> None:
            self.optimizer = optimizer
            self.history: list[dict[str, float]] = []

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.history.append({"step": state.global_step + 1,
                                 "alpha": self.optimizer.alphas[0],  # learned, unscheduled
                                 "step_size": self.optimizer.step_sizes[0]})  # α × lr/initial_lr

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "loss" in logs and self.history:
                logs["newt_alpha"] = self.history[-1]["alpha"]
                logs["newt_step_size"] = self.history[-1]["step_size"]

    torch.manual_seed(args.seed)
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y,
                                                        random_state=0)
    model = DigitsMLP()
    optimizer = newt.NewtOptimizer(torch.optim.AdamW(model.parameters(), lr=args.lr))
    newt_logger = NewtLogger(optimizer)
    epochs = 2 if args.quick else args.epochs
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=64,
            logging_steps=10, save_strategy="no", report_to="none", use_cpu=True,
            seed=args.seed, disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=training_args,
                          train_dataset=Digits(x_train, y_train),
                          optimizers=(optimizer, None), callbacks=[newt_logger])
        trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(x_test / 16.0, dtype=torch.float32))["logits"]
    accuracy = float((logits.argmax(1) == torch.tensor(y_test)).float().mean())
    last = newt_logger.history[-1]
    print(f"steps: {last['step']}, schedule: {type(trainer.lr_scheduler).__name__}")
    print(f"loss {logs[0]['loss']:.4f} → {logs[-1]['loss']:.4f} (logged every 10 steps), "
          f"test accuracy {accuracy:.3f}")
    print(f"α {args.lr:.2e} → {last['alpha']:.2e} (learned); step size taken at the last step "
          f"{last['step_size']:.2e} (α × the schedule's decay factor)")
    print("logged learning_rate = the schedule (initial lr × decay), e.g. "
          f"{logs[-1]['learning_rate']:.2e} at step {logs[-1]['step']}")

    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ax_loss.plot([e["step"] for e in logs], [e["loss"] for e in logs], marker="o", ms=3)
    ax_loss.set(xlabel="step", ylabel="training loss (Trainer log)", yscale="log",
                title="training loss")
    steps = [h["step"] for h in newt_logger.history]
    ax_lr.plot(steps, [h["alpha"] for h in newt_logger.history], lw=1.6, label="newt's α")
    ax_lr.plot(steps, [h["step_size"] for h in newt_logger.history], lw=1.6,
               label="step size taken = α × decay")
    ax_lr.plot([e["step"] for e in logs], [e["learning_rate"] for e in logs], "k:", lw=1.2,
               label="Trainer's logged learning_rate (the schedule)")
    ax_lr.set(xlabel="step", ylabel="learning rate", yscale="log", title="α and the schedule")
    ax_lr.legend(fontsize=8)
    for ax in (ax_loss, ax_lr):
        ax.grid(True, alpha=0.4)
    fig.suptitle(f"Hugging Face Trainer: NewtOptimizer(AdamW) from lr={args.lr:g}, linear decay")
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
