"""The benchmark's pieces: the language-model problem, the cosine schedule, the peers'
recommended set-ups, the excess-loss metric and the budgets (fast: tiny budgets only)."""

from __future__ import annotations

import gzip
import itertools
import math
import pickle
from pathlib import Path

import pytest
import torch

from benchmarks.analysis import GOOD_EXCESS, compare, summarise
from benchmarks.harness import Budget, Run, run_one
from benchmarks.methods import PEERS, Method, catalog, warmup_cosine
from benchmarks.run import LONG, applies, expand_budgets, problem_of, summarise_runs
from newt.problems import byte_lm, get_problem, lm_corpus


# ---------------------------------------------------------------- byte_lm
@pytest.fixture(scope="module")
def lm():
    return get_problem("byte_lm")


def test_lm_corpus_split_is_a_tenth_and_deterministic():
    train, held_out, digest = lm_corpus()
    assert train.dtype == held_out.dtype == torch.uint8
    assert 0.09 < len(held_out) / (len(train) + len(held_out)) < 0.11
    assert len(train) + len(held_out) > 300_000
    lm_corpus.cache_clear()
    train2, held_out2, digest2 = lm_corpus()
    assert digest2 == digest and torch.equal(train, train2) and torch.equal(held_out, held_out2)


def test_lm_builds_with_the_specified_shape(lm):
    model = lm.init(0)
    (batch,) = next(lm.batches(0))
    assert batch.shape == (32, 65)  # batch 32, context 64 (+1 for the targets)
    blocks = model.blocks.layers
    assert len(blocks) == 2 and model.embed.embedding_dim == 64
    assert lm.stochastic and lm.objective == "test" and lm.excess
    # a fresh model predicts nearly uniformly over the 256 bytes
    assert abs(lm.test_loss(model) - math.log(256)) < 0.3
    assert lm.objective_value(model) == lm.test_loss(model)


def test_lm_batches_are_seeded(lm):
    a, b, c = lm.batches(1), lm.batches(1), lm.batches(2)
    first = next(a)[0]
    assert torch.equal(first, next(b)[0])
    assert not torch.equal(first, next(c)[0])
    assert torch.equal(lm.init(3).head.weight, lm.init(3).head.weight)


