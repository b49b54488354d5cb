"""newt inside the training loops people use: PyTorch Lightning and the Hugging Face Trainer.

Each test trains a small digits model through the framework's own loop and
checks that the loss falls and that α moves; the Trainer test also checks,
step by step, that the Trainer's linear-decay schedule scales newt's α as
documented: the inner step uses ``α × lr / initial_lr`` (the parameters move
by exactly that times the gradient for SGD), the schedule's lr is left as the
schedule set it, and α is not compensated for the decay.

Both frameworks are installed in CI (Lightning by the ``test`` extra,
transformers by the ``hf`` extra that ``.ci/run`` installs), so these tests
run there; elsewhere they are skipped when the framework is missing.
"""

from __future__ import annotations

import importlib
import math
import os
import warnings

import pytest
import torch
from torch import nn

import newt


def _require(module: str):
    """``module``, or a skip where it is missing; in CI (``CI`` set) it must be installed."""
    if os.environ.get("CI"):
        return importlib.import_module(module)  # an ImportError fails the test: no silent skip
    return pytest.importorskip(module)


_require("sklearn")
from sklearn.datasets import load_digits  # noqa: E402


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def _full_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(x), y))


# ---------------------------------------------------------------- Lightning
def test_lightning_automatic_optimization_passes_the_closure_and_newt_learns_alpha():
    L = _require("lightning")
    torch.manual_seed(0)
    x, y = _digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                         shuffle=True, drop_last=True)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _mlp()
            self.forward_calls = 0
            self.alphas: list[float] = []

        def training_step(self, batch, batch_idx):
            self.forward_calls += 1
            inputs, targets = batch
            return nn.functional.cross_entropy(self.model(inputs), targets)

        def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
            self.alphas.append(self.newt.alphas[0])

        def configure_optimizers(self):
            self.newt = newt.NewtOptimizer(torch.optim.Adam(self.parameters(), lr=1e-4))
            return self.newt

    module = Module()
    before = _full_loss(module.model, x, y)
    # Four epochs: the default controller starts at 1e-6 on mini-batches and needs about
    # a hundred closure steps to reach the scale (docs/design/alpha.md, H36).
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on dataloader workers
        trainer.fit(module, loader)
    steps = len(module.alphas)
    assert steps == 4 * (len(x) // 64)
    # Lightning passed its closure: newt evaluated it at θ_t and at θ_{t+1}, every step.
    assert module.forward_calls == 2 * steps
    assert module.newt.last_stats()[0].lookahead_loss is not None
    after = _full_loss(module.model, x, y)
    assert after < 0.5 * before, (before, after)
    # α left the bad initial lr: Adam at 1e-4 barely moves in four epochs; newt raised α.
    assert module.alphas[-1] > 10 * 1e-4, module.alphas[-1]


# ---------------------------------------------------------------- Hugging Face Trainer
def test_hf_trainer_linear_decay_scales_alpha_without_erasing_or_compensating_it(tmp_path):
    _require("transformers")
    _require("accelerate")
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    x, y = _digits()
    x = x.double()  # float64: the displacement θ_t − θ_{t+1} is measured to ~1e-12, not ~1e-4

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def forward(self, x, labels=None):
            logits = self.net(x)
            return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(y)

        def __getitem__(self, i):
            return {"x": x[i], "labels": y[i]}

    model = Model().double()
    initial_lr = 0.02
    # The Newton rule's contract with a schedule (the gated controller, the default's on
    # mini-batches, aims at the step taken: tests/test_gated_controller.py).
    opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=initial_lr),
                             controller="newton")
    params = list(model.parameters())

    class Probe(TrainerCallback):
        """Per optimizer step: the schedule's lr, α, the step size and the real displacement."""

        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.before = [p.detach().clone() for p in params]
            self.grads = [p.grad.detach().clone() for p in params]

        def on_optimizer_step(self, args, state, control, **kwargs):
            moved = torch.cat([(b - p.detach()).flatten() for b, p in zip(self.before, params,
                                                                           strict=True)])
            grad = torch.cat([g.flatten() for g in self.grads])
            group = opt.param_groups[0]
            self.rows.append({
                "step": state.global_step, "lr": float(group["lr"]),
                "alpha": opt.alphas[0], "step_size": opt.step_sizes[0],
                # SGD: θ_t − θ_{t+1} = (step size) · g, so this is the step size really taken.
                "taken": float(moved @ grad / (grad @ grad)),
                "off_line": float((moved - moved @ grad / (grad @ grad) * grad).norm()
                                  / moved.norm()),
            })

    probe = Probe()
    max_steps = 120
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=64,
        logging_steps=10, save_strategy="no", report_to="none", use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0, max_grad_norm=0.0)
    trainer = Trainer(model=model, args=args, train_dataset=Data(),
                      optimizers=(opt, None), callbacks=[probe])
    before = _full_loss(model.net, x, y)
    trainer.train()
    after = _full_loss(model.net, x, y)

    # The Trainer attached its own linear decay to the NewtOptimizer.
    scheduler = getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert getattr(scheduler.optimizer, "optimizer", scheduler.optimizer) is opt
    rows = probe.rows
    assert len(rows) == max_steps
    for row in rows:
        decay = 1 - row["step"] / max_steps  # linear, no warmup
        # Not erased: the group's lr is the schedule's value, untouched by newt ...
        assert row["lr"] == pytest.approx(initial_lr * decay, rel=1e-9, abs=1e-15)
        # ... and it scales α: the step taken is α × lr / initial_lr, measured on θ.
        assert row["step_size"] == pytest.approx(row["alpha"] * decay, rel=1e-9, abs=1e-15)
        assert row["taken"] == pytest.approx(row["step_size"], rel=1e-8)
        assert row["off_line"] < 1e-8
    # Not compensated: α is newt's own estimate, and the steps shrink with the decay
    # (a compensating α would grow like 1/decay to keep the step constant).
    late = [r for r in rows if r["step"] >= 0.9 * max_steps]
    assert all(r["step_size"] <= 0.1 * r["alpha"] + 1e-15 for r in late)
    assert max(r["alpha"] for r in late) < 20 * max(r["alpha"] for r in rows[:max_steps // 2])
    # α moved from the initial lr, and the model learned.
    alphas = [r["alpha"] for r in rows]
    assert max(abs(math.log(a / initial_lr)) for a in alphas) > math.log(2), alphas[::10]
    assert after < 0.5 * before, (before, after)
    # What the Trainer logs as learning_rate is the schedule, not α nor the step taken.
    logged = {e["step"]: e["learning_rate"] for e in trainer.state.log_history
              if "learning_rate" in e}
    assert logged
    by_step = {r["step"] + 1: r for r in rows}  # global_step is counted after the step
    for step, lr in logged.items():
        assert lr == pytest.approx(by_step[step]["lr"], rel=1e-6)
