"""newt.lookahead: the second closure evaluation sees the first one's dropout masks and
leaves BatchNorm's running statistics alone; an undone step restores them."""

from __future__ import annotations

import inspect
import sys
import warnings

import pytest
import torch
from sklearn.datasets import load_digits

import newt
from newt import lookahead as la


def digits_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return (torch.tensor(x[:n] / 16.0, dtype=torch.float32),
            torch.tensor(y[:n], dtype=torch.int64))


def dropout_bn_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
        torch.nn.Dropout(0.5), torch.nn.Linear(32, 10),
    )


def loss_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)


def bn_state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for b in model[1].buffers()]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


def test_lookahead_at_the_same_point_repeats_the_first_evaluation_exactly():
    model, (x, y) = dropout_bn_mlp(), digits_batch()
    with la.capture() as saved:
        first = loss_of(model, x, y)
    after_first = bn_state(model)
    with la.lookahead(saved):
        second = loss_of(model, x, y)
    assert torch.equal(first, second)  # same dropout masks, same batch statistics
    assert_same(bn_state(model), after_first)
    assert int(model[1].num_batches_tracked) == 1
    # Without the context the masks differ and BatchNorm counts the batch twice.
    third = loss_of(model, x, y)
    assert not torch.equal(first, third)
    assert int(model[1].num_batches_tracked) == 2


def test_bn_updates_once_per_pair_and_rng_stream_matches_one_evaluation():
    model, (x, y) = dropout_bn_mlp(), digits_batch()
    reference = dropout_bn_mlp()
    torch.manual_seed(5)
    for _ in range(4):
        loss_of(reference, x, y)
    expected_draw = torch.rand(3)
    torch.manual_seed(5)
    for step in range(4):
        with la.capture() as saved:
            loss_of(model, x, y)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.999)  # a step between the two evaluations
        with la.lookahead(saved):
            loss_of(model, x, y)
        assert int(model[1].num_batches_tracked) == step + 1
    assert torch.equal(torch.rand(3), expected_draw)


def test_lookahead_running_stats_equal_those_after_the_first_evaluation():
    model, (x, y) = dropout_bn_mlp(), digits_batch()
    with la.capture() as saved:
        loss_of(model, x, y)
    after_first = bn_state(model)
    with torch.no_grad():
        model[0].weight.add_(0.5)  # moves the batch statistics a lot
    with la.lookahead(saved):
        loss_of(model, x, y)
    assert_same(bn_state(model), after_first)


def test_restore_model_state_undoes_the_step_for_bn():
    model, (x, y) = dropout_bn_mlp(), digits_batch()
    loss_of(model, x, y)
    before = bn_state(model)
    with la.capture() as saved:
        loss_of(model, x, y)
    with la.lookahead(saved):
        loss_of(model, x, y)
    assert not torch.equal(bn_state(model)[0], before[0])
    la.restore_model_state(saved)
    assert_same(bn_state(model), before)
    assert saved.found == 1
    # The device-side form: restore only where keep is false.
    loss_of(model, x, y)
    after = bn_state(model)
    la.restore_model_state(saved, keep=torch.tensor(True))
    assert_same(bn_state(model), after)
    la.restore_model_state(saved, keep=torch.tensor(False))
    assert_same(bn_state(model), before)


def test_reuse_form_keeps_the_lookahead_update_and_undo_still_restores():
    model, (x, y) = dropout_bn_mlp(), digits_batch()
    before = bn_state(model)
    with la.capture() as saved:
        loss_of(model, x, y)
    with la.lookahead(saved, freeze_buffers=False):
        loss_of(model, x, y)
    assert int(model[1].num_batches_tracked) == 2  # the lookahead is the next step's update
    la.restore_model_state(saved)
    assert_same(bn_state(model), before)


def test_hooks_are_removed_even_when_the_closure_raises():
    from torch.nn.modules import module as module_mod

    hooks = len(module_mod._global_forward_pre_hooks)
    model, (x, y) = dropout_bn_mlp(), digits_batch()
    with pytest.raises(ZeroDivisionError), la.capture():
        loss_of(model, x, y)
        raise ZeroDivisionError
    with la.capture() as saved:
        loss_of(model, x, y)
    after_first = bn_state(model)
    with pytest.raises(ZeroDivisionError), la.lookahead(saved):
        loss_of(model, x, y)
        raise ZeroDivisionError
    assert len(module_mod._global_forward_pre_hooks) == hooks
    assert_same(bn_state(model), after_first)  # restored on the way out


