"""Run the benchmark: every method side by side, write ``docs/benchmarks.md`` and plots.

Usage (from the repository root)::

    python -m benchmarks.run --quick            # 5 problems, short budgets, 2 seeds
    python -m benchmarks.run --full             # all 13 problems, short + long budgets, 3 seeds
    python -m benchmarks.run --full --estimate  # time one short run per method: --full's minutes
    python -m benchmarks.run --problems byte_lm --budgets short --seeds 1 \
        --methods 'AdamW+newt[free]*,Prodigy*'  # a subset
    python -m benchmarks.run --quick --newt-options '{"gamma": 0.3}'
    python -m benchmarks.run --quick --reuse benchmarks/results/quick-latest.json \\
        --methods '*newt*' --presets default --newt-variants '{"g03": {"gamma": 0.3}}'

Stochastic problems run at a short budget and a long one (``LONG`` × the
short one, rows ``<problem>-long``); ``--budgets`` picks them. Every
fixed-LR baseline and every default-preset newt row also runs with linear
warmup + cosine decay (``+cos`` rows, compared with the tuned + cosine
baseline); ``--schedules none`` drops them.

A run with any selection or override (``--problems``, ``--methods``,
``--exclude``, ``--inners``, ``--modes``, ``--presets``, ``--schedules``,
``--budgets``, ``--newt-options``, ``--newt-variants``, ``--seeds``,
``--long-seeds``, ``--long-equal-steps``, ``--budget-scale``)
writes its page and
plots under ``benchmarks/results/`` instead of ``docs/``, so tuning never
overwrites the published results. ``--reuse`` takes the runs it can from an
earlier JSON (same problem, method and options, x, seed and budget): the
fixed-LR baselines and peers then cost nothing.

Each finished run is also appended to ``benchmarks/results/<config>-runs-<time>.jsonl``
(deleted once the page is written). ``--reuse`` of that file (or of a gzipped copy,
``.jsonl.gz``) resumes an interrupted benchmark, provided ``newt/`` and ``benchmarks/``
are as they were when it started; the resumed run's own log starts with the runs it
took from the old one, so a run interrupted again resumes from its newest log alone::

    python -m benchmarks.run --full --reuse benchmarks/results/full-runs-20261205T013000.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import gzip
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from benchmarks import report
from benchmarks.analysis import Summary, summarise
from benchmarks.cost import measure_cost
from benchmarks.harness import Budget, Run, run_one
from benchmarks.methods import INNER, MODES, Method, catalog, missing_peers
from newt.problems import PROBLEMS, get_problem
from newt.rule import GATED_START

GRID = tuple(10.0**k for k in range(-6, 1))  # 1e-6 … 1, one per decade
TRACE_XS = (1e-4, 1e-2, 1.0)  # initial lrs shown in the α-trace figure
TRACES = (("digits_mlp", ("SGD", "Adam", "AdamW")), ("byte_lm", ("AdamW",)))  # α-trace figures
ROOT = Path(__file__).resolve().parent.parent
LONG = 3  # the long budget of a stochastic problem, × the short one
LONG_SUFFIX = "-long"  # a long-budget row's problem label: "digits_mlp-long"
# Problems where every method is compared with one inner optimizer's sweeps, and only
# that inner optimizer's rows (and the peers) run: the language model is an AdamW workload.
PROBLEM_INNER = {"byte_lm": "AdamW"}
CHECKPOINTS = {"byte_lm": 10}  # trace points per run where a measurement is expensive
# relative cost of a step (for ordering tasks and nothing else)
_WEIGHT = {"digits_mlp": 3.0, "digits_cnn": 8.0, "quadratic_deep": 1.5, "byte_lm": 150.0}


@dataclass(frozen=True)
class Config:
    """A benchmark size: problems with their short budgets (gradient evaluations), which
    budgets run (``"short"``, ``"long"``: ``LONG`` × short, stochastic problems only), seeds,
    cost runs."""

    name: str
    budgets: dict[str, int]
    budget_sets: tuple[str, ...]
    seeds: int
    cost_problems: tuple[str, ...]
    cost_rounds: int
    equal_steps: bool
    notes: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()  # method globs left out unless --methods is given


STANDARD_VARIANTS = '{"gated": {"controller": "gated"}, "newton": {"controller": "newton"}}'
"""The newt variants of every standard run, next to the default (``controller="auto"``):
the gated controller on every problem, and the Newton rule from the first step, the
default before H36 (docs/design/alpha.md, H15 and H36)."""

QUICK = Config(
    name="quick",
    budgets={"rosenbrock": 400, "quadratic_1e4": 300, "breast_cancer_logreg": 300,
             "quadratic_deep": 350, "digits_mlp": 220},
    budget_sets=("short",),
    seeds=2,
    cost_problems=("breast_cancer_logreg", "digits_mlp"),
    cost_rounds=5,
    equal_steps=False,
    exclude=("*newt-seed*", "*newt[closure]+cos", "*newt[reuse]+cos", "D-Adapt Adam+cos", "DoG",
             "*newt:gated[closure]*", "*newt:gated[reuse]*", "*newt:gated[free]+cos",
             "*newt:newton[reuse]*", "*newt:newton[*]+cos"),
    notes=("QUICK run: 5 of the 13 problems, shortened budgets (quadratic_deep 50 epochs "
           "instead of 100, digits MLP 20 epochs), no long budgets, 2 seeds on stochastic "
           "problems, no equal-steps column (`--equal-steps` adds it). `--full` runs the whole "
           "protocol.",),
)
FULL = Config(
    name="full",
    budgets={"rosenbrock": 2000, "beale": 1000, "booth": 500, "himmelblau": 1000,
             "quadratic_1e2": 500, "quadratic_1e4": 1000, "quadratic_1e6": 1000,
             "breast_cancer_logreg": 1000, "quadratic_deep": 700, "digits_logreg": 550,
             "digits_mlp": 550, "digits_cnn": 330, "byte_lm": 300},
    budget_sets=("short", "long"),
    seeds=3,
    cost_problems=("breast_cancer_logreg", "digits_mlp", "digits_cnn"),
    cost_rounds=9,
    equal_steps=True,
)
FULL_TIME_NOTE = ("`--full` before the cosine rows, long budgets and byte_lm (12 problems; "
                  "digits 50 epochs, CNN 30, quadratic_deep 100; 3 seeds; equal-steps column) "
                  "took 21.8 min with 2 worker processes on this 2-core machine (2026-11-23, "
                  "commit e7acd3f); `python -m benchmarks.run --full --estimate` estimates "
                  "the current one.")
HOWTO = [
    "python -m benchmarks.run --quick        # the quick version of this page",
    "python -m benchmarks.run --full         # the whole protocol",
    "python -m benchmarks.run --full --estimate   # its duration, from one short run per method",
    "python -m benchmarks.run --problems byte_lm,digits_mlp --budgets short --seeds 1 \\",
    "    --methods 'AdamW+newt[free]*,Prodigy*'   # a subset (baselines always run)",
    "# tune newt: override its defaults, or add variants next to them; earlier runs",
    "# are reused and the page goes to benchmarks/results/report-quick.md",
    "python -m benchmarks.run --quick --reuse benchmarks/results/quick-latest.json \\",
    "    --methods '*newt*' --presets default \\",
    "    --newt-variants '{\"g03\": {\"gamma\": 0.3}, \"lin\": {\"update\": \"linear\"}}'",
    "# one run from Python: benchmarks.harness.run_one(problem, method, x, seed, budget)",
]
COMMON_NOTE = ("Deterministic problems run one seed: nothing in them is random (fixed start, "
               "full batch), so further seeds repeat the same run bit for bit.")


# ---------------------------------------------------------------- tasks
Task = tuple[str, Method, float, int, Budget]  # (problem label, method, x, seed, budget)


def problem_of(label: str) -> str:
    """The problem a row label names: ``"digits_mlp-long"`` -> ``"digits_mlp"``."""
    return label.removesuffix(LONG_SUFFIX) if label not in PROBLEMS else label


def expand_budgets(budgets: dict[str, int], sets: tuple[str, ...]) -> dict[str, int]:
    """Row labels and their budgets: ``"short"`` as given, ``"long"`` (``LONG`` × short,
    label ``<problem>-long``) for the stochastic problems."""
    unknown = set(sets) - {"short", "long"}
    if unknown or not sets:
        raise ValueError(f"budgets={sorted(sets)}: use 'short', 'long' or 'short,long'")
    out: dict[str, int] = {}
    for name, evals in budgets.items():
        if "short" in sets or not get_problem(name).stochastic:
            out[name] = evals
        if "long" in sets and get_problem(name).stochastic:
            out[name + LONG_SUFFIX] = LONG * evals
    return out


def applies(method: Method, problem: str) -> bool:
    """Whether ``method`` runs on ``problem`` (a name, not a label)."""
    if method.deterministic_only and get_problem(problem).stochastic:
        return False
    only = PROBLEM_INNER.get(problem)
    if only is not None and method.kind != "peer":
        return method.inner == only
    return True


def _task_key(problem: str, method_key: str, x: float, seed: int, budget: dict[str, Any]) -> str:
    return json.dumps([problem, method_key, x, seed, budget["evals"], budget["steps"]])


def _per(value: Any, label: str) -> Any:
    """``value[label]`` for a per-row dict, else ``value`` itself."""
    return value[label] if isinstance(value, dict) else value


def _tasks(problems: dict[str, int], methods: list[Method], seeds: int | dict[str, int],
           equal_steps: bool | dict[str, bool]) -> list[Task]:
    """Every run: ``seeds`` and ``equal_steps`` may be given per row label."""
    tasks = []
    for label, evals in problems.items():
        name = problem_of(label)
        stochastic = get_problem(name).stochastic
        for method in methods:
            if not applies(method, name):
                continue
            xs = GRID if method.swept else (1.0,)
            for seed in range(_per(seeds, label) if stochastic else 1):
                budget = Budget(evals, evals if _per(equal_steps, label) else None,
                                checkpoints=CHECKPOINTS.get(name, 40))
                tasks.extend((label, method, x, seed, budget) for x in xs)
    # longest first, so that two workers finish together
    return sorted(tasks, key=lambda t: -t[4].evals * _WEIGHT.get(problem_of(t[0]), 1.0)
                  * (2 if t[1].mode == "closure" else 1))


def _shared(task: Task) -> Task:
    """The task whose run stands for ``task``: the runs of a start-invariant method
    (:meth:`Method.start_invariant`) at every lr ≥ ``GATED_START`` are one run, at the
    grid's smallest such lr."""
    label, method, x, seed, budget = task
    if x >= GATED_START and method.start_invariant(get_problem(problem_of(label)).stochastic):
        return label, method, min(g for g in GRID if g >= GATED_START), seed, budget
    return task


