"""``newt-demo`` (newt/demo.py): runs, prints its table, writes its figure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from newt import demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quick_demo_prints_the_comparison_table_and_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "new" / "folder"
    assert demo.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    for row in ("newt(Adam) closure-free", "newt(Adam) with closure", "seed's rule (newt.Newt)",
                "fixed at the bad lr=1e-05", "(best of grid)"):
        assert row in text
    assert "evals/step" in text and "test acc" in text
    # The sentence after the table says what the rows are.
    table_end = text.index("(best of grid)")
    assert text.index("Each row is one training run", table_end) > table_end
    assert "best of 3 fixed-lr runs" in text  # --quick: three grid points
    figure = out / demo.FIGURE
    assert f"figure: {figure}" in text
    assert figure.read_bytes()[:8] == PNG_MAGIC
    assert figure.stat().st_size > 20_000
    assert captured.err == ""  # --no-progress: nothing on stderr


def test_default_out_is_a_newt_demo_folder_that_git_ignores(tmp_path, monkeypatch):
    assert demo._parser().parse_args([]).out == Path("newt-demo")
    root = Path(__file__).resolve().parents[1]
    ignored = subprocess.run(["git", "check-ignore", "-q", "newt-demo/newt-demo.png"], cwd=root,
                             capture_output=True, check=False)
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0, "newt-demo/ is not in .gitignore"


def test_off_a_terminal_each_run_prints_a_progress_line(tmp_path, capsys):
    # pytest's captured stderr is not a terminal, as when the output is piped.
    assert demo.main(["--quick", "--out", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("newt-demo: run ")]
    assert len(lines) == 8  # three grid points, newt, newt gated, newt with closure, seed, fixed
    assert lines[0].startswith("newt-demo: run 1/8: Adam fixed lr=")
    assert lines[-1].startswith("newt-demo: run 8/8: Adam fixed at the bad lr=1e-05")


def _run(mode: str, lrs: list[float]) -> demo.Run:
    return demo.Run(label=mode, mode=mode, lr_evaluations=list(range(1, len(lrs) + 1)),
                    lrs=lrs)


def test_explain_names_an_alpha_that_ended_at_its_floor_and_only_that():
    rows = [(_run("newt", [1e-3, 2e-2, 1e-5, 1e-8]), "newt row"),
            (_run("newt-closure", [1e-3, 2e-3]), "closure row"),
            (_run("fixed", [1e-8, 1e-8]), "fixed row")]  # a fixed lr is not a collapse
    text = demo.explain(rows, grid_runs=6, lr_min=1e-8)
    assert text.startswith("Each row is one training run")
    assert "best of 6 fixed-lr runs" in text
    floor = [line for line in text.splitlines() if "floor" in line]
    assert len(floor) == 1
    assert floor[0].startswith("newt row: α rose to 2.00e-02 (at evaluation 2) and ended at "
                               "1.00e-08, at its floor lr_min = 1e-08")
    assert "floor" not in demo.explain(rows[1:], grid_runs=6, lr_min=1e-8)


@pytest.mark.parametrize("mode", sorted(demo.MODES))
def test_every_run_spends_the_same_number_of_gradient_evaluations(mode):
    from newt.problems import digits_mlp

    problem = digits_mlp((64,), "tanh", batch_size=64, test_size=0.2)
    spent = []
    run = demo.train(problem, "adam", 1e-3, mode, budget=12, seed=0, on_evaluations=spent.append)
    assert sum(spent) == 12
    assert run.lr_evaluations[-1] == 12
    assert len(run.lrs) == 12 // demo.MODES[mode]
    assert run.evaluations[0] == 0 and run.evaluations[-1] == 12
    assert run.train_loss < run.losses[0]


def test_newt_lifts_the_bad_learning_rate_and_the_fixed_run_keeps_it():
    from newt.problems import digits_mlp

    problem = digits_mlp((64,), "tanh", batch_size=64, test_size=0.2)
    fixed = demo.train(problem, "adam", 1e-5, "fixed", budget=200, seed=0)
    lifted = demo.train(problem, "adam", 1e-5, "newt", budget=200, seed=0)
    assert set(fixed.lrs) == {1e-5}
    assert max(lifted.lrs) > 100 * 1e-5
    assert lifted.train_loss < 0.5 * fixed.train_loss


def test_python_dash_m_help_works():
    result = subprocess.run([sys.executable, "-m", "newt.demo", "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for flag in ("--steps", "--out", "--seed", "--quick"):
        assert flag in result.stdout


@pytest.mark.skipif(shutil.which("newt-demo") is None, reason="package not installed")
def test_console_script_help_works():
    result = subprocess.run(["newt-demo", "--help"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: newt-demo" in result.stdout


def test_bad_steps_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        demo.main(["--steps", "1"])
    assert info.value.code == 2
    assert "--steps" in capsys.readouterr().err
