"""Invalid arguments and unsupported set-ups fail early with messages naming the argument."""

from __future__ import annotations

import math

import pytest
import torch

import newt


def sgd(lr: float = 0.1, **kwargs) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=lr, **kwargs)


CONSTRUCTION_ERRORS = [
    # (id, make, exception, message must contain)
    ("negative gamma", lambda: newt.NewtOptimizer(sgd(), gamma=-0.1), ValueError, "gamma"),
    ("gamma above one", lambda: newt.NewtOptimizer(sgd(), gamma=1.5), ValueError, "gamma"),
    ("nan gamma", lambda: newt.NewtOptimizer(sgd(), gamma=float("nan")), ValueError, "gamma"),
    ("lr_min above lr_max", lambda: newt.NewtOptimizer(sgd(), lr_min=1.0, lr_max=0.1),
     ValueError, "lr_min"),
    ("negative lr_min", lambda: newt.NewtOptimizer(sgd(), lr_min=-1e-3), ValueError, "lr_min"),
    ("zero lr_max", lambda: newt.NewtOptimizer(sgd(), lr_max=0.0), ValueError, "lr_max"),
    ("factor_max below one", lambda: newt.NewtOptimizer(sgd(), factor_max=0.9), ValueError,
     "factor_max"),
    ("factor_min above one", lambda: newt.NewtOptimizer(sgd(), factor_min=1.5), ValueError,
     "factor_min"),
    ("negative eps", lambda: newt.NewtOptimizer(sgd(), eps=-1.0), ValueError, "eps"),
    ("zero backoff", lambda: newt.NewtOptimizer(sgd(), backoff=0.0), ValueError, "backoff"),
    ("backoff above one", lambda: newt.NewtOptimizer(sgd(), backoff=2.0), ValueError, "backoff"),
    ("zero nonfinite_factor", lambda: newt.NewtOptimizer(sgd(), nonfinite_factor=0.0),
     ValueError, "nonfinite_factor"),
    ("zero nonconvex_factor", lambda: newt.NewtOptimizer(sgd(), nonconvex_factor=0.0),
     ValueError, "nonconvex_factor"),
    ("unknown curvature", lambda: newt.NewtOptimizer(sgd(), curvature="hessian"), ValueError,
     "curvature"),
    ("unknown update", lambda: newt.NewtOptimizer(sgd(), update="cubic"), ValueError, "update"),
    ("string gamma", lambda: newt.NewtOptimizer(sgd(), gamma="0.5"), TypeError, "gamma"),
    ("bool gamma", lambda: newt.NewtOptimizer(sgd(), gamma=True), TypeError, "gamma"),
    ("unknown option", lambda: newt.NewtOptimizer(sgd(), gama=0.5), TypeError, "gama"),
    ("unknown preset", lambda: newt.NewtOptimizer(sgd(), preset="turbo"), ValueError, "preset"),
    ("inner not an optimizer", lambda: newt.NewtOptimizer([torch.nn.Parameter(torch.ones(2))]),
     TypeError, "inner"),
    ("inner is a NewtOptimizer", lambda: newt.NewtOptimizer(newt.NewtOptimizer(sgd())),
     TypeError, "NewtOptimizer"),
    ("differentiable inner", lambda: newt.NewtOptimizer(sgd(differentiable=True)),
     RuntimeError, "differentiable"),
    ("fused inner", lambda: newt.NewtOptimizer(
        torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=0.1, fused=True)),
     RuntimeError, "fused"),
    ("bad per-group option", lambda: newt.NewtOptimizer(torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.ones(2))], "newt": {"gamma": 3.0}}], lr=0.1)),
     ValueError, "param_groups[0]['newt'](gamma=3.0)"),
    ("unknown per-group option", lambda: newt.NewtOptimizer(torch.optim.SGD(
        [{"params": [torch.nn.Parameter(torch.ones(2))], "newt": {"gama": 0.5}}], lr=0.1)),
     TypeError, "gama"),
    ("maximize inner", lambda: newt.NewtOptimizer(sgd(maximize=True)), RuntimeError,
     "maximize"),
    ("lr above lr_max", lambda: newt.NewtOptimizer(torch.optim.Adam(
        [torch.nn.Parameter(torch.ones(2))], lr=1e6)), ValueError, "lr=1000000.0"),
    ("lr below lr_min", lambda: newt.NewtOptimizer(sgd(lr=1e-12)), ValueError, "lr_min"),
    ("NaN lr", lambda: newt.NewtOptimizer(sgd(lr=math.nan)), ValueError, "lr=nan"),
    ("zero lr_min", lambda: newt.NewtOptimizer(sgd(), preset="seed", gamma=1.0, lr_min=0.0),
     ValueError, "lr_min"),
    ("float16 tensor lr", lambda: newt.NewtOptimizer(torch.optim.SGD(
        [torch.nn.Parameter(torch.ones(2))], lr=torch.tensor(0.01, dtype=torch.float16))),
     ValueError, "float16"),
    ("string reuse_lookahead", lambda: newt.NewtOptimizer(sgd(), reuse_lookahead="no"),
     TypeError, "reuse_lookahead"),
    ("list preset", lambda: newt.NewtOptimizer(sgd(), preset=["seed"]), TypeError, "preset"),
    ("config epsilon", lambda: newt.Newt(torch.optim.SGD([torch.nn.Parameter(torch.ones(2))],
                                                         lr=0.1),
                                         newt.NewtConfig(model=torch.nn.Linear(1, 1),
                                                         loss_criterion=torch.nn.MSELoss(),
                                                         epsilon=-1.0)),
     ValueError, "epsilon=-1.0"),
]


