"""State: state_dict round trips, checkpoint resume bit for bit, deepcopy, printing."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from helpers import make_inner, make_mlp, mlp_batches, mlp_closure, mlp_data

import newt

MODES = ["closure", "closure_free", "reuse"]


def build(inner: str, mode: str, seed: int = 0, lr: float = 0.05):
    model = make_mlp(seed)
    opt = newt.NewtOptimizer(make_inner(inner, model.parameters(), lr),
                             reuse_lookahead=(mode == "reuse"))
    return model, opt


def train(model, opt, mode: str, start: int, stop: int) -> None:
    """Steps ``start``..``stop``-1 of a fixed run (full batch, or fixed mini-batches)."""
    x, y = mlp_data()
    batches = list(mlp_batches(stop))
    closure = mlp_closure(model, opt, x, y) if mode != "closure_free" else None
    for t in range(start, stop):
        if mode == "closure_free":
            bx, by = batches[t]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(bx), by).backward()
            opt.step()
        else:
            opt.step(closure)


def save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("inner", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("mode", MODES)
def test_resuming_from_a_checkpoint_gives_the_same_parameters_bit_for_bit(inner, mode):
    straight_model, straight_opt = build(inner, mode)
    train(straight_model, straight_opt, mode, 0, 20)

    model, opt = build(inner, mode)
    train(model, opt, mode, 0, 10)
    checkpoint = save_load({"model": model.state_dict(), "opt": opt.state_dict()})

    fresh_model, fresh_opt = build(inner, mode, seed=123, lr=0.7)  # different init and lr
    fresh_model.load_state_dict(checkpoint["model"])
    fresh_opt.load_state_dict(checkpoint["opt"])
    train(fresh_model, fresh_opt, mode, 10, 20)

    for p, q in zip(straight_model.parameters(), fresh_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert fresh_opt.param_groups[0]["lr"] == straight_opt.param_groups[0]["lr"]
    assert straight_opt.param_groups[0]["lr"] != 0.05  # α was learned along the way


def test_resuming_with_a_scheduler_gives_the_same_parameters_bit_for_bit():
    def run(model, opt, sched, start, stop):
        x, y = mlp_data()
        closure = mlp_closure(model, opt, x, y)
        for _ in range(start, stop):
            opt.step(closure)
            sched.step()

    def fresh(lr=0.05):
        model = make_mlp(0)
        opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=lr))
        return model, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)

    m1, o1, s1 = fresh()
    run(m1, o1, s1, 0, 20)
    m2, o2, s2 = fresh()
    run(m2, o2, s2, 0, 10)
    ckpt = save_load({"m": m2.state_dict(), "o": o2.state_dict(), "s": s2.state_dict()})
    m3, o3, s3 = fresh(0.3)
    m3.load_state_dict(ckpt["m"])
    o3.load_state_dict(ckpt["o"])
    s3.load_state_dict(ckpt["s"])
    run(m3, o3, s3, 10, 20)
    for p, q in zip(m1.parameters(), m3.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_dict_carries_the_inner_state_and_newts_state():
    model, opt = build("adam", "closure")
    train(model, opt, "closure", 0, 3)
    sd = opt.state_dict()
    assert "inner" in sd
    inner_state = sd["inner"]["state"]
    assert inner_state and all("exp_avg" in s for s in inner_state.values())
    learned = opt.param_groups[0]["lr"]
    assert sd["param_groups"][0]["lr"] == learned != 0.05

    model2, opt2 = build("adam", "closure", lr=0.3)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(save_load(sd))
    assert opt2.param_groups[0]["lr"] == learned
    # newt and the inner optimizer still share one set of groups after loading.
    assert opt2.param_groups[0] is opt2.inner.param_groups[0]
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(opt.inner.state[p]["exp_avg"], opt2.inner.state[q]["exp_avg"])


def test_state_dict_is_loadable_with_weights_only():
    model, opt = build("momentum", "closure_free")
    train(model, opt, "closure_free", 0, 4)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert set(loaded) >= {"state", "param_groups", "inner"}


def test_loading_a_plain_optimizer_state_dict_is_refused():
    _, opt = build("sgd", "closure")
    with pytest.raises(ValueError, match="inner"):
        opt.load_state_dict(opt.inner.state_dict())


def test_tensor_lr_stays_the_same_object_after_load_state_dict():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    lr = torch.tensor(0.05)
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=lr))

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    sd = save_load(opt.state_dict())
    w2 = torch.nn.Parameter(w.detach().clone())
    lr2 = torch.tensor(0.9)
    opt2 = newt.NewtOptimizer(torch.optim.SGD([w2], lr=lr2))
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] is lr2
    assert opt2.inner.param_groups[0]["lr"] is lr2
    assert float(lr2) == float(lr)


@pytest.mark.parametrize("reuse", [False, True])
def test_deepcopy_of_model_and_optimizer_steps_identically(reuse):
    x, y = mlp_data()
    model = make_mlp(0)
    opt = newt.NewtOptimizer(torch.optim.Adam(model.parameters(), lr=0.05),
                             reuse_lookahead=reuse)
    opt.step(mlp_closure(model, opt, x, y))
    model2, opt2 = copy.deepcopy((model, opt))
    for _ in range(3):
        opt.step(mlp_closure(model, opt, x, y))
        opt2.step(mlp_closure(model2, opt2, x, y))
    assert opt2.reuse_lookahead is reuse
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
        assert p is not q


def test_printing_shows_the_wrapper_and_the_inner_optimizer():
    model, opt = build("adam", "closure")
    before = repr(opt)
    train(model, opt, "closure", 0, 2)
    text = str(opt)
    for s in (before, text):
        assert s.startswith("NewtOptimizer(")
        assert "Adam" in s
        assert "gamma" in s