def _key_of(task: Task) -> str:
    return _task_key(task[0], task[1].key(), task[2], task[3], vars(task[4]))


def _init_worker() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def _work(task: Task) -> dict[str, Any]:
    """One run as a dict; a run that raises is returned with its ``error`` instead."""
    label, method, x, seed, budget = task
    try:
        result = run_one(problem_of(label), method, x, seed, budget).to_dict()
        result["problem"] = label
        return result
    except Exception as error:  # one broken method must not stop the benchmark
        problem, method, x, seed, _ = task
        return {"problem": problem, "method": method.name, "x": x, "seed": seed,
                "error": f"{type(error).__name__}: {error}"}


def _run_tasks(tasks: list[Task], workers: int,
               log: Path | None = None) -> list[dict[str, Any]]:
    """Every task's run, in order; each successful one also appended to ``log`` (a line
    of JSON) as it finishes."""
    def logged(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for result in tqdm(results, total=len(tasks), desc="runs", unit="run", mininterval=2):
            if log is not None and "error" not in result:
                with log.open("a") as file:
                    file.write(json.dumps(result) + "\n")
            out.append(result)
        return out

    if workers <= 1:
        _init_worker()
        return logged(map(_work, tasks))
    with multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        return logged(pool.imap(_work, tasks))


# ---------------------------------------------------------------- selection
def _matches(name: str, pattern: str) -> bool:
    """``fnmatch`` glob, where ``[...]`` also matches literally (``'Adam+newt[free]*'``)."""
    return (fnmatch.fnmatchcase(name, pattern)
            or fnmatch.fnmatchcase(name, pattern.replace("[", "[[]")))


def _select_methods(args: argparse.Namespace,
                    config: Config | None = None) -> tuple[list[Method], list[str]]:
    notes = []
    if args.newt_options:
        notes.append(f"The `newt` rows use the default preset with `{args.newt_options}`.")
    variants = json.loads(args.newt_variants) if args.newt_variants else None
    if variants:
        notes.append(f"`newt:label` rows are variants of the default preset: "
                     f"`{args.newt_variants}`"
                     + (" (the standard variants: the gated controller on every problem, "
                        "and the Newton rule from the first step; the default, `auto`, runs "
                        "the gated controller and hands over to the Newton rule where the "
                        "gradients show no batch noise)."
                        if args.newt_variants == STANDARD_VARIANTS else "."))
    methods = catalog(
        newt_options=json.loads(args.newt_options) if args.newt_options else None,
        variants=variants,
        inners=args.inners.split(","),
        modes=args.modes.split(","),
        presets=args.presets.split(","),
        schedules=tuple("" if s == "none" else s for s in args.schedules.split(",")),
    )
    if args.methods:
        patterns = args.methods.split(",")
        methods = [m for m in methods
                   if m.kind == "fixed" or any(_matches(m.name, p) for p in patterns)]
    if args.exclude:
        patterns = args.exclude.split(",")
        methods = [m for m in methods
                   if m.kind == "fixed" or not any(_matches(m.name, p) for p in patterns)]
    elif not args.methods and config is not None and config.exclude:
        methods = [m for m in methods
                   if m.kind == "fixed" or not any(_matches(m.name, p) for p in config.exclude)]
        notes.append(f"Rows left out of the {config.name} run (`--methods '*'` runs them): "
                     f"{', '.join(f'`{p}`' for p in config.exclude)}.")
    missing = missing_peers()
    if missing:
        notes.append(f"Skipped (package not installed): {', '.join(missing)}; "
                     "`pip install newt[bench]` installs them.")
        methods = [m for m in methods if m.peer not in missing]
    return methods, notes


def _describe(label: str, evals: int, seeds: int) -> dict[str, Any]:
    problem = get_problem(problem_of(label))
    if problem.name == "byte_lm":
        from newt.problems import LM_FILES, lm_corpus

        train, held_out, digest = lm_corpus()
        epochs = evals / problem.steps_per_epoch
        text = (f"Byte-level transformer LM (2 layers, width 64, 4 heads, context 64, batch 32) "
                f"on the source of {len(LM_FILES)} standard-library modules "
                f"({len(train) + len(held_out)} bytes, SHA-256 {digest[:12]}…; every tenth "
                f"4 KiB block held out); budget {evals} gradient evaluations ({epochs:.1f} "
                f"epochs at one per step); seeds 0–{seeds - 1}. Judged on the held-out loss "
                f"(nats/byte); the comparison is the **excess** over the tuned baseline in "
                f"nats, every method against AdamW (weight decay 0.01) or AdamW+cos.")
        return {"description": text, "test": "loss"}
    if problem.stochastic:
        epochs = evals / problem.steps_per_epoch
        batch = len(next(problem.batches(0))[0])
        text = (f"Stochastic (batch {batch}, {problem.steps_per_epoch} steps/epoch); "
                f"budget {evals} gradient evaluations ({epochs:.0f} epochs at one per step); "
                f"seeds 0–{seeds - 1}.")
    else:
        text = f"Deterministic (full batch, float64); budget {evals} gradient evaluations."
    text += f" f* = {problem.f_star:.10g}." if problem.f_star is not None else " f* unknown."
    test = "accuracy" if problem.test_accuracy else ("loss" if problem.test_loss else None)
    return {"description": text, "test": test}


# ---------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="config", const="quick",
                      help="a few minutes: 5 problems, short budgets (default)")
    size.add_argument("--full", action="store_const", dest="config", const="full",
                      help="every problem of the protocol, 3 seeds")
    parser.add_argument("--problems", help=f"comma-separated subset of {sorted(PROBLEMS)}")
    parser.add_argument("--budgets", help="'short', 'long' or 'short,long' (long: "
                        f"{LONG}× on stochastic problems; default: short for --quick, both for "
                        "--full)")
    parser.add_argument("--schedules", default="none,cosine",
                        help="'none', 'cosine' or 'none,cosine': which schedules the fixed-LR, "
                        "newt and peer rows run with")
    parser.add_argument("--estimate", action="store_true",
                        help="time one shortened run per (problem, method) and print how long "
                        "the selected benchmark takes, without running it")
    parser.add_argument("--estimate-fraction", type=float, default=0.1,
                        help="budget fraction of the timed runs of --estimate")
    parser.add_argument("--methods", help="comma-separated name globs, e.g. 'Adam+newt*,Prodigy' "
                        "(the fixed-LR baselines are always run)")
    parser.add_argument("--exclude", help="comma-separated name globs to leave out, e.g. "
                        "'*newt-seed*,DoG' (replaces the --quick default exclusions)")
    parser.add_argument("--inners", default=",".join(INNER), help="inner optimizers")
    parser.add_argument("--modes", default=",".join(MODES), help="newt modes")
    parser.add_argument("--presets", default="default,seed", help="newt presets")
    parser.add_argument("--newt-options", help="JSON overrides of newt's default preset, "
                        "e.g. '{\"gamma\": 0.3, \"update\": \"linear\"}'")
    parser.add_argument("--newt-variants", default=STANDARD_VARIANTS,
                        help="JSON {label: options}: extra newt rows (default %(default)s: "
                        "the gated controller on every problem, and the Newton rule from the "
                        "first step), e.g. '{\"g03\": {\"gamma\": 0.3}}'; '{}' for none; "
                        "the key \"average\": γ measures a variant at DoG's polynomial-decay "
                        "iterate average")
    parser.add_argument("--seeds", type=int, help="seeds per point on stochastic problems")
    parser.add_argument("--long-seeds", type=int, help="seeds per point on the long-budget rows "
                        "(default: --seeds)")
    parser.add_argument("--equal-steps", action=argparse.BooleanOptionalAction,
                        help="also run two-evaluation methods to the one-evaluation methods' "
                        "step count (default: on for --full, off for --quick)")
    parser.add_argument("--long-equal-steps", action=argparse.BooleanOptionalAction,
                        help="the equal-steps column on the long-budget rows (default: as "
                        "--equal-steps)")
    parser.add_argument("--budget-scale", type=float, default=1.0,
                        help="multiply every budget (e.g. 0.5 for a faster look)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--reuse", type=Path, help="earlier results JSON to take runs from")
    parser.add_argument("--no-cost", action="store_true", help="skip the time/memory measurement")
    parser.add_argument("--out", type=Path, help="directory for the page and plots "
                        "(default: docs/, or benchmarks/results/ for a selection)")
    return parser


