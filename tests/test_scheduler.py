"""The seed-compatible scheduler ``newt.Newt``: its usage loop, groups, resume, safeguards."""

from __future__ import annotations

import io
import math
import warnings
from collections import Counter

import pytest
import torch
from torch import nn

import newt
from newt import Newt, NewtConfig
from newt.rule import update_lr


def _digits(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return torch.tensor(x[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


def _mlp(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(64, 32)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(32))
    layers += [nn.ReLU(), nn.Linear(32, 10)]
    return nn.Sequential(*layers)


def _seed_step(model, loss_criterion, optimizer, newt_, x, y) -> torch.Tensor:
    """One iteration of the seed README's loop."""
    optimizer.zero_grad()
    y_hat = model(x)
    loss = loss_criterion(y_hat, y)
    loss.backward()
    optimizer.step()
    newt_.step_setup(loss, x, y)
    newt_.step()
    return loss


def _batches(x, y, size=64):
    for i in range(0, len(x), size):
        yield x[i:i + size], y[i:i + size]


# ----------------------------------------------------------------------------- the seed's loop
@pytest.mark.parametrize("use_alternate_approx", [False, True])
def test_seed_readme_loop_runs_unchanged_and_learns_on_digits(use_alternate_approx):
    x_all, y_all = _digits(1024)
    device = torch.device("cpu")
    model = _mlp()
    loss_criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train_data_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_all, y_all), batch_size=64, shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )

    # -- verbatim from the seed's README, plus bookkeeping
    newt_config = NewtConfig(model=model, loss_criterion=loss_criterion,
                             use_alternate_approx=use_alternate_approx)
    newt_ = Newt(optimizer, newt_config)
    losses, lrs = [], []
    for _epoch in range(4):
        for _batch_idx, (x, y) in enumerate(train_data_loader):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            y_hat = model(x)
            loss = loss_criterion(y_hat, y)
            loss.backward()
            optimizer.step()

            newt_.step_setup(loss, x, y)  # Computes lookahead gradients
            newt_.step()                  # Consumes lookahead gradients
            losses.append(loss.item())
            lrs.append(newt_.get_last_lr()[0])

    assert len(set(lrs)) > 10, "α never moved"
    assert all(isinstance(lr, float) for lr in lrs)
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.5 * first


def test_a_new_newt_every_epoch_like_the_seeds_example_and_old_hooks_go_away():
    import gc

    x_all, y_all = _digits(256)
    model = _mlp(8)
    loss_criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    hooks = len(optimizer._optimizer_step_pre_hooks)
    lrs = []
    for _epoch in range(3):
        newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=loss_criterion,
                                           gamma=0.5))
        for x, y in _batches(x_all, y_all):
            _seed_step(model, loss_criterion, optimizer, newt_, x, y)
        lrs.append(newt_.get_last_lr()[0])
        del newt_
        gc.collect()
        assert len(optimizer._optimizer_step_pre_hooks) == hooks
    assert len(set(lrs)) == 3  # each epoch starts from the α the last one left


# ----------------------------------------------------------------------------- the rule, exactly
def _quadratic_groups(curvatures, lrs):
    """Independent 1-D quadratics L = Σ h_i w_i² / 2, one parameter group each."""
    ws = [nn.Parameter(torch.tensor([1.0], dtype=torch.float64)) for _ in curvatures]
    h = torch.tensor(curvatures, dtype=torch.float64)

    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.ws = nn.ParameterList(ws)

        def forward(self, x):
            return torch.cat(list(self.ws))

    def criterion(w, _y):
        return 0.5 * (h * w**2).sum()

    model = Quadratic()
    optimizer = torch.optim.SGD([{"params": [w], "lr": lr} for w, lr in zip(ws, lrs, strict=True)])
    return model, criterion, optimizer


@pytest.mark.parametrize("use_alternate_approx", [False, True])
def test_lr_becomes_inverse_curvature_on_1d_quadratic_with_gamma_one(use_alternate_approx):
    # The exact line-search step along -∇L is 1/h; start 2 % below it so the seed's
    # factor clamp (1.05) does not bind, and take one full Newton step (γ = 1).
    h = 4.0
    model, criterion, optimizer = _quadratic_groups([h], [1 / h / 1.02])
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion, gamma=1.0,
                                       use_alternate_approx=use_alternate_approx))
    _seed_step(model, criterion, optimizer, newt_, None, None)
    assert newt_.get_last_lr()[0] == pytest.approx(1 / h, rel=1e-12)
    assert newt_.last_safeguards() == ["newton"]


