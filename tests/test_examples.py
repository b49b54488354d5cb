"""Every example runs offline with ``--quick``, writes its figure and answers ``--help``."""

from __future__ import annotations

import gzip
import importlib
import inspect
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import newt

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OFFLINE = ["digits_inner_optimizers.py", "breast_cancer_lbfgs_style.py", "per_group_lr.py"]
# Examples that need a training framework: script -> (modules, install hint in the skip message).
FRAMEWORKS = {
    "lightning_closure.py": (("lightning",), "pip install 'lightning"),
    "hf_trainer.py": (("transformers", "accelerate"), "pip install 'transformers"),
}
ALL = sorted(p.name for p in EXAMPLES.glob("*.py"))


def _run(script: str, *args: str, extra_path: Path | None = None,
         timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MPLBACKEND="Agg")
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT, check=False)


def _needs(*modules: str) -> None:
    """Skip without ``modules``, except in CI (``CI`` set), where they must be installed."""
    for module in modules:
        if os.environ.get("CI"):
            importlib.import_module(module)  # an ImportError here fails the test
        else:
            pytest.importorskip(module)


def _block(tmp_path: Path, *modules: str) -> Path:
    """A folder that, put first on PYTHONPATH, makes ``import module`` fail."""
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    for module in modules:
        (blocker / f"{module}.py").write_text("raise ImportError('blocked for this test')\n")
    return blocker


def test_every_example_is_listed():
    assert set(ALL) == {*OFFLINE, *FRAMEWORKS, "mnist_torchvision.py", "ddp.py"}


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
    # the Trainer's logs carry newt's α and the step taken (the example's callback)
    "hf_trainer.py": ("newt_alpha", "newt_step_size", "logged learning_rate = the schedule"),
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


@pytest.mark.parametrize("script", sorted(FRAMEWORKS))
def test_framework_example_runs_quick_and_writes_its_figure(script, tmp_path):
    _needs("sklearn", "matplotlib", *FRAMEWORKS[script][0])
    out = tmp_path / "figure.png"
    result = _run(script, "--quick", "--out", str(out), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "α" in result.stdout and f"figure: {out}" in result.stdout
    for text in PRINTS.get(script, ()):
        assert text in result.stdout
    assert out.read_bytes()[:8] == PNG_MAGIC


# One convention for a missing prerequisite: "skipped: <what and how to get it>" on stderr,
# exit status 2, nothing written.
SKIPPED = 2


@pytest.mark.parametrize("script", sorted(FRAMEWORKS))
def test_framework_example_without_its_framework_says_skipped_and_exits_2(script, tmp_path):
    modules, hint = FRAMEWORKS[script]
    result = _run(script, "--quick", "--out", str(tmp_path / "f.png"),
                  extra_path=_block(tmp_path, *modules))
    assert result.returncode == SKIPPED, result.stdout + result.stderr
    assert result.stderr.startswith("skipped: ") and hint in result.stderr
    assert not (tmp_path / "f.png").exists()


def _write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` (uint8) in the MNIST idx format, gzipped: magic 0x08 (ubyte), ndim, dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_mnist(folder: Path, n: int = 160) -> Path:
    """``n`` generated 28×28 digits-like images (a bright bar whose row is the label)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for image, label in zip(images, labels, strict=True):
        image[2 + 2 * label: 4 + 2 * label, 4:24] = 255
    raw = folder / "MNIST" / "raw"  # torchvision's layout
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte.gz", images)
    _write_idx(raw / "train-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.mark.parametrize("api", ["optimizer", "scheduler"])
def test_mnist_example_runs_quick_on_generated_idx_files_without_torchvision(api, tmp_path):
    _needs("matplotlib")
    data = _fake_mnist(tmp_path / "data")
    out = tmp_path / "mnist.png"
    result = _run("mnist_torchvision.py", "--api", api, "--quick", "--out", str(out),
                  "--data", str(data), extra_path=_block(tmp_path, "torchvision"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("α") == 3  # SGD, Adam, AdamW
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_mnist_example_without_data_says_where_to_get_it_and_exits_2(tmp_path):
    result = _run("mnist_torchvision.py", "--data", str(tmp_path / "empty"), "--out",
                  str(tmp_path / "f.png"))
    assert result.returncode == SKIPPED, result.stdout + result.stderr
    assert result.stderr.startswith("skipped: ")
    assert "train-images-idx3-ubyte" in result.stderr and "--download" in result.stderr
    assert not (tmp_path / "f.png").exists()


def test_mnist_example_download_without_torchvision_pins_the_matching_release(tmp_path):
    result = _run("mnist_torchvision.py", "--data", str(tmp_path / "d"), "--download",
                  extra_path=_block(tmp_path, "torchvision"))
    assert result.returncode == SKIPPED, result.stdout + result.stderr
    release = torch.__version__.split("+")[0]
    minor = int(release.split(".")[1])
    # torch 2.x goes with torchvision 0.(x+15); pinning both keeps the installed (CPU) torch.
    assert f"'torch=={release}' 'torchvision==0.{minor + 15}.*'" in result.stderr


def test_mnist_example_rejects_a_file_that_is_not_idx(tmp_path):
    raw = tmp_path / "data"
    raw.mkdir()
    (raw / "train-images-idx3-ubyte").write_bytes(b"<html>not mnist</html>")
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    result = _run("mnist_torchvision.py", "--data", str(raw), "--out", str(tmp_path / "f.png"))
    assert result.returncode == 1
    assert "is not an MNIST idx file" in result.stderr and "download it again" in result.stderr


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
