"""Shared problem generators and Hypothesis strategies for the newt test suite.

Everything here is deterministic given its arguments: SPD matrices come from a
seeded QR decomposition, starting points from a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "INNER_NAMES",
    "ORACLE_OPTIONS",
    "Quadratic",
    "gd_loss_ratio",
    "make_inner",
    "make_mlp",
    "mlp_batches",
    "mlp_closure",
    "mlp_data",
    "quadratic_problems",
    "record_lrs",
    "spd_matrix",
]

# The options under which one Newton step on α is the exact line search on a quadratic.
ORACLE_OPTIONS = {
    "gamma": 1.0,
    "factor_min": 0.0,
    "factor_max": math.inf,
    "lr_min": 1e-300,  # must be > 0; far below any α the tests reach
    "lr_max": math.inf,
    "eps": 0.0,
    "backoff": 1.0,
    "reject": False,  # keep every step: the oracle compares α along the whole trajectory
    "controller": "newton",  # the Newton rule is what these oracles compute
}

INNER_NAMES = ("sgd", "momentum", "adam")


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def spd_eigenvalues(dim: int, cond: float, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Eigenvalues in [1/cond, 1], log-spaced at random, both ends present (when dim ≥ 2)."""
    gen = _generator(seed)
    s = torch.rand(dim, generator=gen, dtype=torch.float64)
    if dim >= 2:
        s[0], s[1] = 0.0, 1.0
    else:
        s[0] = 0.0
    return (float(cond) ** (-s)).sort(descending=True).values.to(dtype)


def spd_matrix(dim: int, cond: float, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``Q diag(λ) Qᵀ`` with Q from the QR of a seeded Gaussian; λ_max = 1, λ_min = 1/cond."""
    gen = _generator(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    lam = spd_eigenvalues(dim, cond, seed)
    a = (q * lam) @ q.T
    return (0.5 * (a + a.T)).to(dtype)


def random_start(dim: int, seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """A random point on the unit sphere (so α₀ in [1e-4, 1] is small to large for any
    inner optimizer, Adam's sign-like steps included)."""
    x = torch.randn(dim, generator=_generator(seed + 2), dtype=torch.float64)
    return (x / x.norm()).to(dtype)


@dataclass
class Quadratic:
    """``L(x) = ½ xᵀ A x`` on one parameter ``x``."""

    a: Tensor
    x: torch.nn.Parameter

    @classmethod
    def random(cls, dim: int, cond: float, seed: int,
               dtype: torch.dtype = torch.float64) -> Quadratic:
        a = spd_matrix(dim, cond, seed, dtype)
        return cls(a, torch.nn.Parameter(random_start(dim, seed, dtype)))

    def loss(self) -> Tensor:
        return 0.5 * self.x @ (self.a @ self.x)

    def grad_at(self, x: Tensor) -> Tensor:
        return self.a @ x

    def closure(self, opt: torch.optim.Optimizer, counter: list[int] | None = None
                ) -> Callable[[], Tensor]:
        def closure() -> Tensor:
            if counter is not None:
                counter[0] += 1
            opt.zero_grad()
            loss = self.loss()
            loss.backward()
            return loss

        return closure


def make_inner(name: str, params, lr: float, **kwargs) -> torch.optim.Optimizer:
    """Inner optimizers by short name: ``sgd``, ``momentum`` (SGD, 0.9), ``adam``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, **kwargs)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, **kwargs)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **kwargs)
    raise ValueError(name)


def record_lrs(inner: torch.optim.Optimizer) -> list[list[float]]:
    """Record, at each step of ``inner``, the ``lr`` of every group it steps with."""
    used: list[list[float]] = []

    def hook(opt, args, kwargs) -> None:
        used.append([float(g["lr"]) for g in opt.param_groups])

    inner.register_step_pre_hook(hook)
    return used


def gd_loss_ratio(a: Tensor, x0: Tensor, steps: int) -> float:
    """L(x_N)/L(x_0) of gradient descent with the best fixed step 2/(λ_max + λ_min)."""
    lam = torch.linalg.eigvalsh(a)
    step = 2.0 / float(lam.max() + lam.min())
    x = x0.detach().clone()
    for _ in range(steps):
        x = x - step * (a @ x)
    l0 = float(x0.detach() @ a @ x0.detach())
    return float(x @ a @ x) / l0 if l0 > 0 else 0.0


def make_mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A small deterministic MLP (4 → 8 → 3)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).to(dtype)


def mlp_data(n: int = 32, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = _generator(seed)
    x = torch.randn(n, 4, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


def mlp_closure(model: torch.nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                counter: list[int] | None = None) -> Callable[[], Tensor]:
    """A closure: zero the gradients, cross-entropy of ``model`` on ``(x, y)``, backward."""

    def closure() -> Tensor:
        if counter is not None:
            counter[0] += 1
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def mlp_batches(steps: int, batch: int = 8, seed: int = 2) -> Iterator[tuple[Tensor, Tensor]]:
    """A fixed sequence of mini-batches (the same for every call with the same seed)."""
    x, y = mlp_data(64, seed)
    gen = _generator(seed + 10)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        yield x[idx], y[idx]


# ----------------------------------------------------------------------------- strategies
log_uniform_lr = st.floats(min_value=-4.0, max_value=0.0).map(lambda e: 10.0**e)
"""Initial α from 1e-4 to 1, log-uniform."""

seeds = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def quadratic_problems(draw, max_dim: int = 20, max_log_cond: float = 3.0):
    """``(dim, cond, seed)`` of a random SPD quadratic (dim 1–20, condition ≤ 1e3)."""
    dim = draw(st.integers(min_value=1, max_value=max_dim))
    cond = 10.0 ** draw(st.floats(min_value=0.0, max_value=max_log_cond))
    seed = draw(seeds)
    return dim, cond, seed


def step_in_mode(opt: torch.optim.Optimizer, closure, mode: str) -> None:
    """One step: `opt.step(closure)` for mode "closure", else `closure(); opt.step()`."""
    if mode == "closure":
        opt.step(closure)
    else:
        closure()
        opt.step()


class CountHostReads(TorchDispatchMode):
    """Counts reads of a tensor's value on the host (``.item()``, ``float()``, ``bool()``
    all dispatch to ``aten._local_scalar_dense``), except while ``paused``."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not self.paused:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def pause_in_inner_step(opt: torch.optim.Optimizer, mode: TorchDispatchMode) -> None:
    """Wrap the inner optimizer's ``step`` of ``opt`` (a `newt.NewtOptimizer`) so that
    ``mode.paused`` is true while it runs: what the inner optimizer does is its own."""
    inner_step = opt.inner.step

    def paused_inner_step(*args: object, **kwargs: object) -> object:
        mode.paused = True
        try:
            return inner_step(*args, **kwargs)
        finally:
            mode.paused = False

    opt.inner.step = paused_inner_step


def host_read_counter(opt: torch.optim.Optimizer) -> CountHostReads:
    """A `CountHostReads` for ``opt`` that does not count the inner optimizer's reads.
    Use it as ``with counter: opt.step()``."""
    counter = CountHostReads()
    pause_in_inner_step(opt, counter)
    return counter