def test_lm_trains_with_adamw():
    problem = byte_lm(width=64, context=64, eval_windows=16)
    model = problem.init(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    before = problem.test_loss(model)
    batches = problem.batches(0)
    for _ in range(25):
        optimizer.zero_grad()
        problem.loss(model, next(batches)).backward()
        optimizer.step()
    after = problem.test_loss(model)
    assert after < before - 1.0  # byte frequencies alone take off well over a nat


def test_lm_runs_in_the_harness_and_reports_held_out_loss(lm):
    adamw_newt = next(m for m in catalog(inners=["AdamW"], modes=["free"], presets=["default"])
                      if m.name == "AdamW+newt[free]")
    result = run_one(lm, adamw_newt, x=1e-3, seed=0, budget=Budget(4, checkpoints=2))
    assert result.at_evals["evals"] == 4
    assert result.at_evals["subopt"] == result.at_evals["test_loss"]
    assert math.isfinite(result.at_evals["subopt"])


# ---------------------------------------------------------------- the cosine schedule
def test_warmup_cosine_shape():
    total = 200
    factors = [warmup_cosine(t, total) for t in range(total + 1)]
    warmup = round(0.05 * total)
    # linear warmup from 1/w to 1 over the first 5% of the steps
    assert factors[:warmup] == pytest.approx([(t + 1) / warmup for t in range(warmup)])
    assert max(factors) == 1.0 and factors[warmup] == 1.0
    # then a cosine down to 0, reached after the last step: half way it is 1/2
    decay = factors[warmup:]
    assert all(a >= b for a, b in itertools.pairwise(decay))
    assert factors[warmup + (total - warmup) // 2] == pytest.approx(0.5)
    assert factors[total] == 0.0 and 0 < factors[total - 1] < 1e-3
    assert warmup_cosine(total + 5, total) == 0.0
    with pytest.raises(ValueError, match="total"):
        warmup_cosine(0, 0)


@pytest.mark.parametrize("name", ["Adam+cos", "Adam+newt[closure]+cos", "Adam+newt[free]+cos",
                                  "Prodigy+cos"])
def test_cosine_rows_follow_the_schedule_over_their_steps(name):
    """The schedule spans the steps at the evaluation budget (half of them with a closure)
    and scales the step: lr for a fixed row and the peers, the learned α for newt."""
    method = next(m for m in catalog(inners=["Adam"], presets=["default"]) if m.name == name)
    evals = 40
    horizon = evals // method.evals_per_step
    run = Run(get_problem("quadratic_1e2"), method, x=1e-3, seed=0, horizon=horizon)
    group = run.optimizer.param_groups[0]
    for step in range(1, horizon + 1):
        run.step()
        factor = warmup_cosine(step, horizon)
        if method.kind == "newt":
            assert run.optimizer.step_sizes[0] == pytest.approx(
                run.optimizer.alphas[0] * factor, rel=1e-12, abs=1e-300)
        else:
            assert group["lr"] == pytest.approx(group["initial_lr"] * factor)
    assert group["lr"] == 0.0  # decayed to 0 after the last step
    result = run_one("quadratic_1e2", method, x=1e-3, seed=0, budget=Budget(evals))
    assert result.lr_steps[-1] == (horizon, 0.0)


@pytest.mark.parametrize("schedule", ["", "cosine"])
@pytest.mark.parametrize("mode", ["free", "closure"])
@pytest.mark.parametrize("variant", ["gated", "default"])
def test_start_invariant_runs_do_not_depend_on_the_swept_lr(variant, schedule, mode):
    """The benchmark runs a start-invariant method once per seed (``benchmarks.run._shared``),
    so its run must be the same at every lr of the grid: the same final loss and α trace
    bit for bit, with and without the cosine schedule. The gated controller is, on every
    problem; the default (``auto``) is on stochastic ones."""
    import benchmarks.run as bench

    rows = [m for m in catalog(variants={"gated": {"controller": "gated"}}, inners=["Adam"],
                               modes=[mode], presets=["default"], schedules=[schedule])
            if m.kind == "newt" and m.variant == ("" if variant == "default" else variant)]
    assert len(rows) == 1
    method = rows[0]
    assert method.start_invariant(stochastic=True)
    assert method.start_invariant(stochastic=False) is (variant == "gated")
    budget = Budget(24)
    runs = [run_one("quadratic_deep", method, x, seed=1, budget=budget) for x in (1e-6, 1.0)]
    assert runs[0].at_evals == runs[1].at_evals
    # only the lr the optimizer was built with (step 0 of the traces) differs, and
    # benchmarks.run._as_run_at rewrites exactly that
    assert [r.lr_steps[0] for r in runs] == [(0, 1e-6), (0, 1.0)]
    assert [r.trace["lr"][0] for r in runs] == [1e-6, 1.0]
    assert bench._as_run_at(runs[0].to_dict(), 1.0) == {**runs[1].to_dict(), "shared_x": 1e-6,
                                                        "seconds": runs[0].seconds}


def test_only_the_gated_and_auto_controllers_are_start_invariant():
    rows = {m.name: m for m in catalog(variants={"newton": {"controller": "newton"},
                                                 "g0": {"gamma": 0.0}},
                                       inners=["Adam"], schedules=[""])}
    for name in ("Adam+newt:newton[free]", "Adam+newt-seed[closure]", "Adam+newt:g0[free]",
                 "Adam", "Prodigy"):
        assert not rows[name].start_invariant(stochastic=True)
        assert not rows[name].start_invariant(stochastic=False)
    assert rows["Adam+newt:g0[free]"].controller == "newton"  # γ = 0 freezes α at the lr
    assert rows["Prodigy"].controller is None


STOCHASTIC = ("quadratic_deep", "digits_logreg", "digits_mlp", "digits_cnn", "byte_lm")


@pytest.mark.parametrize("problem", STOCHASTIC)
def test_auto_ends_its_watch_at_the_first_measurement_on_every_stochastic_problem(problem):
    """What makes the default start-invariant on these problems: its first fresh
    measurement is noisy (|1 − B/A| ≥ AUTO_QUIET), for every inner optimizer, step mode
    and seed of the protocol, so it never hands over at the user's lr."""
    from newt.rule import GatedState

    assert get_problem(problem).stochastic
    for method in catalog(inners=["SGD", "SGDm", "Adam", "AdamW"], modes=["free", "closure"],
                          presets=["default"], schedules=[""]):
        if method.kind != "newt" or method.variant:
            continue
        for seed in range(3):
            run = Run(get_problem(problem), method, 1e-3, seed, horizon=100)
            for _ in range(2):  # the second step measures the first one's fresh slope
                run.step()
            states = [s.rule for s in run.optimizer._states]
            assert all(isinstance(s, GatedState) and s.watch is False for s in states), (
                method.name, seed)


def test_the_collector_runs_a_start_invariant_method_once_per_seed(monkeypatch):
    import benchmarks.run as bench

    gated = next(m for m in catalog(variants={"gated": {"controller": "gated"}}, inners=["SGD"],
                                    modes=["free"], presets=["default"], schedules=[""])
                 if m.variant == "gated")
    fixed = next(m for m in catalog(inners=["SGD"], schedules=[""]) if m.kind == "fixed")
    ran: list[tuple[str, float]] = []

    def fake(tasks, workers, log=None):
        ran.extend((t[1].name, t[2]) for t in tasks)
        return [{"problem": t[0], "method": t[1].name, "x": t[2], "seed": t[3],
                 "final": t[2] + t[3], "lr_steps": [(0, t[2]), (1, 1e-6)]} for t in tasks]

    monkeypatch.setattr(bench, "_run_tasks", fake)
    default = next(m for m in catalog(inners=["SGD"], modes=["free"], presets=["default"],
                                      schedules=[""]) if m.kind == "newt")
    tasks = bench._tasks({"quadratic_deep": 10}, [fixed, gated, default], seeds=2,
                         equal_steps=False)
    tasks += bench._tasks({"rosenbrock": 10}, [default], seeds=2, equal_steps=False)
    runs = bench._collect_runs(tasks, None, workers=1)
    # the default shares its runs on the stochastic problem only (one seed on rosenbrock)
    assert sorted(x for name, x in ran if name == default.name) == sorted(
        [1e-6, 1e-6, *bench.GRID])
    assert sorted(x for name, x in ran if name == gated.name) == [1e-6, 1e-6]  # once per seed
    assert len([x for name, x in ran if name == fixed.name]) == 2 * len(bench.GRID)
    shared = [r for r in runs if r["method"] == gated.name
              or (r["method"] == default.name and r["problem"] == "quadratic_deep")]
    assert sorted((r["seed"], r["x"]) for r in shared) == sorted(
        (seed, x) for seed in (0, 1) for x in bench.GRID for _ in (gated, default))
    assert all(r["final"] == 1e-6 + r["seed"] for r in shared)  # the seed's one run
    assert all(r.get("shared_x", r["x"]) == 1e-6 for r in shared)
    assert all(r["lr_steps"] == [(0, r["x"]), (1, 1e-6)] for r in shared)


def test_an_interrupted_benchmark_resumes_from_its_run_log(monkeypatch, tmp_path):
    """Each finished run is appended to the log; ``--reuse`` of the log runs only what is
    missing (a start-invariant method's one run stands for its lrs), tolerates a last line
    cut off by the interruption, starts its own log with the runs it took (a second
    interruption loses nothing), reads a gzipped log, and refuses a log of other code."""
    import benchmarks.run as bench

    gated = next(m for m in catalog(variants={"gated": {"controller": "gated"}}, inners=["SGD"],
                                    modes=["free"], presets=["default"], schedules=[""])
                 if m.variant == "gated")
    fixed = next(m for m in catalog(inners=["SGD"], schedules=[""]) if m.kind == "fixed")
    tasks = bench._tasks({"quadratic_deep": 10}, [fixed, gated], seeds=2, equal_steps=False)
    ran: list[tuple[str, float, int]] = []
    stop_after: list[int] = [5]

    def fake(task):
        if len(ran) == stop_after[0]:
            raise KeyboardInterrupt
        label, method, x, seed, budget = task
        ran.append((method.name, x, seed))
        return {"problem": label, "method": method.name, "method_key": method.key(), "x": x,
                "seed": seed, "budget": vars(budget), "final": x + seed}

    monkeypatch.setattr(bench, "_work", fake)
    monkeypatch.setattr(bench, "_code_revision", lambda: "abc1234")
    log = tmp_path / "quick-runs.jsonl"
    with pytest.raises(KeyboardInterrupt):
        bench._collect_runs(tasks, None, workers=1, log=log)
    assert len(log.read_text().splitlines()) == 1 + 5  # the header, then the 5 finished runs
    with log.open("a") as file:
        file.write('{"problem": "quadratic_de')  # a line cut off by the interruption
    first = list(ran)
    ran.clear()
    stop_after[0] = 3  # interrupted again: the second log holds the first log's runs too
    second = tmp_path / "quick-runs-2.jsonl"
    with pytest.raises(KeyboardInterrupt):
        bench._collect_runs(tasks, log, workers=1, log=second)
    assert len(second.read_text().splitlines()) == 1 + 5 + 3
    zipped = tmp_path / "quick-runs-2.jsonl.gz"  # a log kept compressed is read as well
    zipped.write_bytes(gzip.compress(second.read_bytes()))
    before = list(ran)
    ran.clear()
    stop_after[0] = 10**6
    runs = bench._collect_runs(tasks, zipped, workers=1)
    unique = len({bench._key_of(bench._shared(t)) for t in tasks})
    assert len(ran) == unique - 5 - 3 and not set(ran) & set(first + before)
    assert len(runs) == len(tasks)
    assert all(r["final"] == r.get("shared_x", r["x"]) + r["seed"] for r in runs)
    assert sum("reused_from" in r for r in runs) >= 8
    monkeypatch.setattr(bench, "_code_revision", lambda: "def5678")
    with pytest.raises(SystemExit, match="abc1234"):
        bench._collect_runs(tasks, log, workers=1)


# ---------------------------------------------------------------- peers
def test_catalog_rows_and_baselines():
    methods = {m.name: m for m in catalog()}
    for inner in ("SGD", "SGDm", "Adam", "AdamW"):
        assert methods[inner].baseline == inner
        assert methods[inner + "+cos"].baseline == inner + "+cos"
        assert methods[f"{inner}+newt[free]+cos"].baseline == inner + "+cos"
        assert f"{inner}+newt-seed[closure]+cos" not in methods
    assert {"Prodigy+cos", "D-Adapt Adam+cos", "DoG+avg"} <= set(methods)
    assert "DoG+cos" not in methods and "SF-AdamW+cos" not in methods
    assert methods["DoG+avg"].average == 8.0 and methods["Prodigy+cos"].baseline == "Adam+cos"
    assert methods["L-BFGS"].baseline is None
    assert all(pickle.loads(pickle.dumps(m)) == m for m in methods.values())
    unscheduled = catalog(schedules=[""])
    assert not any(m.schedule for m in unscheduled)
    with pytest.raises(ValueError, match="schedules"):
        catalog(schedules=["linear"])


def test_dog_avg_is_measured_at_the_averaged_weights():
    method = next(m for m in catalog(inners=["SGD"]) if m.name == "DoG+avg")
    problem = get_problem("breast_cancer_logreg")
    run = Run(problem, method, x=1e-4, seed=0, horizon=20)
    for _ in range(20):
        run.step()
    averaged = problem.train_loss(run.averager.averaged_model)
    assert run.measure()["loss"] == averaged != problem.train_loss(run.model)


def test_schedule_free_is_measured_at_its_averaged_point_and_trains_at_y():
    method = next(m for m in catalog(inners=["AdamW"]) if m.name == "SF-AdamW")
    problem = get_problem("quadratic_1e2")
    run = Run(problem, method, x=1e-2, seed=0, horizon=100)
    assert run.optimizer.param_groups[0]["warmup_steps"] == 5
    assert run.optimizer.param_groups[0]["weight_decay"] == 0.01
    for _ in range(10):
        run.step()
    at_y = problem.train_loss(run.model)
    point = run.measure()
    assert run.optimizer.param_groups[0]["train_mode"]  # back in training mode
    assert problem.train_loss(run.model) == at_y
    run.optimizer.eval()
    assert point["loss"] == problem.train_loss(run.model) != at_y


def test_peer_table_packages():
    assert all(len(spec) == 7 for spec in PEERS.values())
    prodigy = next(m for m in catalog(inners=["Adam"]) if m.name == "Prodigy+cos")
    run = Run(get_problem("booth"), prodigy, x=1e-6, seed=0, horizon=10)
    assert run.optimizer.param_groups[0]["safeguard_warmup"]


# ---------------------------------------------------------------- the excess-loss metric
def _run(problem: str, method: str, x: float, value: float, seed: int = 0) -> dict:
    point = {"subopt": value, "loss": value, "test_accuracy": None, "test_loss": value}
    return {"problem": problem, "method": method, "x": x, "seed": seed, "at_evals": point,
            "at_steps": None, "initial": {"loss": 6.0, "subopt": 6.0},
            "diverged": not math.isfinite(value)}


def test_excess_is_the_difference_in_nats_over_the_tuned_baseline():
    xs = (1e-3, 1e-2, 1e-1)
    runs = [_run("byte_lm", "AdamW", x, v) for x, v in zip(xs, (3.0, 2.5, 2.6), strict=True)]
    runs += [_run("byte_lm", "AdamW+cos", x, v) for x, v in zip(xs, (2.9, 2.4, 2.8), strict=True)]
    runs += [_run("byte_lm", "Prodigy", x, v, seed)
             for x, v in zip(xs, (2.51, 2.7, math.inf), strict=True) for seed in (0, 1)]
    runs += [_run("byte_lm", "Prodigy+cos", x, v) for x, v in zip(xs, (2.41, 2.45, 2.3),
                                                                    strict=True)]
    inner = {"AdamW": "AdamW", "AdamW+cos": "AdamW", "Prodigy": "Adam", "Prodigy+cos": "Adam"}
    baseline = {"AdamW": "AdamW", "AdamW+cos": "AdamW+cos", "Prodigy": "Adam",
                "Prodigy+cos": "Adam+cos"}
    summaries = {s.method: s for s in summarise(runs, inner, baseline,
                                                problem_baseline={"byte_lm": "AdamW"},
                                                excess=["byte_lm"])}
    prodigy, cos = summaries["Prodigy"], summaries["Prodigy+cos"]
    assert prodigy.baseline == "AdamW" and prodigy.tuned == 2.5 and prodigy.excess
    assert prodigy.ratios[:2] == pytest.approx([0.01, 0.2])
    assert prodigy.ratios[2] == math.inf and prodigy.worst == math.inf
    assert prodigy.width == 1  # 0.01 ≤ 0.02 nats
    assert cos.baseline == "AdamW+cos" and cos.tuned == 2.4
    assert cos.ratios == pytest.approx([0.01, 0.05, -0.1])
    assert cos.median == pytest.approx(0.01) and cos.width == 2
    assert summaries["AdamW"].ratios == pytest.approx([0.5, 0.0, 0.1])
    assert compare(3.0, 2.0, excess=True) == 1.0 and compare(3.0, 2.0) == 1.5
    assert GOOD_EXCESS == 0.02


def test_ratio_problems_keep_the_ratio():
    runs = [_run("digits_mlp", "Adam", 1e-3, 0.2), _run("digits_mlp", "Adam", 1e-2, 0.1),
            _run("digits_mlp", "Adam+newt[free]", 1e-3, 0.3)]
    methods = [Method("Adam", "fixed", "Adam"), Method("Adam+newt[free]", "newt", "Adam")]
    summaries = {s.method: s for s in summarise_runs(runs, methods, {"digits_mlp": 10})}
    assert summaries["Adam+newt[free]"].ratios == pytest.approx([3.0])
    assert not summaries["Adam+newt[free]"].excess


# ---------------------------------------------------------------- budgets and selection
def test_long_budgets_only_on_stochastic_problems():
    budgets = expand_budgets({"rosenbrock": 100, "digits_mlp": 50}, ("short", "long"))
    assert budgets == {"rosenbrock": 100, "digits_mlp": 50, "digits_mlp-long": LONG * 50}
    assert LONG >= 3
    assert expand_budgets({"digits_mlp": 50}, ("long",)) == {"digits_mlp-long": LONG * 50}
    assert problem_of("digits_mlp-long") == "digits_mlp"
    with pytest.raises(ValueError, match="budgets"):
        expand_budgets({"digits_mlp": 50}, ("medium",))


def test_seeds_and_equal_steps_per_row():
    from benchmarks.run import _tasks

    methods = [Method("SGD", "fixed", "SGD")]
    budgets = {"digits_logreg": 10, "digits_logreg-long": 30}
    tasks = _tasks(budgets, methods, {"digits_logreg": 3, "digits_logreg-long": 1},
                   {"digits_logreg": True, "digits_logreg-long": False})
    short = [t for t in tasks if t[0] == "digits_logreg"]
    long = [t for t in tasks if t[0] == "digits_logreg-long"]
    assert len(short) == 3 * len(long) == 3 * 7
    assert all(t[4].steps == 10 for t in short) and all(t[4].steps is None for t in long)
    assert {t[4].evals for t in long} == {30}


def test_the_language_model_runs_adamw_rows_and_peers_only():
    methods = {m.name: m for m in catalog()}
    assert applies(methods["AdamW+newt[free]+cos"], "byte_lm")
    assert applies(methods["Prodigy"], "byte_lm") and applies(methods["DoG+avg"], "byte_lm")
    assert not applies(methods["Adam+newt[free]"], "byte_lm")
    assert not applies(methods["SGD-HD"], "byte_lm")
    assert applies(methods["Adam+newt[free]"], "digits_mlp")
    assert not applies(methods["L-BFGS"], "digits_mlp")


def test_a_tiny_selection_writes_its_page_and_plots(tmp_path, monkeypatch):
    import benchmarks.run as bench

    monkeypatch.setattr(bench, "ROOT", tmp_path)
    bench.main(["--problems", "booth,quadratic_deep", "--budgets", "short,long",
                "--budget-scale", "0.02", "--inners", "SGD", "--modes", "free",
                "--presets", "default", "--seeds", "1", "--workers", "1", "--no-cost",
                "--methods", "DoG+avg", "--out", str(tmp_path / "out")])
    page = (tmp_path / "out" / "report-quick.md").read_text()
    assert "## quadratic_deep-long" in page and "## booth" in page
    assert "| SGD+cos | SGD+cos |" in page and "| DoG+avg | SGD |" in page
    protocol = (Path(bench.__file__).resolve().parent.parent / "docs" / "benchmark-protocol.md")
    assert f"[the benchmark protocol]({protocol.as_uri()})" in page  # the page is outside
    assert (tmp_path / "out" / "img" / "bench_quadratic_deep-long.png").exists()
    assert list((tmp_path / "benchmarks" / "results").glob("quick-selection-*.json"))