def _newt_revision() -> str:
    """The commit newt was measured at, flagged when newt/ has uncommitted changes."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                check=False)
        return result.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes in newt/" if git("status", "--porcelain", "newt")
                     else "")


def _code_revision() -> str:
    """What a run log's runs depend on: the git trees of ``newt/`` and ``benchmarks/``
    (unchanged by commits elsewhere), flagged when either has uncommitted changes."""
    result = subprocess.run(["git", "rev-parse", "HEAD:newt", "HEAD:benchmarks"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "newt", "benchmarks"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    trees = "/".join(line[:10] for line in result.stdout.split()) or "unknown"
    return trees + (" + uncommitted changes" if dirty else "")


def _is_selection(args: argparse.Namespace) -> bool:
    """Whether the run deviates from the standard --quick/--full comparison."""
    defaults = _parser().parse_args([])
    return any(getattr(args, name) != getattr(defaults, name) for name in (
        "problems", "methods", "inners", "modes", "presets", "newt_options", "newt_variants",
        "seeds", "budget_scale", "equal_steps", "budgets", "schedules", "exclude",
        "long_seeds", "long_equal_steps"))


def sweep(budgets: dict[str, int], methods: list[Method], seeds: int | dict[str, int] = 2,
          workers: int = 2, equal_steps: bool | dict[str, bool] = False,
          reuse: Path | None = None, log: Path | None = None,
          ) -> tuple[list[dict[str, Any]], list[Summary]]:
    """Run ``methods`` on ``budgets`` (problem label -> gradient evaluations) over the lr grid.

    For tuning from Python, e.g. comparing newt options on two problems::

        methods = catalog(inners=["Adam"], modes=["free"], presets=["default"],
                          variants={"g03": {"gamma": 0.3}, "fmax4": {"factor_max": 4}})
        runs, summaries = sweep({"digits_mlp": 220, "quadratic_deep": 350}, methods)
        for s in summaries:
            print(s.problem, s.method, s.width, s.median)

    Returns the runs (dicts; failed ones carry ``error``) and their summaries; ``log``
    names a file each computed run is appended to (`_collect_runs`).
    """
    runs = _collect_runs(_tasks(budgets, methods, seeds, equal_steps), reuse, workers, log)
    ok = [r for r in runs if "error" not in r]
    return runs, summarise_runs(ok, methods, budgets)


def summarise_runs(runs: list[dict[str, Any]], methods: list[Method],
                   budgets: dict[str, int]) -> list[Summary]:
    """:func:`~benchmarks.analysis.summarise` with each method's baseline and each row's metric."""
    return summarise(
        runs, {m.name: m.inner for m in methods}, {m.name: m.baseline for m in methods},
        problem_baseline={label: PROBLEM_INNER[problem_of(label)] for label in budgets
                          if problem_of(label) in PROBLEM_INNER},
        excess=[label for label in budgets if get_problem(problem_of(label)).excess])


def estimate(budgets: dict[str, int], methods: list[Method], seeds: int | dict[str, int],
             workers: int, equal_steps: bool | dict[str, bool], fraction: float = 0.1) -> float:
    """Minutes the sweep would take: one run per (row, method) at ``fraction`` of its budget
    (x = 1e-3, seed 0); its set-up time (model, optimizer, first measurement) plus its
    training time scaled to the whole budget, times the row's number of runs.

    Diverging runs stop early, so this errs on the long side; the cost measurement is not
    included. Prints one line per row and writes the timings to
    ``benchmarks/results/estimate-<runs>-runs.json``.
    """
    tasks = _tasks(budgets, methods, seeds, equal_steps)
    groups: dict[tuple[str, str], list[Task]] = {}
    for task in tasks:
        groups.setdefault((task[0], task[1].name), []).append(task)
    _init_worker()
    per_row: dict[str, float] = {}
    per_method: list[dict[str, Any]] = []
    for (label, _), group in tqdm(groups.items(), desc="timing", unit="method"):
        _, method, _, _, budget = group[0]
        problem = get_problem(problem_of(label))
        short = Budget(max(4, round(budget.evals * fraction)),
                       max(4, round(budget.steps * fraction)) if budget.steps else None,
                       checkpoints=max(1, round(budget.checkpoints * fraction)))
        start = time.perf_counter()
        run = Run(problem, method, 1e-3 if method.swept else 1.0, 0,
                  horizon=max(1, budget.evals // method.evals_per_step))
        setup = time.perf_counter() - start
        start = time.perf_counter()
        (run.train_lbfgs if method.mode == "lbfgs" else run.train)(short)
        train = (time.perf_counter() - start) * budget.evals / short.evals
        distinct = len({_key_of(_shared(t)) for t in group})
        per_row[label] = per_row.get(label, 0.0) + (setup + train) * distinct
        per_method.append({"row": label, "method": method.name, "runs": distinct,
                           "seconds_per_run": setup + train})
    for label, seconds in per_row.items():
        runs = sum(m["runs"] for m in per_method if m["row"] == label)
        print(f"{label:26s} {runs:6d} runs  {seconds / 60 / workers:7.1f} min", file=sys.stderr)
    total = sum(per_row.values()) / 60 / workers
    out = ROOT / "benchmarks" / "results" / f"estimate-{len(tasks)}-runs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workers": workers, "total_minutes": total, "rows": per_method,
                               "load_average": os.getloadavg()}, indent=1))
    print(f"{'total':26s} {sum(m['runs'] for m in per_method):6d} runs  {total:7.1f} min with "
          f"{workers} worker(s)", file=sys.stderr)
    return total


def _is_run_log(path: Path) -> bool:
    """Whether ``path`` names a run log (``.jsonl``, or gzipped ``.jsonl.gz``)."""
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _reusable(path: Path) -> list[dict[str, Any]]:
    """The runs of an earlier results JSON, or of a run log (``.jsonl``: a header line with
    `_code_revision`, then one run per line, the last perhaps cut off by an interruption).
    A log written with other code in newt/ or benchmarks/ is refused: its runs are not
    this code's."""
    if not _is_run_log(path):
        return list(json.loads(path.read_text())["runs"])
    opened = gzip.open(path, "rt") if path.suffix == ".gz" else path.open()
    with opened as file:
        header, *lines = file.read().splitlines()
    written, now = json.loads(header)["code"], _code_revision()
    if written != now:
        raise SystemExit(f"--reuse {path}: its runs are of newt/ and benchmarks/ at {written}, "
                         f"these are at {now}; start afresh, or reuse a results JSON on purpose")
    runs = []
    for number, line in enumerate(lines):
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise
    return runs


