"""The α rule (``newt.rule.update_lr``) on scalars, and the named presets."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import newt
from newt.presets import DEFAULT, PRESETS, SEED
from newt.rule import Safeguard, update_lr

NO_CLAMPS = {
    "gamma": 1.0, "eps": 0.0, "lr_min": 0.0, "lr_max": math.inf,
    "factor_min": 0.0, "factor_max": math.inf, "backoff": 1.0,
}
RULE_KEYS = (
    "update", "gamma", "eps", "lr_min", "lr_max", "factor_min", "factor_max", "backoff",
    "nonconvex_factor", "nonfinite_factor",
)
# The options of the default preset that update_lr takes as keywords.
DEFAULT_RULE = {k: DEFAULT[k] for k in RULE_KEYS}


def t64(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def run(lr, a, b, l0=None, l1=None, **options):
    return update_lr(
        t64(lr), t64(a), t64(b),
        None if l0 is None else t64(l0), None if l1 is None else t64(l1), **options,
    )


pos = st.floats(min_value=1e-6, max_value=1e6)
lrs = st.floats(min_value=-6, max_value=1).map(lambda e: 10.0**e)
reals = st.floats(min_value=-1e6, max_value=1e6)
anything = st.one_of(reals, st.sampled_from([math.nan, math.inf, -math.inf, 0.0]))


# ----------------------------------------------------------------------------- the Newton step
@given(lr=lrs, a=pos, frac=st.floats(min_value=-50.0, max_value=0.999))
def test_gradient_difference_step_is_alpha_times_one_plus_b_over_c(lr, a, frac):
    b = frac * a  # C = A − B > 0 and 1 + B/C = A/C > 0
    c = a - b
    res = run(lr, a, b, **NO_CLAMPS)
    assert res.lr.item() == pytest.approx(lr * (1 + b / c), rel=1e-12)
    assert int(res.safeguard) == Safeguard.NEWTON
    assert bool(res.finite)
    assert res.curvature.item() == pytest.approx(c, rel=1e-12)


@given(lr=lrs, b=reals, c=pos, drop=pos)
def test_loss_difference_step_is_alpha_times_one_plus_b_over_c(lr, b, c, drop):
    assume(c + b > 1e-9 * c)  # Newton factor 1 + B/C positive
    l0 = 10.0 + drop
    # Choose L1 so that C = 2 (L0 − L1 − B) and L1 < L0.
    l1 = l0 - b - c / 2
    assume(l1 < l0)
    c_exact = 2 * (l0 - l1 - b)  # the C the rule sees after rounding of l1
    assume(c_exact > 0 and c_exact + b > 0)
    res = run(lr, 1.0, b, l0, l1, curvature="loss", **NO_CLAMPS)
    assert res.curvature.item() == pytest.approx(c_exact, rel=1e-12, abs=1e-12)
    assert res.lr.item() == pytest.approx(lr * (1 + b / c_exact), rel=1e-9)
    assert int(res.safeguard) == Safeguard.NEWTON


@given(lr=lrs, a=pos, frac=st.floats(min_value=-50.0, max_value=0.999),
       gamma=st.floats(min_value=0.0, max_value=1.0))
def test_log_update_takes_newton_factor_to_the_power_gamma(lr, a, frac, gamma):
    b = frac * a
    f = 1 + b / (a - b)
    res = run(lr, a, b, **{**NO_CLAMPS, "gamma": gamma})
    assert res.lr.item() == pytest.approx(lr * f**gamma, rel=1e-10)


@given(lr=lrs, a=pos, frac=st.floats(min_value=-50.0, max_value=0.999),
       gamma=st.floats(min_value=0.0, max_value=1.0))
def test_linear_update_takes_one_plus_gamma_times_newton_increment(lr, a, frac, gamma):
    b = frac * a
    f = 1 + b / (a - b)
    res = run(lr, a, b, update="linear", **{**NO_CLAMPS, "gamma": gamma})
    assert res.lr.item() == pytest.approx(lr * (1 + gamma * (f - 1)), rel=1e-10, abs=1e-300)


@given(lr=lrs, a=reals, b=reals, l0=reals, l1=reals,
       curvature=st.sampled_from(["gradient", "loss"]))
def test_gamma_zero_never_changes_alpha_on_finite_inputs(lr, a, b, l0, l1, curvature):
    opts = {**DEFAULT_RULE, "gamma": 0.0, "lr_min": 0.0, "lr_max": math.inf}
    res = run(lr, a, b, l0, l1, curvature=curvature, **opts)
    assert res.lr.item() == lr


# ----------------------------------------------------------------------------- safeguards
@given(lr=lrs, a=anything, b=anything, l0=anything, l1=anything,
       curvature=st.sampled_from(["gradient", "loss"]), update=st.sampled_from(["log", "linear"]))
def test_new_alpha_is_finite_and_within_lr_bounds_for_any_inputs(
    lr, a, b, l0, l1, curvature, update
):
    lr = min(max(lr, DEFAULT["lr_min"]), DEFAULT["lr_max"])
    res = run(lr, a, b, l0, l1, curvature=curvature, **{**DEFAULT_RULE, "update": update})
    new = res.lr.item()
    assert math.isfinite(new)
    assert DEFAULT["lr_min"] <= new <= DEFAULT["lr_max"]
    # The per-step factor obeys the factor clamps (damped by γ in log mode), except
    # after a non-finite input.
    if bool(res.finite):
        power = DEFAULT["gamma"] if update == "log" else 1.0
        ratio = new / lr
        assert ratio <= DEFAULT["factor_max"] ** power * (1 + 1e-12) or new == DEFAULT["lr_min"]
        assert ratio >= DEFAULT["factor_min"] ** power * (1 - 1e-12) or new == DEFAULT["lr_max"]


@pytest.mark.parametrize(
    ("a", "b", "l0", "l1"),
    [
        (math.nan, 1.0, None, None),
        (1.0, math.inf, None, None),
        (1.0, 0.5, math.nan, 1.0),
        (1.0, 0.5, 1.0, math.inf),
        (-math.inf, 0.5, 1.0, 0.5),
    ],
)
def test_nonfinite_input_shrinks_alpha_by_nonfinite_factor(a, b, l0, l1):
    res = run(0.5, a, b, l0, l1, **DEFAULT_RULE)
    assert not bool(res.finite)
    assert int(res.safeguard) == Safeguard.NONFINITE
    assert res.lr.item() == pytest.approx(0.5 * DEFAULT["nonfinite_factor"])


def test_zero_slopes_keep_alpha_with_no_information():
    res = run(0.3, 0.0, 0.0, 1.0, 1.0, **DEFAULT_RULE)
    assert res.lr.item() == 0.3
    assert int(res.safeguard) == Safeguard.NO_INFORMATION
    assert bool(res.finite)


@given(lr=st.floats(min_value=1e-3, max_value=1.0), a=pos, frac=st.floats(-50.0, 0.999),
       rise=pos)
def test_loss_increase_caps_factor_at_backoff(lr, a, frac, rise):
    b = frac * a
    res = run(lr, a, b, 1.0, 1.0 + rise, **DEFAULT_RULE)
    cap = max(DEFAULT["backoff"], DEFAULT["factor_min"]) ** DEFAULT["gamma"]
    assert res.lr.item() <= lr * cap * (1 + 1e-12)
    assert res.lr.item() < lr
    assert int(res.safeguard) == Safeguard.LOSS_INCREASE


def test_loss_increase_with_newton_factor_below_backoff_keeps_newton_factor():
    # f = 1 + B/C = 0.25 < backoff: the cap does not raise it (γ = 1, no clamps).
    a, b = 1.0, -3.0  # C = 4, f = 1 − 3/4 = 0.25
    res = run(1.0, a, b, 1.0, 2.0, **{**NO_CLAMPS, "backoff": 0.5})
    assert res.lr.item() == pytest.approx(0.25)


@pytest.mark.parametrize(("a", "b"), [(1.0, 1.0), (1.0, 2.0), (-1.0, 0.5)])
def test_nonpositive_curvature_grows_alpha_by_nonconvex_factor(a, b):
    # C = A − B ≤ 0.
    res = run(0.01, a, b, **DEFAULT_RULE)
    expected = DEFAULT["nonconvex_factor"] ** DEFAULT["gamma"]
    assert expected > 1
    assert res.lr.item() == pytest.approx(0.01 * expected)
    assert int(res.safeguard) == Safeguard.NONPOSITIVE_CURVATURE


def test_huge_newton_factor_is_clamped_to_factor_max_before_damping():
    res = run(0.01, 1.0, 0.999, **DEFAULT_RULE)  # f = 1000
    assert res.lr.item() == pytest.approx(0.01 * DEFAULT["factor_max"] ** DEFAULT["gamma"])
    assert int(res.safeguard) == Safeguard.FACTOR_CLAMP


def test_tiny_newton_factor_is_clamped_to_factor_min_before_damping():
    res = run(0.01, 1.0, -1e6, **DEFAULT_RULE)  # f ≈ 1e-6
    assert res.lr.item() == pytest.approx(0.01 * DEFAULT["factor_min"] ** DEFAULT["gamma"])
    assert int(res.safeguard) == Safeguard.FACTOR_CLAMP


def test_linear_update_clamps_the_damped_factor():
    opts = {**NO_CLAMPS, "update": "linear", "gamma": 0.5, "factor_max": 1.05}
    res = run(0.01, 1.0, 0.999, **opts)  # f = 1000, 1 + γ(f − 1) ≈ 500
    assert res.lr.item() == pytest.approx(0.01 * 1.05)


def reference_lr(lr, a, b, l0, l1, curvature, o):
    """The documented rule (newt.rule.newton_update), in plain Python floats."""
    c = a - b if curvature == "gradient" else 2 * (l0 - l1 - b)
    values = [a, b, c] + ([l0, l1] if l0 is not None else [])
    if not all(math.isfinite(v) for v in values):
        f = o["nonfinite_factor"]
    elif a == 0 and b == 0:
        f = 1.0
    else:
        convex = c > o["eps"] * (abs(a) + abs(b))
        if convex:
            f = 1 + b / c
            if o["update"] == "linear":
                f = 1 + o["gamma"] * (f - 1)
        else:
            f = o["nonconvex_factor"]
        if l0 is not None and l1 > l0:
            f = min(f, o["backoff"])
        f = min(max(f, o["factor_min"]), o["factor_max"])
        if o["update"] == "log":
            f = max(f, 2.2250738585072014e-308) ** o["gamma"]
    return min(max(lr * f, o["lr_min"]), o["lr_max"])


rule_options = st.fixed_dictionaries({
    "update": st.sampled_from(["log", "linear"]),
    "gamma": st.floats(0.0, 1.0),
    "eps": st.sampled_from([0.0, 1e-9, 1e-6, 1e-3]),
    "lr_min": st.sampled_from([0.0, 1e-8, 1e-4]),
    "lr_max": st.sampled_from([1.0, 10.0, math.inf]),
    "factor_min": st.floats(0.0, 1.0),
    "factor_max": st.floats(1.0, 10.0),
    "backoff": st.floats(0.01, 1.0),
    "nonconvex_factor": st.floats(0.5, 4.0),
    "nonfinite_factor": st.floats(0.01, 1.0),
})


@given(lr=lrs, a=anything, b=anything, l0=st.none() | anything, l1=anything,
       curvature=st.sampled_from(["gradient", "loss"]), options=rule_options)
def test_update_lr_follows_the_documented_rule(lr, a, b, l0, l1, curvature, options):
    if curvature == "loss" and l0 is None:
        l0 = 1.0
    l1 = None if l0 is None else l1
    res = run(lr, a, b, l0, l1, curvature=curvature, **options)
    expected = reference_lr(lr, a, b, l0, l1, curvature, options)
    assert res.lr.item() == pytest.approx(expected, rel=1e-9, abs=1e-300)
    c = a - b if curvature == "gradient" else 2 * (l0 - l1 - b)
    values = [a, b, c] + ([l0, l1] if l0 is not None else [])
    assert bool(res.finite) == all(math.isfinite(v) for v in values)


def test_alpha_is_clamped_to_lr_max():
    res = run(DEFAULT["lr_max"], 1.0, 0.5, **DEFAULT_RULE)  # f = 2: wants to double
    assert res.lr.item() == DEFAULT["lr_max"]
    assert int(res.safeguard) == Safeguard.LR_CLAMP


def test_loss_curvature_without_losses_raises():
    with pytest.raises(RuntimeError, match="curvature='loss'"):
        run(0.1, 1.0, 0.5, curvature="loss")


def test_result_dtype_is_promoted_from_lr_and_slopes():
    res = update_lr(t64(0.1), torch.tensor(1.0), torch.tensor(0.5), **NO_CLAMPS)
    assert res.lr.dtype == torch.float64
    assert res.lr.item() == pytest.approx(0.2)


def test_safeguard_names_are_the_documented_ones():
    assert {s.name.lower() for s in Safeguard} == {
        "newton", "factor_clamp", "lr_clamp", "loss_increase", "nonpositive_curvature",
        "no_information", "nonfinite", "first_step", "skipped", "growth", "gated",
        "overshoot", "stall",
    }


# ----------------------------------------------------------------------------- presets
def test_seed_preset_constants_are_those_of_the_seed_project():
    assert PRESETS["seed"] is SEED
    assert SEED["gamma"] == 1e-3
    assert SEED["eps"] == 1e-9
    assert (SEED["factor_min"], SEED["factor_max"]) == (0.0, 1.05)
    assert SEED["backoff"] == 0.1
    assert SEED["nonconvex_factor"] == 1.0
    assert (SEED["lr_min"], SEED["lr_max"]) == (1e-7, 1.0)
    assert SEED["update"] == "linear"
    assert SEED["curvature"] == "gradient"


def test_seed_preset_is_constructible_and_sets_its_constants_on_the_groups():
    w = torch.nn.Parameter(torch.ones(2))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1), preset="seed")
    options = opt.param_groups[0]["newt"]
    for name, value in SEED.items():
        assert options[name] == value


def test_keyword_options_override_the_preset():
    w = torch.nn.Parameter(torch.ones(2))
    opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.1), preset="seed", gamma=0.25)
    assert opt.param_groups[0]["newt"]["gamma"] == 0.25
    assert opt.param_groups[0]["newt"]["factor_max"] == SEED["factor_max"]


@given(lr=st.floats(min_value=1e-7, max_value=1.0), a=reals, b=reals, l0=reals, l1=reals)
def test_seed_rule_grows_alpha_at_most_five_percent_and_cuts_it_tenfold_on_loss_increase(
    lr, a, b, l0, l1
):
    opts = {k: SEED[k] for k in RULE_KEYS}
    res = run(lr, a, b, l0, l1, **opts)
    new = res.lr.item()
    assert SEED["lr_min"] <= new <= SEED["lr_max"]
    assert new <= max(lr * 1.05 * (1 + 1e-12), SEED["lr_min"])
    if l1 > l0 and (a != 0 or b != 0):
        assert new <= max(lr * 0.1 * (1 + 1e-12), SEED["lr_min"])


@pytest.mark.parametrize("gamma", [1.0, 0.5, 0.0])
def test_exp_update_is_the_first_order_log_step(gamma):
    """update="exp": α_{t+1} = α·exp(γ·B/C), with the same clamps as update="log"."""
    lr, A, B = torch.tensor(0.3, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64), \
        torch.tensor(0.5, dtype=torch.float64)
    C = A - B
    result = newt.rule.newton_update(lr, A, B, C, gamma=gamma, update="exp")
    assert float(result.lr) == pytest.approx(0.3 * math.exp(gamma * 0.5 / 1.5), rel=1e-12)
    clamped = newt.rule.newton_update(lr, A, B, C, gamma=gamma, update="exp", factor_max=1.1)
    assert float(clamped.lr) == pytest.approx(0.3 * 1.1**gamma, rel=1e-12)


def test_exp_update_has_no_downward_drift_under_zero_mean_slope_noise():
    """With B = ±b (zero mean) and fixed C, log(1 + B/C) averages below 0 (α drifts down);
    the exp update's log-step B/C averages exactly 0."""
    lr = torch.tensor(1.0, dtype=torch.float64)
    A, C = torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for update, drifts in (("log", True), ("exp", False)):
        slopes = [torch.tensor(b, dtype=torch.float64) for b in (0.6, -0.6)]
        logs = [math.log(float(newt.rule.newton_update(lr, A, B, C, update=update).lr))
                for B in slopes]
        assert (sum(logs) < -1e-3) is drifts
