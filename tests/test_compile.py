"""newt and torch.compile: the α rule compiles to one graph; compiled models train as in eager.

These tests build C++ kernels with inductor (a C++ compiler is needed; they are
skipped without one). The first run compiles (tens of seconds); inductor's
on-disk cache (``TORCHINDUCTOR_CACHE_DIR``, by default under the temp
directory) makes later runs a few seconds. ``NEWT_SKIP_COMPILE=1`` skips them.
"""

from __future__ import annotations

import copy
import math
import os
import shutil

import pytest
import torch

import newt
from newt.rule import update_lr

pytestmark = [
    pytest.mark.skipif(os.environ.get("NEWT_SKIP_COMPILE") == "1",
                       reason="NEWT_SKIP_COMPILE=1"),
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                       reason="torch.compile (inductor) needs a C++ compiler on the CPU"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

OPTIONS = {  # the default preset's rule options, as update_lr takes them
    name: value for name, value in newt.DEFAULT.items()
    if name in ("update", "gamma", "eps", "lr_min", "lr_max", "factor_min", "factor_max",
                "backoff", "nonconvex_factor", "nonfinite_factor")
}

# (lr, A, B, L(θ_t), L(θ_{t+1})): Newton, clamped, loss increase, non-convex,
# no information, non-finite.
CASES = [
    (1e-3, 0.2, 0.05, 1.0, 0.9),
    (1e-3, 0.2, 0.19, 1.0, 0.8),
    (1e-2, 0.2, -0.05, 1.0, 1.1),
    (1e-2, 0.2, 0.3, 1.0, 0.9),
    (1e-2, 0.0, 0.0, 1.0, 1.0),
    (1e-2, 0.2, float("nan"), 1.0, 0.9),
    (5.0, 1e-3, 9e-4, 2.0, 1.0),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _scalars(case, dtype=torch.float32):
    lr, a, b, l0, l1 = case
    return (torch.tensor(lr, dtype=torch.float64), torch.tensor(a, dtype=dtype),
            torch.tensor(b, dtype=dtype), torch.tensor(l0, dtype=dtype),
            torch.tensor(l1, dtype=dtype))


@pytest.mark.parametrize("curvature", ["gradient", "loss"])
def test_update_lr_compiles_to_one_graph_and_matches_eager(curvature):
    compiled = torch.compile(update_lr, fullgraph=True, dynamic=False)  # a graph break raises
    for i, case in enumerate(CASES):
        args = _scalars(case)
        if i == 1:
            # New values, same dtypes and shapes: the compiled graph is reused as is.
            torch.compiler.set_stance("fail_on_recompile")
        try:
            got = compiled(*args, curvature=curvature, **OPTIONS)
        finally:
            torch.compiler.set_stance("default")
        expected = update_lr(*args, curvature=curvature, **OPTIONS)
        for name, g, e in zip(expected._fields, got, expected, strict=True):
            assert g.dtype == e.dtype, name
            torch.testing.assert_close(g, e, rtol=1e-12, atol=0, equal_nan=True,
                                       msg=f"{name} differs for {case}")


# ---------------------------------------------------------------- compiled models
def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))


def _batches(n: int):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 8, generator=gen), torch.randint(0, 3, (32,), generator=gen))
            for _ in range(n)]


def _train(model, mode: str, compile_closure: bool = False, steps: int = 8):
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=torch.tensor(1e-2),
                                              foreach=False))
    losses = []
    for x, y in _batches(steps):

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if compile_closure:
            closure = torch.compile(closure)
        if mode == "free":
            losses.append(closure().item())
            opt.step()
        else:
            losses.append(opt.step(closure).item())
    params = [p.detach().clone() for p in model.parameters()]
    return losses, params, float(opt.param_groups[0]["lr"])


@pytest.mark.parametrize("mode", ["closure", "free"])
def test_a_compiled_model_trains_as_in_eager(mode):
    base = _model()
    eager_losses, eager_params, eager_lr = _train(copy.deepcopy(base), mode)
    compiled = torch.compile(copy.deepcopy(base), dynamic=False)
    losses, params, lr = _train(compiled, mode)
    assert all(math.isfinite(v) for v in losses)
    # Inductor's fused kernels round differently: close, not bitwise.
    assert losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    assert lr == pytest.approx(eager_lr, rel=1e-3)
    for p, e in zip(params, eager_params, strict=True):
        torch.testing.assert_close(p, e, rtol=1e-3, atol=1e-4)


def test_a_compiled_closure_works_in_closure_mode():
    """``torch.compile(closure)``: zero_grad, forward and backward graph-break as they must."""
    base = _model()
    eager_losses, eager_params, _ = _train(copy.deepcopy(base), "closure")
    losses, params, _ = _train(copy.deepcopy(base), "closure", compile_closure=True, steps=8)
    assert losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    for p, e in zip(params, eager_params, strict=True):
        torch.testing.assert_close(p, e, rtol=1e-3, atol=1e-4)


def test_lookahead_context_sees_batchnorm_inside_a_compiled_model_without_recompiling():
    from newt import lookahead as la

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    compiled = torch.compile(model)
    x = torch.randn(32, 8)
    for step in range(3):
        if step == 1:
            torch.compiler.set_stance("fail_on_recompile")
        try:
            with la.capture() as saved:
                first = compiled(x).pow(2).mean()
            with la.lookahead(saved):
                second = compiled(x).pow(2).mean()
        finally:
            torch.compiler.set_stance("default")
        assert torch.equal(first, second)  # the same dropout masks
        assert int(model[1].num_batches_tracked) == step + 1
    la.restore_model_state(saved)
    assert int(model[1].num_batches_tracked) == 2
