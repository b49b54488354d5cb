"""From runs to the protocol's numbers: ratios to the tuned baseline and robust width.

For each (problem, method, swept value x) the runs over seeds are averaged
(a point with a non-finite run counts as infinite). Then, per problem:

- the *tuned baseline* of an inner optimizer is the best point of its
  fixed-LR sweep, the *tuned + cosine baseline* the best point of the same
  sweep with the warmup + cosine schedule; a method is compared with the one
  its ``baseline_of`` names (by default its inner optimizer; scheduled
  methods with ``"<inner>+cos"``; L-BFGS, which has no inner optimizer, with
  the best of all fixed-LR sweeps);
- *ratio* = method's value ÷ tuned value (suboptimality f − f* where f* is
  known, else the training loss, or the held-out loss for a problem judged
  on it), at equal evaluations and at equal steps; a run that ended
  non-finite or above its initial loss counts as ∞. On an ``excess``
  problem (the language model: f* unknown, losses of order one) the
  comparison is the *excess* value − tuned value in nats instead;
- *robust width* = number of swept decades with ratio ≤ 1.25 (excess ≤
  0.02 nats); *median* and *worst* ratio (excess) over the sweep;
  *diverged* = runs that ended non-finite or above their initial loss.

Suboptimalities below ``FLOOR`` × the initial suboptimality count as solved:
they are raised to that floor so that ratios between round-off levels do not
mean anything.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FLOOR", "GOOD_EXCESS", "GOOD_RATIO", "Summary", "compare", "summarise",
           "tuned_baselines"]

FLOOR = 1e-10
GOOD_RATIO = 1.25
GOOD_EXCESS = 0.02  # nats: the "as good as tuned" margin on an excess problem


@dataclass
class Summary:
    """The protocol's metrics for one method on one problem."""

    problem: str
    method: str
    inner: str | None
    xs: list[float]
    values: list[float]  # mean final suboptimality at equal evaluations, per x
    ratios: list[float]  # values ÷ tuned (values − tuned on an excess problem)
    step_ratios: list[float]  # the same at equal steps
    tuned: float
    initial: float  # mean initial suboptimality
    width: int | None  # decades with ratio ≤ GOOD_RATIO (None without a sweep)
    median: float
    worst: float
    best_x: float
    diverged: int
    runs: int
    test_accuracy: list[float | None] = field(default_factory=list)  # mean per x
    test_loss: list[float | None] = field(default_factory=list)
    baseline: str | None = None  # the fixed-LR method whose best point is ``tuned``
    excess: bool = False  # ratios are excesses in nats

    @property
    def best_index(self) -> int:
        return self.xs.index(self.best_x)


def _value(run: dict[str, Any], at: str) -> float:
    """The run's suboptimality at ``at``, floored; ∞ if it diverged (non-finite or above start)."""
    point = run.get(at)
    if point is None:  # not measured (no equal-steps budget, or L-BFGS)
        return math.nan
    value = point["subopt"]
    if not math.isfinite(value) or point["loss"] > run["initial"]["loss"]:
        return math.inf
    floor = FLOOR * max(abs(run["initial"]["subopt"]), 1e-300)
    return max(value, floor)


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean over seeds; ∞ if a seed is ∞, NaN if one is missing (NaN)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if any(math.isnan(v) for v in values):
        return math.nan
    return math.fsum(values) / len(values) if all(map(math.isfinite, values)) else math.inf


def _points(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[float, list[dict[str, Any]]]]:
    grouped: dict[tuple[str, str], dict[float, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list))
    for run in runs:
        grouped[run["problem"], run["method"]][run["x"]].append(run)
    return grouped


def compare(value: float, tuned: float, excess: bool = False) -> float:
    """``value`` against the tuned baseline: the ratio, or the excess ``value − tuned`` (nats).

    A diverged value (∞) stays ∞ either way.
    """
    if excess:
        return math.inf if math.isinf(value) else value - tuned
    return value / tuned