@pytest.mark.parametrize("dynamo", [False, True], ids=["no_compile", "compiled"])
def test_capture_saves_bn_and_leaves_the_warning_filters_alone(dynamo, monkeypatch):
    """Without torch.compile in the process the capture does not touch the warning
    filters; with a compiled module, torch's warning about global hooks (which the
    capture's hook would trigger) does not reach the user. BN's buffers are saved in both."""
    model = dropout_bn_mlp()
    x, y = digits_batch()
    if dynamo:
        target = torch.compile(model, backend="eager")
    else:
        monkeypatch.delitem(sys.modules, "torch._dynamo", raising=False)
        target = model
    before = bn_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        filters = warnings.filters
        with la.capture() as state:
            # catch_warnings would have put a copy of the filter list in place
            assert (warnings.filters is filters) is not dynamo
            loss_of(target, x, y).backward()
    assert state.found == 1
    la.restore_model_state(state)
    assert_same(bn_state(model), before)


def test_eval_mode_and_instance_norm_with_running_stats():
    torch.manual_seed(0)
    inorm = torch.nn.InstanceNorm1d(4, track_running_stats=True)
    frozen_bn = torch.nn.BatchNorm1d(4).eval()
    x = torch.randn(3, 4, 5)
    with la.capture() as saved:
        inorm(x)
        frozen_bn(x)
    assert saved.found == 1  # the InstanceNorm; the BatchNorm in eval mode changes nothing
    after = inorm.running_mean.clone()
    assert not torch.equal(after, torch.zeros(4))
    with la.lookahead(saved):
        inorm(x * 3)
    assert torch.equal(inorm.running_mean, after)
    la.restore_model_state(saved)
    assert torch.equal(inorm.running_mean, torch.zeros(4))


class RunningMean(torch.nn.Module):
    """A custom module with a running buffer the hooks know nothing about."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.mean.mul_(0.9).add_(0.1 * x.mean(0))
        return x - self.mean


def test_explicit_modules_cover_custom_running_buffers():
    model = torch.nn.Sequential(RunningMean(), torch.nn.BatchNorm1d(3))
    x = torch.randn(8, 3)
    with la.capture(modules=model) as saved:
        model(x)
    after = [b.clone() for b in model.buffers()]
    with la.lookahead(saved):
        model(x + 1)
    assert_same([b.clone() for b in model.buffers()], after)
    la.restore_model_state(saved)
    assert torch.equal(model[0].mean, torch.zeros(3))
    assert int(model[1].num_batches_tracked) == 0


def test_bad_arguments():
    with pytest.raises(TypeError, match="modules"), la.capture(modules=3):
        pass
    with pytest.raises(TypeError, match="ModelState"), la.lookahead("state"):
        pass
    with pytest.raises(TypeError, match="ModelState"):
        la.restore_model_state(None)
    with pytest.raises(TypeError, match="RNGState"):
        la.restore_rng(torch.get_rng_state())


# ---------------------------------------------------------------------------- in NewtOptimizer
CORE_V2 = "process_group" in inspect.signature(newt.NewtOptimizer).parameters
needs_core_v2 = pytest.mark.skipif(not CORE_V2, reason="wired into the core v2")


def newt_closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss
    return closure


@needs_core_v2
def test_closure_training_with_dropout_and_bn_keeps_alpha_and_one_bn_update_per_step():
    x_all, y_all = digits_batch(1024)
    model = dropout_bn_mlp()
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=1e-3))
    undone = 0
    for t in range(100):
        i = (t * 64) % 960
        before = [p.detach().clone() for p in model.parameters()]
        bn_before = bn_state(model)
        opt.step(newt_closure(opt, model, x_all[i:i + 64], y_all[i:i + 64]))
        if all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)):
            undone += 1
            assert_same(bn_state(model), bn_before)  # an undone step leaves BN as it was
    # Once per kept step; a plain lookahead made 2 per step and collapsed α to lr_min.
    assert int(model[1].num_batches_tracked) == 100 - undone
    assert undone <= 10
    assert opt.alphas[0] > 1e-3


@needs_core_v2
def test_an_undone_step_restores_bn_and_reuse_updates_once():
    x, y = digits_batch()
    model = dropout_bn_mlp().eval()
    model[1].train()  # BN updates, dropout off: a deterministic closure for reuse
    opt = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=1e-2),
                             reuse_lookahead=True, controller="newton")
    closure = newt_closure(opt, model, x, y)
    for _ in range(5):
        opt.step(closure)
    assert int(model[1].num_batches_tracked) == 5 + 1  # the last lookahead is step 6's update
    # A step far too large raises the loss: newt undoes it, and BN with it.
    opt2 = newt.NewtOptimizer(torch.optim.SGD(model.parameters(), lr=1e3), lr_max=1e4,
                              controller="newton")
    bn_before = bn_state(model)
    params_before = [p.detach().clone() for p in model.parameters()]
    opt2.step(newt_closure(opt2, model, x, y))
    assert all(torch.equal(a, b) for a, b in zip(params_before, model.parameters(), strict=True))
    assert_same(bn_state(model), bn_before)
