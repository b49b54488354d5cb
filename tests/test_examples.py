"""Every example runs offline with ``--quick``, writes its figure and answers ``--help``."""

from __future__ import annotations

import importlib.util
import inspect
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import newt

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OFFLINE = ["digits_inner_optimizers.py", "breast_cancer_lbfgs_style.py", "per_group_lr.py"]
ALL = sorted(p.name for p in EXAMPLES.glob("*.py"))


def _run(script: str, *args: str, extra_path: Path | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MPLBACKEND="Agg")
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT, check=False)


def _needs(*modules: str) -> None:
    for module in modules:
        pytest.importorskip(module)


def test_every_example_is_listed():
    assert set(ALL) == {*OFFLINE, "lightning_closure.py", "mnist_torchvision.py", "ddp.py"}


@pytest.mark.parametrize("script", ALL)
def test_example_answers_help(script):
    result = _run(script, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "--out" in result.stdout and "--quick" in result.stdout


PRINTS = {
    "digits_inner_optimizers.py": ("newt(SGD)", "newt(Adam)", "newt(AdamW)"),
    "breast_cancer_lbfgs_style.py": ("newt(SGD)", "newt(Adam)", "L-BFGS", "minimum"),
    "per_group_lr.py": ("features: α", "head: α"),
}


@pytest.mark.parametrize("script", OFFLINE)
def test_offline_example_runs_quick_and_writes_its_figure(script, tmp_path):
    _needs("sklearn", "matplotlib")
    out = tmp_path / "figure.png"
    result = _run(script, "--quick", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    for text in PRINTS[script]:
        assert text in result.stdout
    assert f"figure: {out}" in result.stdout
    assert out.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None,
                    reason="PyTorch Lightning is not installed")
def test_lightning_example_runs_quick_and_writes_its_figure(tmp_path):
    _needs("sklearn", "matplotlib")
    out = tmp_path / "figure.png"
    result = _run("lightning_closure.py", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_lightning_example_exits_zero_with_a_message_without_lightning(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "lightning.py").write_text("raise ImportError('blocked for this test')\n")
    result = _run("lightning_closure.py", "--quick", "--out", str(tmp_path / "f.png"),
                  extra_path=blocker)
    assert result.returncode == 0, result.stderr
    assert "pip install lightning" in result.stdout
    assert not (tmp_path / "f.png").exists()


FAKE_TORCHVISION = {
    "__init__.py": "",
    "transforms.py": textwrap.dedent("""
        class Compose:
            def __init__(self, steps):
                self.steps = steps
            def __call__(self, x):
                for step in self.steps:
                    x = step(x)
                return x
        class ToTensor:
            def __call__(self, x):
                return x
        class Normalize:
            def __init__(self, mean, std):
                self.mean, self.std = mean[0], std[0]
            def __call__(self, x):
                return (x - self.mean) / self.std
    """),
    "datasets.py": textwrap.dedent("""
        import torch
        class MNIST(torch.utils.data.Dataset):
            # 64 random 28x28 images: enough to drive the example's loop offline.
            def __init__(self, root, train=True, download=False, transform=None):
                g = torch.Generator().manual_seed(0)
                self.x = torch.rand(64, 1, 28, 28, generator=g)
                self.y = torch.randint(0, 10, (64,), generator=g)
                self.transform = transform
            def __len__(self):
                return len(self.y)
            def __getitem__(self, i):
                return self.transform(self.x[i]), int(self.y[i])
    """),
}


@pytest.mark.parametrize("api", ["optimizer", "scheduler"])
def test_mnist_example_loop_runs_on_a_stand_in_torchvision(api, tmp_path):
    _needs("matplotlib")
    package = tmp_path / "fake" / "torchvision"
    package.mkdir(parents=True)
    for name, text in FAKE_TORCHVISION.items():
        (package / name).write_text(text)
    out = tmp_path / "mnist.png"
    result = _run("mnist_torchvision.py", "--api", api, "--quick", "--out", str(out),
                  "--data", str(tmp_path / "data"), extra_path=tmp_path / "fake")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("α") == 3  # SGD, Adam, AdamW
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_mnist_example_explains_a_missing_torchvision(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "torchvision.py").write_text("raise ImportError('blocked for this test')\n")
    result = _run("mnist_torchvision.py", "--out", str(tmp_path / "f.png"), extra_path=blocker)
    assert result.returncode == 1
    assert "pip install torchvision" in result.stderr


@pytest.mark.skipif("process_group" not in inspect.signature(newt.NewtOptimizer).parameters,
                    reason="NewtOptimizer(process_group=...) arrives with the core v2")
def test_ddp_example_runs_under_torchrun_on_two_gloo_processes(tmp_path):
    _needs("sklearn", "matplotlib")
    out = tmp_path / "alpha.png"
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    if "lo" in [name for _, name in socket.if_nameindex()]:
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(EXAMPLES / "ddp.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ranks agree: True" in result.stdout
    assert result.stdout.count("rank 1: α") == 1
    assert out.read_bytes()[:8] == PNG_MAGIC
