"""The benchmark summary as a picture: robust width and median ratio, method × problem.

Two heatmaps side by side, one row per method and one column per problem:

- **robust width** (left): the number of initial learning rates, out of the
  sweep, whose final value is within ``GOOD_RATIO`` of the tuned baseline;
  darker green = more forgiving;
- **median ratio** (right): the median over the sweep of value ÷ tuned
  baseline, coloured by log₁₀ on a diverging scale centred at 1 (blue: better
  than the tuned fixed learning rate, red: worse; ∞ = a seed diverged).

Every cell carries its number; a blank cell is a method that does not run on
that problem (``[reuse]`` rows run on deterministic problems only). The full
table stays on the page below the picture.

A problem compared by *excess* (``Summary.excess``: the held-out loss minus
the tuned one, in nats, where f* is unknown and losses are of order 1) shows
the median excess, signed, in its cells, and is coloured on the same scale
with its own "as good as tuned" margin ``GOOD_EXCESS`` placed where a ratio
of ``GOOD_RATIO`` is: colour position = excess / GOOD_EXCESS × log₁₀ GOOD_RATIO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap, TwoSlopeNorm

from benchmarks import analysis
from benchmarks.analysis import GOOD_RATIO, Summary

__all__ = ["colour_position", "excess_columns", "plot_heatmap", "summary_grid"]

#: log₁₀ of the median ratio is clipped to ±this for the colour (the text keeps the value).
LOG_RANGE = 4.0
#: The "as good as tuned" margin of an excess comparison, in nats.
GOOD_EXCESS: float = getattr(analysis, "GOOD_EXCESS", 0.02)


def _excess(s: Summary) -> bool:
    return bool(getattr(s, "excess", False))


def summary_grid(summaries: Sequence[Summary], methods: Sequence[str],
                 problems: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Rows (the methods that ran), width, sweep size and median ratio as arrays.

    Missing cells are NaN; a method with no sweep (L-BFGS) has width NaN and
    sweep size 1.
    """
    cells = {(s.method, s.problem): s for s in summaries}
    rows = [m for m in methods if any((m, p) in cells for p in problems)]
    shape = (len(rows), len(problems))
    width, size, median = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for i, method in enumerate(rows):
        for j, problem in enumerate(problems):
            s = cells.get((method, problem))
            if s is None:
                continue
            size[i, j] = len(s.xs)
            median[i, j] = s.median
            if s.width is not None:
                width[i, j] = s.width
    return rows, width, size, median


def excess_columns(summaries: Sequence[Summary], problems: Sequence[str]) -> np.ndarray:
    """Per problem, whether its cells are excesses in nats rather than ratios."""
    flagged = {s.problem for s in summaries if _excess(s)}
    return np.array([p in flagged for p in problems], dtype=bool)


