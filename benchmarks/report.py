"""Markdown tables and PNG plots from a benchmark run (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.analysis import FLOOR, GOOD_EXCESS, GOOD_RATIO, Summary
from benchmarks.heatmap import plot_heatmap
from benchmarks.methods import INNER

__all__ = ["plot_lr_traces", "plot_sweeps", "write_markdown"]

_MODE_COLOURS = {"closure": "tab:blue", "free": "tab:orange", "reuse": "tab:green"}
_MODE_MARKERS = {"closure": "o", "free": "s", "reuse": "^"}
_OTHER_COLOURS = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


# ---------------------------------------------------------------- formatting
def fmt(value: float | None, digits: int = 3) -> str:
    """A compact number: ``1.23``, ``4.5e-07``, ``∞``, ``–`` for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:.{max(digits - 1, 1)}e}"


def _x(value: float) -> str:
    return f"1e{round(math.log10(value))}" if value > 0 else str(value)


def _best(s: Summary, values: Sequence[float | None]) -> float | None:
    return values[s.best_index] if values else None


# ---------------------------------------------------------------- plots
def _style(s: Summary, methods: dict[str, Any]) -> dict[str, Any]:
    method = methods[s.method]
    if method.kind == "fixed":
        return {"color": "black", "marker": "o", "lw": 2, "zorder": 5,
                **({"ls": "--", "color": "0.35", "marker": "D"} if method.schedule else {})}
    if method.kind == "newt":
        linestyle = "--" if method.preset == "seed" else (":" if method.variant else "-")
        linestyle = (0, (6, 1, 1, 1)) if method.schedule else linestyle
        return {"color": _MODE_COLOURS[method.newt_mode], "ls": linestyle, "ms": 3.5,
                "marker": _MODE_MARKERS[method.newt_mode],
                "alpha": 0.9 if method.preset == "default" else 0.7}
    return {"ls": "-.", "marker": "s", "ms": 3}


