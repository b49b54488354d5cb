"""A whole-step reference twin: newt's step in plain Python floats, one tensor, every mode.

The twin follows the method line by line (docs/method.md) with SGD as the inner
optimizer on a noisy separable quadratic L_t(x) = ½ Σ h_i (x_i − c_{t,i})²; the
fast path (`newt.NewtOptimizer`, tensors, foreach kernels) must agree with it to
rounding at every step. It shares no code with `newt`.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

import newt

H = [4.0, 1.0, 0.25, 0.05]


def batch(t: int, noise: float) -> list[float]:
    rng = random.Random(1000 + t)
    return [noise * rng.gauss(0.0, 1.0) for _ in H]


def loss(x: list[float], c: list[float]) -> float:
    return 0.5 * sum(h * (xi - ci) ** 2 for h, xi, ci in zip(H, x, c, strict=True))


def grad(x: list[float], c: list[float]) -> list[float]:
    return [h * (xi - ci) for h, xi, ci in zip(H, x, c, strict=True)]


def dot(a: list[float], b: list[float]) -> float:
    return sum(u * v for u, v in zip(a, b, strict=True))


def factor(A: float, B: float, C: float, increase: bool, o: dict) -> float:
    """The damped, clamped Newton factor (update="log", curvature from C)."""
    if A == 0 and B == 0:
        return 1.0
    convex = C > o["eps"] * (abs(A) + abs(B))
    f = 1.0 + B / C if convex else o["nonconvex_factor"]
    if increase:
        f = min(f, o["backoff"])
    f = min(max(f, o["factor_min"]), o["factor_max"])
    return max(f, 2.2250738585072014e-308) ** o["gamma"]


def clamp(alpha: float, o: dict) -> float:
    return min(max(alpha, o["lr_min"]), o["lr_max"])


def twin(mode: str, steps: int, alpha: float, noise: float, o: dict) -> tuple[list, list]:
    """Returns (α after each step, x after each step)."""
    x = [1.0, -1.0, 2.0, 0.5]
    pending = None  # (A, C, increase, d) of the step awaiting a fresh slope
    alphas, xs = [], []
    for t in range(steps):
        c = batch(t, noise)
        g, L0 = grad(x, c), loss(x, c)
        if pending is not None and o["slope"] == "next_batch":
            A, C, increase, d = pending
            B = dot(g, d)  # the fresh slope at θ_t along the pending displacement
            if C is None:  # closure-free: C = A − B across batches
                C = A - B
            alpha = clamp(alpha * factor(A, B, C, increase, o), o)
        pending = None
        d = [alpha * gi for gi in g]  # SGD: θ_{t+1} = θ_t − α g
        x_new = [xi - di for xi, di in zip(x, d, strict=True)]
        A = dot(g, d)
        if mode == "free":
            x, pending = x_new, (A, None, False, d)
        else:
            g1, L1 = grad(x_new, c), loss(x_new, c)
            B = dot(g1, d)
            C = A - B
            increase = L1 > L0
            if o["slope"] == "same_batch":
                alpha = clamp(alpha * factor(A, B, C, increase, o), o)
                x = x_new
            elif increase and o["reject"]:
                alpha = clamp(alpha * o["backoff"] ** o["gamma"], o)  # undo, back off
            else:
                x, pending = x_new, (A, C, increase, d)
        alphas.append(alpha)
        xs.append(list(x))
    return alphas, xs


def fast(mode: str, steps: int, alpha: float, noise: float, **options) -> tuple[list, list]:
    x = torch.nn.Parameter(torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=torch.float64))
    h = torch.tensor(H, dtype=torch.float64)
    opt = newt.NewtOptimizer(torch.optim.SGD([x], lr=alpha), reuse_lookahead=mode == "reuse",
                             **{"controller": "newton", **options})
    current = [torch.zeros(4, dtype=torch.float64)]

    def closure():
        opt.zero_grad()
        value = 0.5 * (h * (x - current[0]) ** 2).sum()
        value.backward()
        return value

    alphas, xs = [], []
    for t in range(steps):
        current[0] = torch.tensor(batch(t, noise), dtype=torch.float64)
        if mode == "free":
            closure()
            opt.step()
        else:
            opt.step(closure)  # one closure object every step, so reuse really reuses
        alphas.append(opt.alphas[0])
        xs.append(x.detach().tolist())
    return alphas, xs


CASES = [
    # (mode, noise, options)
    ("closure", 0.3, {}),
    ("closure", 0.0, {}),
    ("free", 0.3, {}),
    ("free", 0.0, {}),
    ("reuse", 0.0, {}),
    ("closure", 0.3, {"slope": "same_batch", "reject": False}),
    ("closure", 0.3, {"reject": False}),
    ("closure", 0.3, {"gamma": 1.0, "factor_max": 10.0}),
]


@pytest.mark.parametrize(("mode", "noise", "options"), CASES)
@pytest.mark.parametrize("alpha", [0.01, 0.45])
def test_fast_path_matches_the_plain_float_twin_step_by_step(mode, noise, options, alpha):
    o = {**newt.DEFAULT, **options}
    expected_alphas, expected_xs = twin(mode, 30, alpha, noise, o)
    alphas, xs = fast(mode, 30, alpha, noise, **options)
    for t in range(30):
        assert alphas[t] == pytest.approx(expected_alphas[t], rel=1e-9, abs=1e-300), t
        assert xs[t] == pytest.approx(expected_xs[t], rel=1e-9, abs=1e-12), t
    assert len({round(math.log(a), 6) for a in alphas}) > 3  # α was learned, not frozen


def test_reuse_runs_one_evaluation_per_step_under_warnings_as_errors():
    """The reuse case above, counted: one closure call per step after the first."""
    import warnings

    x = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    opt = newt.NewtOptimizer(torch.optim.SGD([x], lr=0.1), reuse_lookahead=True)
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        value = (x**2).sum()
        value.backward()
        return value

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(10):
            opt.step(closure)
    assert calls[0] == 2 + 9