def tuned_baselines(runs: list[dict[str, Any]],
                    inners: Iterable[str]) -> dict[tuple[str, str], float]:
    """(problem, inner) -> best mean final value of its fixed-LR sweep ("*": best of all)."""
    best: dict[tuple[str, str], float] = {}
    inners = set(inners)
    for (problem, method), by_x in _points(runs).items():
        if method not in inners:
            continue
        value = min(_mean(_value(r, "at_evals") for r in rs) for rs in by_x.values())
        best[problem, method] = value
        best[problem, "*"] = min(best.get((problem, "*"), math.inf), value)
    return best


def summarise(runs: list[dict[str, Any]], inner_of: dict[str, str | None],
              baseline_of: dict[str, str | None] | None = None,
              problem_baseline: dict[str, str] | None = None,
              excess: Iterable[str] = ()) -> list[Summary]:
    """One :class:`Summary` per (problem, method), in the order methods appear in ``inner_of``.

    Args:
        runs: :meth:`benchmarks.harness.RunResult.to_dict` dictionaries.
        inner_of: method name -> its inner optimizer (``None``: none).
        baseline_of: method name -> the fixed-LR method it is compared with
            (``None``: the best of all fixed-LR sweeps); default ``inner_of``.
        problem_baseline: problem -> an inner optimizer every method of that
            problem is compared with instead (its ``+cos`` sweep for scheduled
            methods), e.g. ``{"byte_lm": "AdamW"}``.
        excess: problems compared by excess in nats instead of ratio.
    """
    baseline_of = dict(inner_of if baseline_of is None else baseline_of)
    problem_baseline = problem_baseline or {}
    excess = set(excess)
    fixed = {name for name in baseline_of.values() if name is not None}
    fixed |= {inner + suffix for inner in problem_baseline.values() for suffix in ("", "+cos")}
    tuned = tuned_baselines(runs, fixed)
    grouped = _points(runs)
    order = {name: i for i, name in enumerate(inner_of)}
    summaries = []
    for (problem, method), by_x in sorted(grouped.items(),
                                          key=lambda kv: (kv[0][0], order.get(kv[0][1], 1e9))):
        inner = inner_of.get(method)
        baseline = baseline_of.get(method)
        if problem in problem_baseline and baseline is not None:
            baseline = problem_baseline[problem] + ("+cos" if baseline.endswith("+cos") else "")
        reference = tuned.get((problem, baseline or "*"), math.nan)
        xs = sorted(by_x)
        values = [_mean(_value(r, "at_evals") for r in by_x[x]) for x in xs]
        step_values = [_mean(_value(r, "at_steps") for r in by_x[x]) for x in xs]
        by_excess = problem in excess
        ratios = [compare(v, reference, by_excess) for v in values]
        step_ratios = [compare(v, reference, by_excess) for v in step_values]
        good = GOOD_EXCESS if by_excess else GOOD_RATIO
        all_runs = [r for x in xs for r in by_x[x]]
        summaries.append(Summary(
            problem=problem,
            method=method,
            inner=inner,
            xs=xs,
            values=values,
            ratios=ratios,
            step_ratios=step_ratios,
            tuned=reference,
            initial=statistics.fmean(r["initial"]["subopt"] for r in all_runs),
            width=sum(r <= good for r in ratios) if len(xs) > 1 else None,
            median=statistics.median(ratios),
            worst=max(ratios),
            best_x=xs[min(range(len(xs)), key=values.__getitem__)],
            diverged=sum(bool(r["diverged"]) for r in all_runs),
            runs=len(all_runs),
            test_accuracy=[_mean(r["at_evals"]["test_accuracy"] for r in by_x[x]) for x in xs],
            test_loss=[_mean(r["at_evals"]["test_loss"] for r in by_x[x]) for x in xs],
            baseline=baseline,
            excess=by_excess,
        ))
    return summaries