def plot_sweeps(summaries: list[Summary], methods: dict[str, Any], problem: str, title: str,
                path: Path) -> None:
    """Final suboptimality against the swept value: one panel per inner optimizer."""
    rows = [s for s in summaries if s.problem == problem]
    panels = [inner for inner in INNER if any(s.inner == inner for s in rows)]
    if not panels:
        return
    top = 3 * max(s.initial for s in rows)  # diverged points (∞) are drawn here as ×
    shown = [v for s in rows for v in s.values if v <= top]
    bottom = min(shown) / 3 if shown else FLOOR
    columns = min(2, len(panels))
    rows_ = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(6.2 * columns, 4.6 * rows_), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, inner in zip(axes.flat, panels, strict=False):
        colours = iter(_OTHER_COLOURS)
        for s in rows:
            if s.inner not in (inner, None):
                continue
            if len(s.xs) == 1:  # no sweep (L-BFGS): a horizontal line
                ax.axhline(min(s.values[0], top), color="grey", lw=1.5, ls=(0, (5, 2)),
                           label=s.method)
                continue
            style = _style(s, methods)
            if methods[s.method].kind in ("peer", "hd"):
                style["color"] = next(colours)
            ys = [min(v, top) for v in s.values]
            ax.plot(s.xs, ys, label=s.method, **style)
            lost = [x for x, v in zip(s.xs, s.values, strict=True) if not v <= top]
            if lost:
                ax.plot(lost, [top] * len(lost), "x", color=style.get("color"), ms=8)
            if methods[s.method].kind == "fixed" and not methods[s.method].schedule:
                good = s.tuned + GOOD_EXCESS if s.excess else s.tuned * GOOD_RATIO
                ax.axhspan(bottom, good, color="0.85", zorder=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom, top * 1.5)
        ax.set_title(inner)
        ax.set_xlabel("initial lr  (Prodigy/D-Adapt: d0, DoG: reps_rel)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    for ax in axes[:, 0]:
        ax.set_ylabel("final f − f* (or loss), equal evaluations")
    band = (f"excess ≤ {GOOD_EXCESS} nats over" if rows[0].excess
            else f"ratio ≤ {GOOD_RATIO} to")
    fig.suptitle(f"{title}\ngrey band: {band} the tuned fixed lr; dashed grey: tuned lr + "
                 f"cosine;\n× at the top: diverged (non-finite or above the initial value)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_lr_traces(runs: list[dict[str, Any]], problem: str, mode: str, xs: Sequence[float],
                   tuned_x: dict[str, float], path: Path,
                   inners: Sequence[str] = ("SGD", "Adam", "AdamW"), seed: int = 0) -> None:
    """Training loss (top) and α (bottom) over steps, one column per inner optimizer.

    Solid: newt (default preset), dashed: newt's seed preset, dash-dotted: newt
    with the cosine schedule (its α panel shows the step size α·lr/initial_lr),
    all in ``mode``, one colour per initial lr; black: the tuned fixed-LR run
    (dashed: the tuned + cosine run).
    """
    index = {(r["method"], r["x"]): r for r in runs
             if r["problem"] == problem and r["seed"] == seed}
    fig, axes = plt.subplots(2, len(inners), figsize=(4.8 * len(inners), 6.4), sharex="col",
                             squeeze=False)
    colours = plt.get_cmap("viridis")([i / max(len(xs) - 1, 1) * 0.85 for i in range(len(xs))])
    for column, inner in enumerate(inners):
        loss_ax, lr_ax = axes[0][column], axes[1][column]
        for x, colour in zip(xs, colours, strict=True):
            for preset, suffix, ls in (("newt", "", "-"), ("newt-seed", "", "--"),
                                       ("newt", "+cos", "-.")):
                run = index.get((f"{inner}+{preset}[{mode}]{suffix}", x))
                if run is None:
                    continue
                label = f"{preset}{suffix} α₀={_x(x)}"
                loss_ax.plot(run["trace"]["steps"], run["trace"]["loss"], ls=ls, color=colour,
                             label=label)
                steps, lrs = zip(*run["lr_steps"], strict=True)
                lr_ax.plot(steps, lrs, ls=ls, color=colour, label=label)
        baseline = index.get((inner, tuned_x.get(inner)))
        if baseline is not None:
            loss_ax.plot(baseline["trace"]["steps"], baseline["trace"]["loss"], color="black",
                         lw=1.5, label=f"{inner} tuned lr={_x(baseline['x'])}")
            lr_ax.axhline(baseline["x"], color="black", lw=1, ls=":", label="tuned lr")
        cosine = index.get((inner + "+cos", tuned_x.get(inner + "+cos")))
        if cosine is not None:
            loss_ax.plot(cosine["trace"]["steps"], cosine["trace"]["loss"], color="black",
                         lw=1.2, ls="--", label=f"{inner}+cos tuned lr={_x(cosine['x'])}")
            steps, lrs = zip(*cosine["lr_steps"], strict=True)
            lr_ax.plot(steps, lrs, color="black", lw=1, ls="--", label="tuned lr + cosine")
        loss_ax.set_yscale("log")
        lr_ax.set_yscale("log")
        per_step = "2 evaluations/step" if mode == "closure" else "1 evaluation/step"
        loss_ax.set_title(f"{inner} inner, newt[{mode}] ({per_step})")
        loss_ax.set_ylabel("full training loss")
        lr_ax.set_ylabel("α (group lr)")
        lr_ax.set_xlabel("step")
        loss_ax.legend(fontsize=6.5)
        for ax in (loss_ax, lr_ax):
            ax.grid(True, alpha=0.3)
    fig.suptitle(f"{problem}: loss and learned α over steps (seed {seed})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------- markdown
def _summary_matrix(summaries: list[Summary], methods: Sequence[str],
                    problems: Sequence[str]) -> list[str]:
    """Methods × problems: robust width and median ratio."""
    cell: dict[str, dict[str, str]] = defaultdict(dict)
    for s in summaries:
        width = "–" if s.width is None else f"{s.width}/{len(s.xs)}"
        cell[s.method][s.problem] = f"{width} · {fmt(s.median, 2)}"
    lines = ["| method | " + " | ".join(problems) + " |",
             "|---|" + "---|" * len(problems)]
    for method in methods:
        if method in cell:
            row = " | ".join(cell[method].get(p, "") for p in problems)
            lines.append(f"| {method} | {row} |")
    return lines


def _problem_table(rows: list[Summary], has_test: str | None) -> list[str]:
    equal_steps = any(not math.isnan(statistics.median(s.step_ratios)) for s in rows)
    word = "excess (nats)" if rows and rows[0].excess else "ratio"
    columns = ["method", "vs", "best x", "final @best", f"{word} @best", f"median {word}",
               f"worst {word}", "width", *([f"median {word}, equal steps"] if equal_steps else []),
               "diverged",
               *({"accuracy": ["test acc @best"], "loss": ["test loss @best"]}.get(has_test, []))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for s in rows:
        cells = [s.method, s.baseline or "best", _x(s.best_x), fmt(s.values[s.best_index]),
                 fmt(s.ratios[s.best_index]), fmt(s.median), fmt(s.worst),
                 "–" if s.width is None else f"{s.width}/{len(s.xs)}"]
        if equal_steps:
            cells.append(fmt(statistics.median(s.step_ratios)))
        cells.append(f"{s.diverged}/{s.runs}")
        if has_test == "accuracy":
            cells.append(fmt(_best(s, s.test_accuracy)))
        elif has_test == "loss":
            cells.append(fmt(_best(s, s.test_loss), 4))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(path: Path, meta: dict[str, Any], summaries: list[Summary],
                   problem_info: dict[str, dict[str, Any]], cost_rows: list[dict[str, Any]],
                   images: dict[str, Path]) -> None:
    """Write the results page (``docs/benchmarks.md``)."""
    problems = list(problem_info)
    rel = {key: os.path.relpath(p, path.parent) for key, p in images.items()}
    repo = Path(__file__).resolve().parent.parent
    protocol_file = repo / "docs" / "benchmark-protocol.md"
    # a page inside the repository links relatively (the published docs); one outside it
    # (``--out`` elsewhere) links to this checkout's file
    protocol = (os.path.relpath(protocol_file, path.parent)
                if path.resolve().is_relative_to(repo) else protocol_file.as_uri())
    heatmap = plot_heatmap(summaries, meta["methods"], problems, path.parent / "img"
                           / "bench_summary.png")
    out = [
        "# Benchmarks",
        "",
        f"Generated by `{meta['command']}` on {meta['date']}, in {meta['wall_minutes']:.1f} min "
        f"with {meta['workers']} worker process(es).  ",
        f"newt at {meta['newt']}; torch {meta['torch']}, Python {meta['python']}, "
        f"{meta['machine']}, os.cpu_count() = {meta['cpus']}.",
        "",
    ]
    out += [f"> {note}" for note in meta["notes"]]
    out += [
        "",
        f"Protocol: [the benchmark protocol]({protocol}). Every method runs on the same problems "
        f"with the same budget of **gradient evaluations** (closure calls), from initial "
        f"learning rates {', '.join(_x(x) for x in meta['grid'])} (Prodigy/D-Adapt: `d0`, DoG: "
        "`reps_rel`); a method that evaluates twice per step gets half the steps. "
        "Values are the mean over seeds of the final suboptimality f − f* (training loss where "
        "f* is unknown) on the full training set; on `byte_lm` the held-out loss. Rows "
        "`<problem>-long` are the stochastic problems at a budget 3× longer.",
        "",
        "- **ratio** = value ÷ the best point of the fixed-LR sweep of the same inner optimizer "
        "(the *tuned baseline*; L-BFGS is compared with the best of all sweeps); `+cos` rows "
        "(linear warmup over 5% of the steps, then cosine decay to 0, attached as an LR "
        "scheduler) are compared with the best point of the inner optimizer's sweep with the "
        "same schedule (*tuned + cosine*, rows `Adam+cos` etc.); column **vs** names the "
        f"reference. Suboptimalities below {FLOOR:g} × the initial one count as solved "
        "(floored). On `byte_lm` (f* unknown, losses of order 1) the comparison is the "
        "**excess** = value − tuned value in nats, against AdamW's sweeps for every method.",
        f"- **width** = number of initial learning rates (decades) with ratio ≤ {GOOD_RATIO} "
        f"(excess ≤ {GOOD_EXCESS} nats) "
        f"({len(meta['grid'])} = the whole sweep). For a fixed-LR row it is how forgiving "
        "the plain optimizer is.",
        "- **median/worst ratio** over the sweep; ∞ when a seed ended non-finite. "
        "**diverged** = runs whose final loss is non-finite or above the initial loss.",
        "- **equal steps**: the same runs stopped after as many steps as the one-evaluation "
        "methods take (newt[closure] then spends twice the evaluations).",
        "- newt modes: `[closure]` = `step(closure)`, 2 evaluations/step; `[free]` = `step()` "
        "after `backward()`, 1/step; `[reuse]` = `reuse_lookahead=True`, 1/step, deterministic "
        "problems only. `newt` = default preset, `newt-seed` = `preset=\"seed\"` (which needs "
        "a closure, so it has no `[free]` row). SGD-HD: hypergradient descent with the "
        "paper's β = 1e-3, which is not scale-free: it diverges where gradients are large. "
        "Peers as their authors recommend them: Prodigy, D-Adapt Adam with `lr=1`, with and "
        "without the cosine schedule (Prodigy+cos with `safeguard_warmup=True`); DoG+avg: DoG "
        "measured at its polynomial-decay iterate average (γ = 8); SF-AdamW with 5% warmup "
        "and weight decay 0.01, measured at its averaged point (`opt.eval()`).",
        "",
        "## Summary: width · median ratio",
        "",
        "Each cell: robust width / sweep size · median ratio to the tuned baseline "
        "(at equal gradient evaluations; on `byte_lm` the median excess in nats).",
        "",
        *([f"![width and median ratio, method × problem]"
           f"({os.path.relpath(heatmap, path.parent)})", ""] if heatmap else []),
        *_summary_matrix(summaries, meta["methods"], problems),
        "",
    ]
    for problem, info in problem_info.items():
        rows = [s for s in summaries if s.problem == problem]
        out += [f"## {problem}", "", info["description"], ""]
        if problem in rel:
            out += [f"![{problem}: final loss against initial learning rate]({rel[problem]})", ""]
        out += [*_problem_table(rows, info.get("test")), ""]
    for key in sorted(k for k in rel if k.startswith("traces")):
        out += [f"## Learning-rate traces ({key.split(':', 1)[1]})", "",
                f"![loss and α over steps]({rel[key]})", ""]
    if cost_rows:
        out += [
            "## Cost per step",
            "",
            "Interleaved in one process (median over rounds); time ratio to the plain inner "
            "optimizer; state = optimizer state bytes ÷ parameter bytes (peak memory is not "
            "measured on CPU).",
            "",
            "| problem | method | ms/step | time ratio | evaluations/step | state/params |",
            "|---|---|---|---|---|---|",
        ]
        out += [f"| {r['problem']} | {r['method']} | {r['ms_per_step']:.3f} | "
                f"{r['time_ratio']:.2f} | {r['evals_per_step']:.2f} | {r['state_ratio']:.2f} |"
                for r in cost_rows]
        out.append("")
    out += ["## Reproduce and tune", "", "```", *meta["howto"], "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out))

