"""Memory: newt keeps one parameter-sized buffer per parameter, in every mode.

Newt's state is the snapshot of θ_t per parameter (``opt.state[p]``) and a few
0-d tensors per group (``group["newt"]``); the inner optimizer's state is its
own and newt adds nothing to it. The step itself allocates no parameter-sized
temporary: the displacement s − p is formed in pieces of at most
``newt.functional.CHUNK`` elements.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import newt
from benchmarks.overhead import live_bytes
from newt import functional as F
from tests.helpers import pause_in_inner_step

MODES = ("closure", "free", "reuse")
GROUP_BUDGET = 1024  # bytes of 0-d/small tensors newt may keep per parameter group


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    model[2].double()
    model.frozen = torch.nn.Parameter(torch.ones(1000), requires_grad=False)
    model.unused = torch.nn.Parameter(torch.ones(2000))  # never receives a gradient
    return model


def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model[2](model[1](model[0](x)).double()).pow(2).mean()


def _inner(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = [{"params": [model[0].weight, model[0].bias, model.frozen]},
              {"params": [*model[2].parameters(), model.unused]}]
    if name == "adam":
        return torch.optim.Adam(groups, lr=1e-2)
    if name == "adam_tensor_lr":
        return torch.optim.Adam(groups, lr=torch.tensor(1e-2), foreach=False)
    return torch.optim.SGD(groups, lr=1e-2, momentum=0.9)


def _train(model, opt, mode: str, steps: int = 6) -> None:
    """Closure mode on a new batch each step; ``reuse`` passes the same closure (one batch)."""
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    batch = [x]

    def closure():
        opt.zero_grad()
        loss = _forward(model, batch[0])
        loss.backward()
        return loss

    for i in range(steps):
        if mode != "reuse":
            batch[0] = x + 0.1 * i
        if mode == "free":
            closure()
            opt.step()
        else:
            opt.step(closure)


def _run(mode: str, inner_name: str):
    model = _model()
    opt = newt.NewtOptimizer(_inner(inner_name, model), reuse_lookahead=mode == "reuse")
    _train(model, opt, mode)
    return model, opt


@pytest.mark.parametrize("inner_name", ["sgd", "adam", "adam_tensor_lr"])
@pytest.mark.parametrize("mode", MODES)
def test_newt_state_is_at_most_one_buffer_per_parameter(mode, inner_name):
    model, opt = _run(mode, inner_name)
    trained = [p for p in model.parameters() if p.requires_grad and p is not model.unused]
    param_bytes = sum(p.numel() * p.element_size() for p in trained)

    per_param = live_bytes(dict(opt.state))
    per_group = [live_bytes(g.get("newt", {})) for g in opt.param_groups]
    extra = live_bytes(opt.__dict__.get("_reuse"))  # the cached lookahead loss, if any
    assert per_param <= param_bytes
    assert all(b <= GROUP_BUDGET for b in per_group), per_group
    assert per_param + sum(per_group) + extra <= param_bytes + GROUP_BUDGET * len(per_group)

    # Exactly one snapshot per trained parameter, none for frozen or gradient-less ones.
    assert {id(p) for p in opt.state} == {id(p) for p in trained}
    for p, state in opt.state.items():
        tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
        assert sum(t.numel() for t in tensors) == p.numel()


@pytest.mark.parametrize("mode", MODES)
def test_newt_adds_nothing_to_the_inner_optimizers_state(mode):
    _, opt = _run(mode, "adam")
    plain_model = _model()
    plain = _inner("adam", plain_model)
    _train(plain_model, plain, "free", steps=2)
    keys = {k for s in plain.state.values() for k in s}
    assert {k for s in opt.inner.state.values() for k in s} == keys
    assert len(opt.inner.state) == len(plain.state)


class _FreshAllocations(TorchDispatchMode):
    """Record the element count of every op output that owns new storage."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[str, int]] = []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            inputs = {t.untyped_storage().data_ptr()
                      for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    self.sizes.append((str(func), t.numel()))
        return out


@pytest.mark.parametrize("mode", MODES)
def test_a_step_allocates_no_parameter_sized_temporary(mode, monkeypatch):
    """Outside the closure and the inner step, nothing larger than a CHUNK is allocated."""
    monkeypatch.setattr(F, "CHUNK", 256)
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 40))  # 2560 elements = 10 chunks
    x = torch.randn(16, 40)
    opt = newt.NewtOptimizer(torch.optim.SGD([weight], lr=1e-2), reuse_lookahead=mode == "reuse")
    recorder = _FreshAllocations()

    def closure():
        recorder.paused = True
        try:
            opt.zero_grad()
            loss = (x @ weight.t()).pow(2).mean()
            loss.backward()
            return loss
        finally:
            recorder.paused = False

    pause_in_inner_step(opt, recorder)
    for i in range(4):
        if i == 1:
            recorder.sizes.clear()  # the first step creates the snapshots: state, not temporary
        if mode == "free":
            closure()
            with recorder:
                opt.step()
        else:
            with recorder:
                opt.step(closure)
    assert recorder.sizes, "the recorder saw nothing"
    largest = max(recorder.sizes, key=lambda s: s[1])
    assert largest[1] <= F.CHUNK, largest
