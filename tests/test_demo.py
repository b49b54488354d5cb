"""``newt-demo`` (newt/demo.py): runs, prints its table, writes its figure."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from newt import demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_quick_demo_prints_the_comparison_table_and_writes_the_figure(tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert demo.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for row in ("newt(Adam) closure-free", "newt(Adam) with closure", "seed's rule (newt.Newt)",
                "fixed at the bad lr=1e-05", "(best of grid)"):
        assert row in text
    assert "evals/step" in text and "test acc" in text
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert out.stat().st_size > 20_000


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
    fixed = demo.train(problem, "adam", 1e-5, "fixed", budget=60, seed=0)
    lifted = demo.train(problem, "adam", 1e-5, "newt", budget=60, seed=0)
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