def test_one_lr_per_param_group_each_from_its_own_inner_products():
    curvatures = [4.0, 0.5]
    model, criterion, optimizer = _quadratic_groups(curvatures, [1 / 4.0 / 1.02, 1 / 0.5 / 1.03])
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion, gamma=1.0,
                                       lr_clamp_max=10.0))
    _seed_step(model, criterion, optimizer, newt_, None, None)
    assert newt_.get_last_lr() == pytest.approx([1 / 4.0, 1 / 0.5], rel=1e-12)
    assert [g["lr"] for g in optimizer.param_groups] == newt_.get_last_lr()


def test_multi_group_matches_update_lr_on_hand_computed_inner_products():
    x, y = _digits(128)
    model = _mlp(1)
    criterion = nn.CrossEntropyLoss()
    groups = [{"params": model[0].parameters(), "lr": 0.03},
              {"params": model[2].parameters(), "lr": 0.1}]
    optimizer = torch.optim.SGD(groups, momentum=0.9)
    config = NewtConfig(model=model, loss_criterion=criterion, gamma=0.5, lr_clamp_max=10.0)
    newt_ = Newt(optimizer, config)
    for _ in range(3):
        _seed_step(model, criterion, optimizer, newt_, x, y)

    # One more step, reproduced by hand: d = θ_t − θ_{t+1}, A = ⟨∇L(θ_t), d⟩, B = ⟨∇L(θ_{t+1}), d⟩.
    lrs = [g["lr"] for g in optimizer.param_groups]
    before = [[p.detach().clone() for p in g["params"]] for g in optimizer.param_groups]
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    grads_t = [[p.grad.clone() for p in g["params"]] for g in optimizer.param_groups]
    optimizer.step()
    after = [[p.detach().clone() for p in g["params"]] for g in optimizer.param_groups]
    lookahead_loss = criterion(model(x), y)
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    grads_next = torch.autograd.grad(lookahead_loss, flat)
    newt_.step_setup(loss, x, y)
    newt_.step()

    k = 0
    for gi, lr in enumerate(lrs):
        a = b = torch.zeros((), dtype=torch.float32)
        for s, p, g0 in zip(before[gi], after[gi], grads_t[gi], strict=True):
            a = a + (g0 * (s - p)).sum()
            b = b + (grads_next[k] * (s - p)).sum()
            k += 1
        expected = update_lr(torch.tensor(lr, dtype=torch.float64), a, b, loss.detach(),
                             lookahead_loss.detach(), **config.rule_options()).lr.item()
        assert newt_.get_last_lr()[gi] == pytest.approx(expected, rel=1e-5)
    assert newt_.get_last_lr()[0] != newt_.get_last_lr()[1]


def test_config_defaults_are_the_seed_constants():
    config = NewtConfig()
    assert config.gamma == newt.SEED["gamma"] == 1e-3
    assert config.epsilon == newt.SEED["eps"]
    assert (config.lr_clamp_min, config.lr_clamp_max) == (newt.SEED["lr_min"], newt.SEED["lr_max"])
    assert config.use_alternate_approx is False
    options = config.rule_options()
    assert options["curvature"] == "gradient"
    assert {k: options[k] for k in ("update", "factor_max", "backoff", "nonconvex_factor")} == {
        "update": "linear", "factor_max": 1.05, "backoff": 0.1, "nonconvex_factor": 1.0}
    assert NewtConfig(use_alternate_approx=True).rule_options()["curvature"] == "loss"


# ----------------------------------------------------------------------------- loss difference
def test_loss_difference_mode_records_the_current_loss():
    x_all, y_all = _digits()
    model = _mlp(2)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion,
                                       use_alternate_approx=True))
    seen: Counter[str | None] = Counter()
    for _ in range(3):
        for x, y in _batches(x_all, y_all):
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            newt_.step_setup(loss, x, y)
            assert newt_.core.last_stats()[0].loss == float(loss)
            newt_.step()
            seen.update(newt_.last_safeguards())
    steps = sum(seen.values())
    # The seed compared with a loss it never recorded, so "loss went up" fired at every step.
    assert seen["loss_increase"] < steps / 4, seen
    assert seen["newton"] + seen["factor_clamp"] > steps / 2, seen