def _collect_runs(tasks: list[Task], reuse: Path | None, workers: int,
                  log: Path | None = None) -> list[dict[str, Any]]:
    """Runs for ``tasks``: from ``reuse`` (`_reusable`) where possible, else computed
    and appended to ``log``, after a header line with `_code_revision` and the runs taken
    from ``reuse`` if it is a run log of this code (so ``log`` alone holds every run so
    far; a results JSON's runs may be of other code and are not copied)."""
    cached: dict[str, dict[str, Any]] = {}
    carried: list[dict[str, Any]] = []
    if reuse:
        for run in _reusable(reuse):
            key = _task_key(run["problem"], run["method_key"], run["x"], run["seed"],
                            run["budget"])
            if key not in cached and _is_run_log(reuse):
                carried.append({k: v for k, v in run.items() if k != "reused_from"})
            cached[key] = {**run, "reused_from": reuse.name}
    keys = [_key_of(t) for t in tasks]
    runs = [cached[k] for k in keys if k in cached]
    todo = [t for t, k in zip(tasks, keys, strict=True) if k not in cached]
    # a start-invariant run found in ``reuse`` (a run log holds only the shared run)
    # stands for the other lrs as well
    unique = {_key_of(_shared(t)): _shared(t) for t in todo
              if _key_of(_shared(t)) not in cached}
    print(f"{len(tasks)} runs, {len(tasks) - len(todo)} reused, {len(todo) - len(unique)} "
          f"shared (start-invariant) or reused, {workers} worker(s)", file=sys.stderr)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(json.dumps(line) + "\n"
                               for line in [{"code": _code_revision()}, *carried]))
        print(f"runs are logged to {log} as they finish (--reuse it to resume)",
              file=sys.stderr)
    done = {**cached, **dict(zip(unique, _run_tasks(list(unique.values()), workers, log),
                                 strict=True))}
    for task in todo:
        run = done[_key_of(_shared(task))]
        runs.append(run if run["x"] == task[2] else _as_run_at(run, task[2]))
    return runs