def colour_position(median: np.ndarray, excess: np.ndarray) -> np.ndarray:
    """Where each median sits on the diverging scale: log₁₀ ratio, or the scaled excess."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isinf(median), LOG_RANGE, np.log10(np.where(median > 0, median,
                                                                          np.nan)))
        scaled = np.where(np.isinf(median), LOG_RANGE,
                          median / GOOD_EXCESS * math.log10(GOOD_RATIO))
    position = np.where(excess[None, :], scaled, logs)
    return np.clip(np.where(np.isnan(median), np.nan, position), -LOG_RANGE, LOG_RANGE)


def _excess_text(value: float) -> str:
    if math.isnan(value):
        return ""
    return "∞" if math.isinf(value) else f"{value:+.2g}"


def _ratio_text(value: float) -> str:
    if math.isnan(value):
        return ""
    if math.isinf(value):
        return "∞"
    if 0.01 <= value < 100:
        return f"{value:.2g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def plot_heatmap(summaries: Sequence[Summary], methods: Sequence[str], problems: Sequence[str],
                 path: Path, title: str = "") -> Path | None:
    """Draw the two heatmaps to ``path`` (PNG); ``None`` (nothing written) if no cell ran."""
    rows, width, size, median = summary_grid(summaries, methods, problems)
    if not rows:
        return None
    sweep = int(np.nanmax(size)) if np.isfinite(size).any() else 1
    height = 1.2 + 0.28 * len(rows)
    fig, (ax_w, ax_r) = plt.subplots(1, 2, figsize=(max(9.0, 3.2 + 1.25 * len(problems)), height),
                                     sharey=True, gridspec_kw={"wspace": 0.04})

    # Robust width: discrete greens, 0 … sweep.
    greens = ListedColormap(plt.get_cmap("Greens")(np.linspace(0.05, 0.85, sweep + 1))
                            ).with_extremes(bad="white")
    norm_w = BoundaryNorm(np.arange(-0.5, sweep + 1.5), greens.N)
    image_w = ax_w.imshow(np.ma.masked_invalid(width), cmap=greens, norm=norm_w, aspect="auto")
    for (i, j), value in np.ndenumerate(width):
        if not math.isnan(value):
            ax_w.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                      color="white" if value > 0.6 * sweep else "black")
        elif not math.isnan(size[i, j]):
            ax_w.text(j, i, "–", ha="center", va="center", fontsize=7)
    bar_w = fig.colorbar(image_w, ax=ax_w, location="top", shrink=0.6, pad=0.01, aspect=40,
                         ticks=range(sweep + 1))
    bar_w.set_label(f"robust width: initial lrs (of {sweep}) with ratio ≤ {GOOD_RATIO}",
                    fontsize=8)
    bar_w.ax.tick_params(labelsize=7)

    # Median ratio: log10, diverging around 1; ∞ drawn at the top of the scale.
    excess = excess_columns(summaries, problems)
    logs = colour_position(median, excess)
    diverging = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    norm_r = TwoSlopeNorm(vmin=-LOG_RANGE, vcenter=0.0, vmax=LOG_RANGE)
    image_r = ax_r.imshow(np.ma.masked_invalid(logs), cmap=diverging, norm=norm_r, aspect="auto")
    for (i, j), value in np.ndenumerate(median):
        if not math.isnan(value):
            text = _excess_text(value) if excess[j] else _ratio_text(value)
            ax_r.text(j, i, text, ha="center", va="center", fontsize=6.5,
                      color="white" if abs(logs[i, j]) > 0.6 * LOG_RANGE else "black")
    bar = fig.colorbar(image_r, ax=ax_r, location="top", shrink=0.6, pad=0.01, aspect=40,
                       ticks=np.arange(-LOG_RANGE, LOG_RANGE + 1))
    bar.set_label("median ratio to the tuned baseline (blue: better, red: worse)", fontsize=8)
    if excess.any():
        # Below the rotated problem names (up to ~20 characters at 40°).
        ax_r.annotate(f"(nats): median excess over the tuned baseline in nats, coloured with "
                      f"±{GOOD_EXCESS:g} nats\nwhere a ratio of {GOOD_RATIO} (or its inverse) "
                      "is", xy=(0.5, 0.0), xycoords="axes fraction", xytext=(0, -75),
                      textcoords="offset points", ha="center", va="top", fontsize=7.5)
    bar.ax.set_xticklabels([f"1e{k:.0f}" if k else "1" for k in bar.get_ticks()], fontsize=7)

    names = [p.replace("_", " ") + (" (nats)" if flag else "")
             for p, flag in zip(problems, excess, strict=True)]
    for ax in (ax_w, ax_r):
        ax.set_xticks(range(len(problems)), names,
                      rotation=40, ha="right", fontsize=7.5)
        ax.set_xticks(np.arange(-0.5, len(problems)), minor=True)
        ax.set_yticks(np.arange(-0.5, len(rows)), minor=True)
        ax.grid(which="minor", color="white", lw=0.8)
        ax.tick_params(which="minor", length=0)
    ax_w.set_yticks(range(len(rows)), rows, fontsize=7.5)
    if title:
        fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