# ----------------------------------------------------------------------------- the lookahead
def test_lookahead_updates_batchnorm_running_stats_once_and_keeps_grads():
    x, y = _digits(64)
    criterion = nn.CrossEntropyLoss()
    plain, tracked = _mlp(3, batchnorm=True), _mlp(3, batchnorm=True)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1)
    opt = torch.optim.SGD(tracked.parameters(), lr=0.1)
    newt_ = Newt(opt, NewtConfig(model=tracked, loss_criterion=criterion))
    for _ in range(3):
        opt_plain.zero_grad()
        criterion(plain(x), y).backward()
        opt_plain.step()

        opt.zero_grad()
        loss = criterion(tracked(x), y)
        loss.backward()
        grads = [p.grad.clone() for p in tracked.parameters()]
        opt.step()
        newt_.step_setup(loss, x, y)
        for p, g in zip(tracked.parameters(), grads, strict=True):
            assert torch.equal(p.grad, g)  # step_setup leaves ∇L(θ_t) in .grad
        newt_.step()
    bn_plain, bn = plain[1], tracked[1]
    assert int(bn.num_batches_tracked) == 3
    # α stays 0.1 to ~1e-4 under γ = 1e-3, so the two runs are close, not equal.
    torch.testing.assert_close(bn.running_mean, bn_plain.running_mean, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(bn.running_var, bn_plain.running_var, rtol=1e-3, atol=1e-4)


def test_frozen_parameters_and_parameters_without_grad_are_skipped():
    x, y = _digits(64)
    model = _mlp(4)
    model[0].weight.requires_grad_(False)
    criterion = nn.CrossEntropyLoss()
    extra = nn.Parameter(torch.zeros(3))  # in the optimizer, never in the graph
    optimizer = torch.optim.SGD([{"params": [*model.parameters(), extra], "lr": 0.1},
                                 {"params": [nn.Parameter(torch.ones(2))], "lr": 0.2}])
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion, gamma=0.5))
    for _ in range(3):
        _seed_step(model, criterion, optimizer, newt_, x, y)
    assert newt_.get_last_lr()[0] != 0.1
    assert newt_.get_last_lr()[1] == 0.2  # nothing in that group moved
    assert newt_.last_safeguards()[1] is None


def test_tensor_lr_stays_a_tensor_and_is_updated_in_place():
    x, y = _digits(64)
    model = _mlp(5)
    criterion = nn.CrossEntropyLoss()
    lr = torch.tensor(0.01)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion, gamma=0.5))
    for _ in range(3):
        _seed_step(model, criterion, optimizer, newt_, x, y)
    assert optimizer.param_groups[0]["lr"] is lr
    assert float(lr) != 0.01
    assert isinstance(newt_.get_last_lr()[0], torch.Tensor)


def test_nonfinite_lookahead_undoes_the_step_and_shrinks_lr():
    x, y = _digits(64)
    model = _mlp(6)
    calls = {"n": 0}

    def criterion(y_hat, target):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(y_hat, target)
        return loss * float("nan") if calls["n"] == 4 else loss  # the 2nd step's lookahead

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion))
    _seed_step(model, criterion, optimizer, newt_, x, y)
    lr = newt_.get_last_lr()[0]
    before = [p.detach().clone() for p in model.parameters()]
    _seed_step(model, criterion, optimizer, newt_, x, y)
    assert newt_.last_safeguards() == ["nonfinite"]
    assert newt_.get_last_lr()[0] == pytest.approx(0.1 * lr)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


# ----------------------------------------------------------------------------- resume
def _resume_setup(seed: int = 7):
    model = _mlp(seed, batchnorm=True)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam([{"params": model[0].parameters(), "lr": 3e-3},
                                  {"params": list(model[1].parameters())
                                   + list(model[3].parameters()), "lr": 1e-3}])
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion, gamma=0.3))
    return model, criterion, optimizer, newt_


