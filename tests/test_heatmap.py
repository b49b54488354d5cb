"""benchmarks/heatmap.py: the summary picture's cells are the summaries' width and median."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("matplotlib")

from benchmarks.analysis import Summary
from benchmarks.heatmap import _ratio_text, plot_heatmap, summary_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(problem: str, method: str, width: int | None, median: float, sweep: int = 7
             ) -> Summary:
    xs = [10.0**k for k in range(-sweep + 1, 1)]
    return Summary(problem=problem, method=method, inner="SGD", xs=xs, values=[1.0] * sweep,
                   ratios=[1.0] * sweep, step_ratios=[math.nan] * sweep, tuned=1.0, initial=2.0,
                   width=width, median=median, worst=median, best_x=xs[0], diverged=0, runs=sweep)


SUMMARIES = [
    _summary("rosenbrock", "SGD", 1, 55.0),
    _summary("rosenbrock", "SGD+newt[reuse]", 6, 0.11),
    _summary("digits_mlp", "SGD", 1, 22.0),
    _summary("digits_mlp", "SGD+newt[free]", 0, math.inf),
    _summary("rosenbrock", "L-BFGS", None, 1.0, sweep=1),
]


def test_grid_holds_each_summarys_width_and_median_and_blanks_what_did_not_run():
    methods = ["SGD", "SGD+newt[reuse]", "SGD+newt[free]", "never ran", "L-BFGS"]
    rows, width, size, median = summary_grid(SUMMARIES, methods, ["rosenbrock", "digits_mlp"])
    assert rows == ["SGD", "SGD+newt[reuse]", "SGD+newt[free]", "L-BFGS"]  # method order kept
    assert width[0].tolist() == [1, 1] and median[0].tolist() == [55.0, 22.0]
    assert width[1, 0] == 6 and math.isnan(width[1, 1]) and math.isnan(median[1, 1])  # [reuse]
    assert math.isnan(median[2, 0]) and math.isinf(median[2, 1])
    assert math.isnan(width[3, 0]) and size[3, 0] == 1 and median[3, 0] == 1.0  # no sweep


def test_cell_text_is_compact_and_keeps_infinity():
    assert [_ratio_text(v) for v in (0.11, 1.0, 55.0, 1.8e9, 4.9e-7, math.inf, math.nan)] == [
        "0.11", "1", "55", "2e9", "5e-7", "∞", ""]


def test_plot_writes_a_png_and_nothing_without_cells(tmp_path):
    path = plot_heatmap(SUMMARIES, ["SGD", "SGD+newt[free]", "L-BFGS"],
                        ["rosenbrock", "digits_mlp"], tmp_path / "img" / "summary.png")
    assert path is not None and path.read_bytes()[:8] == PNG_MAGIC
    assert plot_heatmap(SUMMARIES, ["absent"], ["rosenbrock"], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_an_excess_problem_is_coloured_at_its_own_margin_and_shown_signed(tmp_path):
    import numpy as np

    from benchmarks.heatmap import GOOD_EXCESS, colour_position, excess_columns

    lm = _summary("byte_lm", "AdamW+newt[free]", 2, 0.01)
    lm.excess = True  # a field of Summary where the benchmark compares by excess
    assert excess_columns([*SUMMARIES, lm], ["rosenbrock", "byte_lm"]).tolist() == [False, True]
    median = np.array([[1.25, GOOD_EXCESS], [math.inf, -GOOD_EXCESS], [math.nan, 0.0]])
    position = colour_position(median, np.array([False, True]))
    assert position[0, 0] == pytest.approx(position[0, 1])  # each at its "as good" margin
    assert position[1, 0] == 4.0 and position[1, 1] == pytest.approx(-position[0, 1])
    assert math.isnan(position[2, 0]) and position[2, 1] == 0.0
    path = plot_heatmap([*SUMMARIES, lm], ["SGD", "AdamW+newt[free]"],
                        ["rosenbrock", "byte_lm"], tmp_path / "lm.png")
    assert path is not None and path.read_bytes()[:8] == PNG_MAGIC
