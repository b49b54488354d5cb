"""``newt-demo``: rescue a bad learning rate on the digits, and compare with a tuned one.

Trains a small MLP on scikit-learn's 8×8 digits (bundled, no download) with
the inner optimizer started at a deliberately bad learning rate, and compares
at an equal number of gradient evaluations (forward + backward passes):

- ``NewtOptimizer(inner)`` closure-free: the next batch's gradient is the
  lookahead, one evaluation per step (on these mini-batches the default controller
  runs the gated rule, from min(lr, 1e-6));
- ``NewtOptimizer(inner, controller="newton")`` closure-free: the damped Newton rule
  from the first step, the default before H36 of the design record;
- ``NewtOptimizer(inner)`` with a closure: two evaluations per step (half as
  many steps);
- the seed project's rule and API (``newt.Newt`` scheduler with its default
  ``NewtConfig``): two evaluations per step;
- the inner optimizer at the bad learning rate, fixed;
- the inner optimizer at the best fixed learning rate of a small grid,
  tuned here on the final training loss (each grid point costs a full run).

Prints a table, a sentence on what its rows show, and writes a figure of the
training loss and of α against gradient evaluations to ``--out DIR``
(default ``./newt-demo/``, ignored by git in a checkout). Off a terminal (output
piped or redirected) a plain progress line per run goes to stderr in place of
the progress bar. Run ``newt-demo --help`` or ``python -m newt.demo --help``.
Needs the ``demo`` extra: ``pip install "newt[demo]"``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["FIGURE", "Run", "explain", "main", "train"]

FIGURE = "newt-demo.png"  # the figure's name inside --out DIR

INNER = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
BAD_LR = {"adam": 1e-5, "sgd": 1e-4}
GRID = {"adam": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2), "sgd": (0.01, 0.03, 0.1, 0.3, 1.0)}
# gradient evaluations per step
MODES = {"fixed": 1, "newt": 1, "newt-newton": 1, "newt-closure": 2, "seed": 2}


@dataclass
class Run:
    """One training run: its curve against gradient evaluations and its final numbers."""

    label: str
    mode: str
    evaluations: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # full training-set loss
    lr_evaluations: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    train_loss: float = math.nan
    test_accuracy: float = math.nan

    @property
    def final_lr(self) -> float:
        return self.lrs[-1] if self.lrs else math.nan


def train(problem: Any, inner: str, lr: float, mode: str, budget: int, seed: int,
          label: str = "", on_evaluations: Callable[[int], None] | None = None,
          points: int = 60) -> Run:
    """Train ``problem`` for ``budget`` gradient evaluations and record the curves.

    Args:
        problem: a :class:`newt.problems.Problem` with mini-batches.
        inner: ``"adam"`` or ``"sgd"``.
        lr: the inner optimizer's (initial) learning rate.
        mode: ``"fixed"`` (the inner optimizer alone), ``"newt"`` (closure-free
            ``NewtOptimizer``), ``"newt-newton"`` (the same with
            ``controller="newton"``), ``"newt-closure"`` (``NewtOptimizer`` with a
            closure) or ``"seed"`` (the ``Newt`` scheduler with the seed's rule).
        budget: gradient evaluations (a step costs ``MODES[mode]`` of them).
        seed: seeds the initial weights and the batch order.
        on_evaluations: called with the number of evaluations of each step.
        points: how many times the full training loss is recorded.
    """
    from newt import Newt, NewtConfig, NewtOptimizer

    model = problem.init(seed)
    inner_opt = INNER[inner](model.parameters(), lr=lr)
    batches = problem.batches(seed)
    run = Run(label=label or f"{inner} {mode} lr={lr:g}", mode=mode)
    per_step = MODES[mode]
    every = max(1, budget // points)

    newt_opt = (NewtOptimizer(inner_opt, controller="newton") if mode == "newt-newton"
                else NewtOptimizer(inner_opt) if mode in ("newt", "newt-closure") else None)
    loss_criterion = torch.nn.CrossEntropyLoss()  # the digits problems' loss, for the seed's API
    scheduler = Newt(inner_opt, NewtConfig(model=model, loss_criterion=loss_criterion)) \
        if mode == "seed" else None

    def record(evals: int) -> None:
        run.evaluations.append(evals)
        run.losses.append(problem.train_loss(model))

    record(0)
    evals = 0
    while evals + per_step <= budget:
        batch = next(batches)
        if mode == "fixed":
            inner_opt.zero_grad()
            problem.loss(model, batch).backward()
            inner_opt.step()
        elif mode in ("newt", "newt-newton"):
            assert newt_opt is not None
            newt_opt.zero_grad()
            problem.loss(model, batch).backward()
            newt_opt.step()
        elif mode == "newt-closure":
            assert newt_opt is not None

            def closure(batch: Any = batch) -> torch.Tensor:
                newt_opt.zero_grad()
                loss = problem.loss(model, batch)
                loss.backward()
                return loss

            newt_opt.step(closure)
        else:  # the seed's loop, as in its README
            assert scheduler is not None
            x, y = batch
            inner_opt.zero_grad()
            loss = loss_criterion(model(x), y)
            loss.backward()
            inner_opt.step()
            scheduler.step_setup(loss, x, y)
            scheduler.step()
        evals += per_step
        run.lr_evaluations.append(evals)
        run.lrs.append(float(inner_opt.param_groups[0]["lr"]))
        if evals % every < per_step or evals + per_step > budget:
            record(evals)
        if on_evaluations is not None:
            on_evaluations(per_step)
    run.train_loss = problem.train_loss(model)
    run.test_accuracy = problem.test_accuracy(model) if problem.test_accuracy else math.nan
    return run


class _Progress:
    """A tqdm bar over all runs' gradient evaluations on a terminal; off one, a line per run.

    ``enabled``: ``True`` always shows the bar, ``False`` shows nothing, ``None``
    (the default) shows the bar when stderr is a terminal and otherwise prints
    ``newt-demo: run i/n: label`` to stderr as each run starts, so that a
    piped or redirected demo is not silent.
    """

    def __init__(self, total: int, runs: int, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        terminal = sys.stderr.isatty()
        self.lines = enabled is None and not terminal
        self.runs, self.started = runs, 0
        self.clock = time.perf_counter()
        self.bar = tqdm(total=total, unit="eval", desc="newt-demo", disable=enabled is False
                        or (enabled is None and not terminal), leave=False)

    def start(self, label: str) -> None:
        self.started += 1
        self.bar.set_postfix_str(label, refresh=False)
        if self.lines:
            print(f"newt-demo: run {self.started}/{self.runs}: {label} "
                  f"({time.perf_counter() - self.clock:.0f} s so far)", file=sys.stderr,
                  flush=True)

    def __call__(self, evaluations: int) -> None:
        self.bar.update(evaluations)

    def close(self) -> None:
        self.bar.close()


def _format_table(rows: Sequence[tuple[Run, str]]) -> str:
    head = f"{'run':<44} {'evals/step':>10} {'evals':>6} {'train loss':>11} " \
           f"{'test acc':>9} {'final lr':>9}"
    lines = [head, "-" * len(head)]
    for run, label in rows:
        evals = run.lr_evaluations[-1] if run.lr_evaluations else 0
        lines.append(f"{label:<44} {MODES[run.mode]:>10d} {evals:>6d} {run.train_loss:>11.4g} "
                     f"{100 * run.test_accuracy:>8.1f}% {run.final_lr:>9.2e}")
    return "\n".join(lines)


def explain(rows: Sequence[tuple[Run, str]], grid_runs: int, lr_min: float) -> str:
    """What the table's rows show, in words that stay true whatever the numbers are.

    One sentence on the rows; then, for each newt row whose final α sits at
    the lower clamp ``lr_min``, one on what that means (computed from the run,
    not written in advance).
    """
    text = ("Each row is one training run at the same budget of gradient evaluations: the newt "
            "rows and the seed's rule start from the bad learning rate and 'final lr' is the α "
            "they ended with (learned, not set), the fixed rows keep the lr they were given, "
            f"and the best-of-grid row is the best of {grid_runs} fixed-lr runs, a cost the "
            "other rows do not pay.")
    for run, label in rows:
        if run.mode != "fixed" and run.lrs and run.final_lr <= 1.5 * lr_min:
            peak = max(run.lrs)
            at = run.lr_evaluations[run.lrs.index(peak)]
            text += (f"\n{label}: α rose to {peak:.2e} (at evaluation {at}) and ended at "
                     f"{run.final_lr:.2e}, at its floor lr_min = {lr_min:g}: after the peak "
                     "its Newton steps kept shrinking α, so the run stopped moving and its loss "
                     "is what it had reached by then (the FAQ's 'Why does α keep shrinking in "
                     "the closure-free mode?').")
    return text


def _plot(rows: Sequence[tuple[Run, str]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(12, 5.2), constrained_layout=True)
    for i, (run, label) in enumerate(rows):
        color = f"C{i}"
        style = "-" if run.mode != "fixed" else "--"
        ax_loss.plot(run.evaluations, run.losses, style, color=color, label=label, lw=1.8)
        ax_lr.plot(run.lr_evaluations, run.lrs, style, color=color, label=label, lw=1.8)
    ax_loss.set(xlabel="gradient evaluations", ylabel="training loss (full training set)",
                yscale="log", title="training loss")
    ax_lr.set(xlabel="gradient evaluations", ylabel="learning rate α", yscale="log",
              title="learning rate")
    for ax in (ax_loss, ax_lr):
        ax.grid(True, which="major", alpha=0.4)
    handles, labels = ax_loss.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lr_min() -> float:
    """The lower clamp on α of ``NewtOptimizer``'s default preset."""
    from newt.presets import PRESETS

    return float(PRESETS["default"]["lr_min"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="newt-demo",
        description="Train a small MLP on scikit-learn's digits from a deliberately bad learning "
                    "rate, with newt and without, and compare with the best fixed learning rate "
                    "of a small grid at an equal number of gradient evaluations.",
    )
    parser.add_argument("--steps", type=int, default=1000,
                        help="gradient evaluations per run (default: %(default)s); a fixed-lr or "
                             "closure-free newt run takes this many steps, a run with two "
                             "evaluations per step half as many")
    parser.add_argument("--out", type=Path, default=Path("newt-demo"),
                        help=f"folder for the figure ({FIGURE}); created if missing "
                             "(default: ./newt-demo/, which git ignores in a checkout of newt)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initial weights and of the batch order (default: 0)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (200 evaluations, three grid points) for smoke tests")
    parser.add_argument("--inner", choices=sorted(INNER), default="adam",
                        help="the inner optimizer (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=None,
                        help="the bad starting learning rate (default: 1e-5 for adam, "
                             "1e-4 for sgd)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1, the fastest for this small model)")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show the progress bar (default: only on a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false",
                          help="never show the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; ``argv`` defaults to the command line. Returns the exit code."""
    args = _parser().parse_args(argv)
    if args.steps < 2:
        _parser().error(f"--steps must be at least 2, got {args.steps}")
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError as error:
        print(f"newt-demo needs scikit-learn, matplotlib and tqdm ({error}); install them with "
              "pip install 'newt[demo]'", file=sys.stderr)
        return 1
    from newt.problems import digits_mlp

    budget = 200 if args.quick else args.steps
    inner = args.inner
    bad = BAD_LR[inner] if args.lr is None else args.lr
    grid = GRID[inner][-3:] if args.quick else GRID[inner]
    name = {"adam": "Adam", "sgd": "SGD"}[inner]
    problem = digits_mlp((64,), "tanh", batch_size=64, test_size=0.2)

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    progress = _Progress(budget * (len(grid) + 5), len(grid) + 5, args.progress)
    try:
        def run(lr: float, mode: str, label: str) -> Run:
            progress.start(label)
            return train(problem, inner, lr, mode, budget, args.seed, label, progress)

        tuned = [run(lr, "fixed", f"{name} fixed lr={lr:g}") for lr in grid]
        best_lr, best = min(zip(grid, tuned, strict=True), key=lambda pair: pair[1].train_loss
                            if math.isfinite(pair[1].train_loss) else math.inf)
        labels = {"newt": f"newt({name}) closure-free, from lr={bad:g}",
                  "newt-newton": f"newt({name}) Newton rule, from lr={bad:g}",
                  "newt-closure": f"newt({name}) with closure, from lr={bad:g}",
                  "seed": f"seed's rule (newt.Newt), from lr={bad:g}",
                  "fixed": f"{name} fixed at the bad lr={bad:g}"}
        rows = [(run(bad, mode, label), label) for mode, label in labels.items()]
        rows.append((best, f"{name} fixed lr={best_lr:g} (best of grid)"))
    finally:
        progress.close()
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - started

    print(f"digits, MLP 64-64-10 (tanh), batches of 64; {budget} gradient evaluations per run "
          f"(one evaluation = forward + backward on one batch)")
    print(_format_table(rows))
    print(explain(rows, len(grid), _lr_min()))
    print("grid of fixed learning rates (final training loss): " + ", ".join(
        f"{lr:g}: {r.train_loss:.3g}" for lr, r in zip(grid, tuned, strict=True))
        + f"  [tuning cost {len(grid)} runs, {len(grid) * budget} evaluations]")
    args.out.mkdir(parents=True, exist_ok=True)
    figure = args.out / FIGURE
    _plot(rows, str(figure), f"digits MLP, {name} from lr={bad:g}: newt vs fixed learning rates "
                          f"({budget} gradient evaluations per run)")
    print(f"figure: {figure}   ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