def _as_run_at(run: dict[str, Any], x: float) -> dict[str, Any]:
    """A start-invariant method's ``run`` as its run at lr ``x``: only the lr the optimizer
    was built with (the initial record, step 0 of the traces) differs; ``shared_x`` names
    the lr it ran at."""
    out = {**run, "x": x, "shared_x": run["x"]}
    steps = run.get("lr_steps")
    if steps and steps[0][0] == 0:
        out["lr_steps"] = [(0, x), *steps[1:]]
    if isinstance(run.get("initial"), dict) and "lr" in run["initial"]:
        out["initial"] = {**run["initial"], "lr": x}
    trace = run.get("trace")
    if trace and trace.get("evals", [None])[0] == 0 and trace.get("lr"):
        out["trace"] = {**trace, "lr": [x, *trace["lr"][1:]]}
    return out


def _kind_of(methods: list[Method], name: str) -> str | None:
    """The kind of the method called ``name`` (``None`` if there is none)."""
    return next((m.kind for m in methods if m.name == name), None)


def _plots(runs: list[dict[str, Any]], summaries: list[Any], methods: list[Method],
           budgets: dict[str, int], img_dir: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    method_index = {m.name: m for m in methods}
    for name, evals in budgets.items():
        images[name] = img_dir / f"bench_{name}.png"
        report.plot_sweeps(summaries, method_index, name, f"{name}: {evals} gradient evaluations",
                           images[name])
    traced = [(name + suffix, inners) for name, inners in TRACES for suffix in ("", LONG_SUFFIX)]
    for label, trace_inners in traced:
        if label not in budgets:
            continue
        tuned_x = {s.method: s.best_x for s in summaries
                   if s.problem == label and _kind_of(methods, s.method) == "fixed"}
        for mode in ("closure", "free"):
            inners = [inner for inner in trace_inners if any(
                m.kind == "newt" and m.newt_mode == mode and m.inner == inner for m in methods)]
            if inners:
                path = img_dir / f"bench_{label}_traces_{mode}.png"
                images[f"traces:{label}, newt[{mode}]"] = path
                report.plot_lr_traces(runs, label, mode, TRACE_XS, tuned_x, path,
                                      inners=inners)
    return images


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = FULL if args.config == "full" else QUICK
    selection = _is_selection(args)
    budgets = {name: max(2, round(evals * args.budget_scale))
               for name, evals in config.budgets.items()}
    if args.problems:
        unknown = sorted(set(args.problems.split(",")) - set(PROBLEMS))
        if unknown:
            raise SystemExit(f"--problems: unknown {unknown}; choose from {sorted(PROBLEMS)}")
        budgets = {name: budgets.get(name, round(FULL.budgets[name] * args.budget_scale))
                   for name in args.problems.split(",")}
    budget_sets = tuple(args.budgets.split(",")) if args.budgets else config.budget_sets
    budgets = expand_budgets(budgets, budget_sets)
    seeds = args.seeds or config.seeds
    seeds_of = {label: args.long_seeds if label.endswith(LONG_SUFFIX) and args.long_seeds
                else seeds for label in budgets}
    methods, notes = _select_methods(args, config)
    equal_steps = config.equal_steps if args.equal_steps is None else args.equal_steps
    equal_steps_of = {label: args.long_equal_steps if label.endswith(LONG_SUFFIX)
                      and args.long_equal_steps is not None else equal_steps
                      for label in budgets}
    if args.estimate:
        torch.set_num_threads(1)
        estimate(budgets, methods, seeds_of, args.workers, equal_steps_of,
                 args.estimate_fraction)
        return
    results_dir = ROOT / "benchmarks" / "results"
    out_dir = args.out or (results_dir if selection else ROOT / "docs")
    page = out_dir / ("benchmarks.md" if out_dir == ROOT / "docs" else f"report-{config.name}.md")
    torch.set_num_threads(1)

    start = time.perf_counter()
    tag = config.name + ("-selection" if selection else "")
    log = results_dir / f"{tag}-runs-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}.jsonl"
    runs, summaries = sweep(budgets, methods, seeds_of, args.workers, equal_steps_of,
                            args.reuse, log)
    cost_rows: list[dict[str, Any]] = []
    if not args.no_cost:
        cost_problems = [p for p in config.cost_problems if p in budgets] or list(budgets)[:1]
        for name in tqdm(cost_problems, desc="cost", unit="problem"):
            cost_rows += measure_cost(name, inners=("SGD", "Adam"), rounds=config.cost_rounds)
    wall = (time.perf_counter() - start) / 60

    failed = [r for r in runs if "error" in r]
    runs = [r for r in runs if "error" not in r]
    reused = sum("reused_from" in r for r in runs)
    if reused:
        notes.append(f"{reused} of the {len(runs)} runs were taken from `{args.reuse.name}` "
                     "(`--reuse`), not run again.")
    for method, error in sorted({(r["method"], r["error"]) for r in failed}):
        count = sum(r["method"] == method for r in failed)
        notes.append(f"{count} run(s) of {method} failed: `{error}`")
    stamp = dt.datetime.now(dt.timezone.utc)
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {
        "command": command.strip(),
        "date": stamp.strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "newt": _newt_revision(),
        "python": platform.python_version(),
        "machine": f"{platform.platform()} ({platform.machine()})",
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "wall_minutes": wall,
        "grid": GRID,
        "config": config.name,
        "budgets": budgets,
        "seeds": seeds_of,
        "newt_options": args.newt_options,
        "newt_variants": args.newt_variants,
        "notes": [*config.notes, COMMON_NOTE, *notes, FULL_TIME_NOTE],
        "howto": HOWTO,
        "methods": [m.name for m in methods],
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    raw = results_dir / f"{tag}-{stamp.strftime('%Y%m%dT%H%M%S')}.json"
    raw.write_text(json.dumps({"meta": meta, "runs": runs, "failed": failed, "cost": cost_rows}))
    shutil.copyfile(raw, results_dir / f"{tag}-latest.json")

    images = _plots(runs, summaries, methods, budgets, out_dir / "img")
    problem_info = {name: _describe(name, evals, seeds_of[name])
                    for name, evals in budgets.items()}
    report.write_markdown(page, meta, summaries, problem_info, cost_rows, images)
    log.unlink(missing_ok=True)  # every run is in ``raw`` now
    print(f"wrote {page}, {len(images)} plots in {out_dir / 'img'}, raw runs in {raw} "
          f"({wall:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