def _checkpoint(*objs) -> list:
    buffer = io.BytesIO()
    torch.save([o.state_dict() for o in objs], buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("where", ["between_steps", "after_step_setup"])
def test_resume_from_state_dict_is_bit_exact(where):
    x_all, y_all = _digits(384)
    batches = list(_batches(x_all, y_all))
    model, criterion, optimizer, newt_ = _resume_setup()
    for x, y in batches[:4]:
        _seed_step(model, criterion, optimizer, newt_, x, y)
    if where == "after_step_setup":
        x, y = batches[4]
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        newt_.step_setup(loss, x, y)
    saved = _checkpoint(model, optimizer, newt_)

    model2, criterion2, optimizer2, newt2 = _resume_setup(seed=99)  # other initial weights
    for obj, state in zip((model2, optimizer2, newt2), saved, strict=True):
        obj.load_state_dict(state)
    if where == "after_step_setup":
        newt_.step()
        newt2.step()
    for x, y in batches[5:]:
        _seed_step(model, criterion, optimizer, newt_, x, y)
        _seed_step(model2, criterion2, optimizer2, newt2, x, y)
        assert newt2.get_last_lr() == newt_.get_last_lr()
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert newt2.last_epoch == newt_.last_epoch


def test_state_dict_holds_no_model_loss_or_parameter_keys():
    x, y = _digits(64)
    model, criterion, optimizer, newt_ = _resume_setup()
    _seed_step(model, criterion, optimizer, newt_, x, y)
    state = newt_.state_dict()

    def walk(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                assert isinstance(k, (str, int)), type(k)
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        else:
            assert obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)), type(obj)
            assert not isinstance(obj, nn.Parameter)

    walk(state)
    assert set(state["config"]) == {"use_alternate_approx", "gamma", "epsilon",
                                    "lr_clamp_min", "lr_clamp_max"}
    assert "snapshots" not in state  # θ_t is not needed between steps


def test_load_state_dict_restores_config_numbers_but_keeps_model():
    model, _, _, newt_ = _resume_setup()
    state = newt_.state_dict()
    state["config"]["gamma"] = 0.25
    newt_.load_state_dict(state)
    assert newt_.config.gamma == 0.25
    assert newt_.config.model is model
    with pytest.raises(ValueError, match="not a Newt state_dict"):
        newt_.load_state_dict({"model": model})


# ----------------------------------------------------------------------------- misuse
def test_step_setup_before_optimizer_step_is_an_error():
    x, y = _digits(16)
    model = _mlp()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion))
    loss = criterion(model(x), y)
    with pytest.raises(RuntimeError, match=r"must follow optimizer.step\(\)"):
        newt_.step_setup(loss, x, y)


def test_step_without_step_setup_warns_once_and_keeps_lr():
    x, y = _digits(16)
    model = _mlp()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion))
    with pytest.warns(RuntimeWarning, match="step_setup"):
        for _ in range(2):
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
            newt_.step()
    assert newt_.get_last_lr() == [0.1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        newt_.step()  # warned once already


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda m: (newt.NewtOptimizer(torch.optim.SGD(m.parameters(), lr=0.1)),
                    NewtConfig(model=m, loss_criterion=nn.MSELoss())), TypeError, "already learns"),
        (lambda m: (torch.optim.SGD(m.parameters(), lr=0.1),
                    NewtConfig(loss_criterion=nn.MSELoss())),
         TypeError, r"NewtConfig\(model=...\)"),
        (lambda m: (torch.optim.SGD(m.parameters(), lr=0.1), NewtConfig(model=m)),
         TypeError, "loss_criterion"),
        (lambda m: (torch.optim.SGD(m.parameters(), lr=0.1),
                    NewtConfig(model=m, loss_criterion=nn.MSELoss(), gamma=2.0)),
         ValueError, "gamma"),
        (lambda m: (torch.optim.SGD(m.parameters(), lr=0.1, differentiable=True),
                    NewtConfig(model=m, loss_criterion=nn.MSELoss())),
         RuntimeError, "differentiable"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(make, error, match):
    optimizer, config = make(nn.Linear(2, 1))
    with pytest.raises(error, match=match):
        Newt(optimizer, config)


def test_get_last_lr_is_float_for_float_lr_and_finite():
    x, y = _digits(64)
    model = _mlp()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    newt_ = Newt(optimizer, NewtConfig(model=model, loss_criterion=criterion))
    _seed_step(model, criterion, optimizer, newt_, x, y)
    (lr,) = newt_.get_last_lr()
    assert isinstance(lr, float) and math.isfinite(lr)