@pytest.mark.parametrize(
    ("make", "exception", "needle"),
    [pytest.param(m, e, n, id=i) for i, m, e, n in CONSTRUCTION_ERRORS],
)
def test_invalid_construction_raises_and_names_the_argument(make, exception, needle):
    with pytest.raises(exception) as info:
        make()
    assert needle in str(info.value)


def test_invalid_option_in_an_added_group_raises_names_the_group_and_adds_nothing():
    opt = newt.NewtOptimizer(sgd())
    with pytest.raises(ValueError) as info:
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))],
                             "newt": {"backoff": 0.0}})
    assert "backoff" in str(info.value) and "param_groups[1]" in str(info.value)
    assert len(opt.param_groups) == len(opt.inner.param_groups) == 1


def test_numpy_scalar_options_are_accepted():
    np = pytest.importorskip("numpy")
    opt = newt.NewtOptimizer(sgd(), gamma=np.float32(0.25), lr_max=np.int64(5))
    assert opt.param_groups[0]["newt"]["gamma"] == 0.25
    assert opt.param_groups[0]["newt"]["lr_max"] == 5.0


def quadratic_opt():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    return w, newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1))


def closure_returning(value_fn):
    w, opt = quadratic_opt()

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return value_fn(loss, w)

    return w, opt, closure


STEP_ERRORS = [
    ("closure returns None", lambda loss, w: None, TypeError, "None"),
    ("closure returns a string", lambda loss, w: "1.0", TypeError, "str"),
    ("closure returns a vector", lambda loss, w: w**2, ValueError, "shape"),
]


@pytest.mark.parametrize(
    ("value_fn", "exception", "needle"),
    [pytest.param(f, e, n, id=i) for i, f, e, n in STEP_ERRORS],
)
def test_bad_closure_result_raises_and_leaves_parameters_alone(value_fn, exception, needle):
    w, opt, closure = closure_returning(value_fn)
    before = w.detach().clone()
    with pytest.raises(exception) as info:
        opt.step(closure)
    assert needle in str(info.value)
    assert "closure" in str(info.value)
    assert torch.equal(w, before)


def test_closure_returning_a_python_float_is_accepted():
    w, opt, closure = closure_returning(lambda loss, w: float(loss))
    assert opt.step(closure) == pytest.approx(5.0)
    assert float((w**2).sum()) < 5.0


def test_non_callable_closure_raises_type_error():
    _, opt = quadratic_opt()
    with pytest.raises(TypeError, match="callable"):
        opt.step(1.0)


def test_sparse_gradients_raise_runtime_error():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = newt.NewtOptimizer(torch.optim.SGD(emb.parameters(), lr=0.1))
    idx = torch.tensor([1, 2, 3])
    before = emb.weight.detach().clone()

    def closure():
        opt.zero_grad()
        loss = emb(idx).pow(2).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="sparse"):
        opt.step(closure)
    assert torch.equal(emb.weight, before)
    closure()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(emb.weight, before)


def test_differentiable_group_added_later_is_refused():
    opt = newt.NewtOptimizer(sgd())
    with pytest.raises(RuntimeError, match="differentiable"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))],
                             "differentiable": True})
