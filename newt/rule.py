r"""The step-size rule: a Newton step on α and the safeguards around it.

All functions here are pure functions of a few scalars, written against the
operations of `newt.scalars` (``where`` and clamps instead of Python ``if``).
Called with Python floats (the host path, for parameters on the CPU) they run as
plain Python; called with 0-d tensors they never force a device-to-host
synchronisation and compile with ``torch.compile(fullgraph=True)``. The two give
the same decisions to rounding (``tests/test_scalars.py``).

Notation (one parameter group, one step). The inner optimizer moves the
parameters by the displacement $d = \theta_t - \theta_{t+1} = \alpha_t u_t$.
Let

$$
A = \langle \nabla L(\theta_t), d \rangle = -\alpha_t\, g_t'(0), \qquad
B = \langle \nabla L(\theta_{t+1}), d \rangle = -\alpha_t\, g_t'(\alpha_t),
$$

where $g_t(\alpha) = L(\theta_t - \alpha u_t)$. Both curvature estimates
give $g_t''(\alpha_t) \approx C / \alpha_t^2$ with

- gradient difference (Retsinas et al. 2023): $C = A - B$;
- loss difference (second-order Taylor of $g_t$ around $\alpha_t$):
  $C = 2\,(L(\theta_t) - L(\theta_{t+1}) - B)$.

The Newton step $\alpha_{t+1} = \alpha_t - g_t'(\alpha_t)/g_t''(\alpha_t)$
then reads $\alpha_{t+1} = \alpha_t\, f$ with the *Newton factor*
$f = 1 + B / C$. On a quadratic both estimates are exact and
$\alpha_t f$ is the exact line-search step along $u_t$.
"""

from __future__ import annotations

import enum
import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from newt.options import NewtOptions
from newt.scalars import TENSORS, Scalar, ops

__all__ = [
    "Curvature",
    "Decision",
    "GatedState",
    "Outcome",
    "Probe",
    "RuleState",
    "Safeguard",
    "StepSizeUpdate",
    "Update",
    "after_step",
    "auto_before_step",
    "auto_init",
    "before_step",
    "curvature_estimate",
    "gated_after_step",
    "gated_before_step",
    "gated_init",
    "gradient_difference",
    "init",
    "loss_difference",
    "newton_after_step",
    "newton_before_step",
    "newton_update",
    "update_lr",
]

Curvature = Literal["gradient", "loss"]
Update = Literal["log", "exp", "linear"]


class Safeguard(enum.IntEnum):
    """Which branch of `update_lr` decided the new α (stored as an int tensor)."""

    NEWTON = 0
    """The (damped) Newton factor was used as is."""
    FACTOR_CLAMP = 1
    """The Newton factor fell outside ``[factor_min, factor_max]`` and was clamped."""
    LR_CLAMP = 2
    """The new α fell outside ``[lr_min, lr_max]`` and was clamped."""
    LOSS_INCREASE = 3
    """The lookahead loss exceeded the current loss: the factor was capped at ``backoff``
    (at ``backoff**gamma`` with ``update="log"``)."""
    NONPOSITIVE_CURVATURE = 4
    """The curvature estimate was not positive: α was multiplied by ``nonconvex_factor``
    (by ``nonconvex_factor**gamma`` with ``update="log"``)."""
    NO_INFORMATION = 5
    """Both inner products were zero (zero gradients or no movement): α kept."""
    NONFINITE = 6
    """A loss or inner product was NaN/inf: the step was undone and α shrunk."""
    FIRST_STEP = 7
    """No lookahead to use yet (the first step): α kept."""
    SKIPPED = 8
    """The gradient at θ_t was not finite: the step was skipped; the parameters kept (α kept
    by the Newton controller, divided by 10 by the gated one)."""
    GROWTH = 9
    """``controller="gated"``, phase 1: the fresh slope was still above half the step's own
    slope, α was doubled."""
    GATED = 10
    """``controller="gated"``: the averaged Newton factor was not significant; α kept."""
    OVERSHOOT = 11
    """``controller="gated"``, closure-free without momentum: the first fresh overshoot
    (ρ = B/A < −1), or the third in a row since (a blow-up under way, H32), capped later
    growth at 0.9α and halved α."""
    STALL = 12
    """``controller="gated"``, closure-free with momentum: the gradient scale along the
    step did not fall over a window as a converging run's does; α × 0.8 and later growth
    capped there. Where the floor (0.3 × the peak α) binds, α does not move, and the cap,
    now below α, stops all later growth: α stays at the floor."""


class StepSizeUpdate(NamedTuple):
    """Result of `update_lr` (Python numbers for float inputs, else 0-d tensors)."""

    lr: Scalar
    """The new step size α_{t+1}."""
    curvature: Scalar
    """The estimate C (so g''(α_t) ≈ C / α_t²)."""
    safeguard: Scalar
    """A `Safeguard` value, as an int64 tensor."""
    finite: Scalar
    """False when the step must be undone (non-finite loss or inner product)."""


def gradient_difference(slope: Scalar, lookahead_slope: Scalar) -> Scalar:
    r"""Gradient-difference curvature (Retsinas et al. 2023, eq. 7): $C = A - B$."""
    return slope - lookahead_slope


def loss_difference(loss: Scalar, lookahead_loss: Scalar, lookahead_slope: Scalar) -> Scalar:
    r"""Loss-difference curvature (second-order Taylor of $g_t$ around $\alpha_t$):
    $C = 2\,(L(\theta_t) - L(\theta_{t+1}) - B)$."""
    return 2.0 * (loss - lookahead_loss - lookahead_slope)


def curvature_estimate(
    slope: Scalar,
    lookahead_slope: Scalar,
    loss: Scalar | None,
    lookahead_loss: Scalar | None,
    curvature: Curvature,
) -> Scalar:
    r"""Return C with $g''(\alpha_t) \approx C/\alpha_t^2$, by the named estimate.

    Args:
        slope: $A = \langle \nabla L(\theta_t), d\rangle$.
        lookahead_slope: $B = \langle \nabla L(\theta_{t+1}), d\rangle$ on the same batch.
        loss: $L(\theta_t)$; needed for ``curvature="loss"``.
        lookahead_loss: $L(\theta_{t+1})$; needed for ``curvature="loss"``.
        curvature: ``"gradient"`` (`gradient_difference`) or ``"loss"``
            (`loss_difference`).
    """
    if curvature == "gradient":
        return gradient_difference(slope, lookahead_slope)
    if loss is None or lookahead_loss is None:
        raise RuntimeError(
            "curvature='loss' needs the loss at θ_t and at θ_{t+1} on the same batch; "
            "only step(closure) provides them. Use curvature='gradient' for closure-free steps."
        )
    return loss_difference(loss, lookahead_loss, lookahead_slope)


def update_lr(
    lr: Scalar,
    slope: Scalar,
    lookahead_slope: Scalar,
    loss: Scalar | None = None,
    lookahead_loss: Scalar | None = None,
    *,
    curvature: Curvature = "gradient",
    **options: float | str,
) -> StepSizeUpdate:
    r"""One safeguarded Newton step on α from a single lookahead on one batch.

    Forms $C$ with `curvature_estimate` and the loss-increase flag
    $L(\theta_{t+1}) > L(\theta_t)$ (when both losses are given), then
    calls `newton_update`. ``options`` are those of `newton_update`.
    """
    A, B = slope, lookahead_slope
    C = curvature_estimate(A, B, loss, lookahead_loss, curvature)
    increase = None
    finite = None
    if loss is not None and lookahead_loss is not None:
        xp = ops(loss, lookahead_loss)
        increase = lookahead_loss > loss
        finite = xp.isfinite(loss) & xp.isfinite(lookahead_loss)
    return newton_update(lr, A, B, C, loss_increase=increase, losses_finite=finite, **options)


def newton_update(
    lr: Scalar,
    slope: Scalar,
    lookahead_slope: Scalar,
    curvature: Scalar,
    *,
    loss_increase: Scalar | None = None,
    losses_finite: Scalar | None = None,
    gamma: float = 1.0,
    eps: float = 0.0,
    lr_min: float = 0.0,
    lr_max: float = float("inf"),
    factor_min: float = 0.0,
    factor_max: float = float("inf"),
    backoff: float = 1.0,
    nonconvex_factor: float = 1.0,
    nonfinite_factor: float = 0.1,
    update: Update = "log",
    scale: Scalar | float = 1.0,
) -> StepSizeUpdate:
    r"""One safeguarded, damped Newton step on the step size α.

    With $A$ the slope, $B$ the lookahead slope and $C$ the
    curvature estimate (see the module docstring), the Newton factor is
    $f = 1 + B/C$ and the proposed factor $\hat f$ is, by priority:

    1. ``nonfinite_factor`` if any input is NaN/inf (the caller undoes the step);
    2. 1 if $A = B = 0$ (no information, e.g. zero gradients);
    3. $\min(f, \text{backoff})$ if ``loss_increase``;
    4. ``nonconvex_factor`` if $C \le \varepsilon (|A| + |B|)$
       (the curvature is not positive);
    5. $f$ otherwise.

    Clamping and damping by γ. ``update="log"``: $\hat f$ is clamped to
    ``[factor_min, factor_max]`` and then raised to the power γ, a step of γ in
    $\log\alpha$ (γ = 0 never changes α; the per-step factor lies in
    $[\text{factor\_min}^\gamma, \text{factor\_max}^\gamma]$).
    ``update="exp"``: the same, with the Newton factor $f = 1 + B/C$
    replaced by its first-order form in $\log\alpha$, $e^{B/C}$
    (the average log-step under a noisy $B$ is then $\bar B/C$, with no
    downward bias). ``update="linear"`` (the seed's rule): the Newton factor becomes
    $1 + \gamma(f - 1)$ and the result is clamped to ``[factor_min, factor_max]``.
    Then $\alpha_{t+1} = \operatorname{clamp}(\alpha_t \hat f,
    \text{lr\_min}, \text{lr\_max})$.

    With ``gamma=1``, no clamps and ``eps=0`` this is the exact line-search step
    $\langle\nabla L(\theta_t), u\rangle / (u^\top H u)$ on a quadratic.

    Under an LR schedule the step taken was $s\,\alpha_t$ (``scale`` $= s$,
    the scheduled factor lr / initial_lr) and its line-search optimum is
    $s\,\alpha_t f$. That is the target of the *unscheduled* α, so the factor
    applied to α is $s f$, and its damping is $\gamma \min(1, s)$: the
    schedule then scales the learned α instead of being compensated by it,
    and as $s \to 0$ (the end of a cosine, where the displacement carries
    little information) α is held. An α of exactly 0 (a frozen group) stays 0.

    Returns:
        A `StepSizeUpdate` of 0-d tensors in the promoted dtype of ``lr``
        and the inner products.
    """
    xp = ops(lr, slope, lookahead_slope, curvature, loss_increase, losses_finite, scale)
    if xp is TENSORS:
        lr = torch.as_tensor(lr)
        dtype = torch.promote_types(lr.dtype, torch.as_tensor(slope).dtype)
        device = next(x.device for x in (slope, lookahead_slope, curvature, lr)
                      if isinstance(x, Tensor))
        lr, A, B, C, s = (torch.as_tensor(x, dtype=dtype, device=device)
                          for x in (lr, slope, lookahead_slope, curvature, scale))
    else:
        lr, A, B, C, s = (float(x) for x in (lr, slope, lookahead_slope, curvature, scale))
    one = xp.const(1.0, A)
    gamma = gamma * xp.clamp(s, hi=1.0)  # γ·min(1, s): hold α as the schedule vanishes

    finite = xp.isfinite(A) & xp.isfinite(B) & xp.isfinite(C)
    if losses_finite is not None:
        finite = finite & losses_finite
    if loss_increase is None:
        loss_increase = xp.const(False, A)
    informative = (A != 0) | (B != 0)
    convex = C > eps * (abs(A) + abs(B))

    # g'' > 0: Newton factor f = 1 + B/C (the division is guarded where C is not positive).
    ratio = B / xp.where(convex, C, one)
    newton = 1.0 + ratio
    if update == "exp":
        # e^{B/C}: the same first-order step in log α, but unbiased when B is noisy
        # (E[log(1 + B/C)] < log(1 + E[B]/C) drifts α down; E[B/C] does not).
        newton = xp.exp(xp.clamp(ratio, -50.0, 50.0))

    newton = newton * s  # the target of the unscheduled α is s·α·f (see above)
    if update == "linear":
        newton = 1.0 + gamma * (newton - 1.0)
    factor = xp.where(convex, newton, nonconvex_factor * one)
    factor = xp.where(loss_increase, xp.minimum(factor, backoff * one), factor)
    code = xp.where(
        loss_increase,
        int(Safeguard.LOSS_INCREASE),
        xp.where(convex, int(Safeguard.NEWTON), int(Safeguard.NONPOSITIVE_CURVATURE)),
    )
    clamped = xp.clamp(factor, factor_min, factor_max)
    code = xp.where((clamped != factor) & (code == int(Safeguard.NEWTON)),
                    int(Safeguard.FACTOR_CLAMP), code)
    if update != "linear":
        # α ← α·f̂^γ: a step of γ in log α (the clamp above keeps f̂ > 0 when factor_min > 0).
        clamped = xp.exp(gamma * xp.log(xp.clamp(clamped, lo=xp.tiny(A))))
    factor = xp.where(informative, clamped, one)
    code = xp.where(informative, code, int(Safeguard.NO_INFORMATION))
    factor = xp.where(finite, factor, nonfinite_factor * one)
    code = xp.where(finite, code, int(Safeguard.NONFINITE))

    proposed = lr * factor
    new_lr = xp.where(lr == 0, lr, xp.clamp(proposed, lr_min, lr_max))
    code = xp.where((new_lr != proposed) & (code == int(Safeguard.NEWTON)),
                    int(Safeguard.LR_CLAMP), code)
    return StepSizeUpdate(new_lr, C, code, finite)


# ----------------------------------------------------------------------------- the controller
# The optimizer is plumbing: it measures the inner products and losses below and
# carries out the decisions; every scalar choice is made here. A step offers two
# decision points per group:
#
#   before_step: at θ_t, with this batch's gradient. The pending step's fresh slope
#       B = ⟨∇L_{batch t}(θ_t), d_{t−1}⟩ arrives → the Newton update gives α_t.
#   after_step:  after the inner step d_t (and, with a closure, the lookahead at
#       θ_{t+1} on the same batch) → keep or undo d_t; α after it.
#
# The controller's state is its own (`RuleState`); a different controller with the
# same three functions (init, before_step, after_step) replaces it.


class RuleState(NamedTuple):
    """The controller's state for one group (Python numbers on the host, else 0-d tensors
    on the group's device)."""

    pending: Scalar
    """bool: a kept step awaits the slope of a fresh batch along its displacement."""
    slope: Scalar
    """A = ⟨∇L(θ_t), d_t⟩ of the pending step, on its own batch."""
    curvature: Scalar
    """C of the pending step from the same-batch lookahead (closure mode)."""
    same_batch_curvature: Scalar
    """bool: ``curvature`` was measured (closure mode); else C = A − B with the fresh B."""
    loss_increase: Scalar
    """bool: the pending step raised its batch's loss (kept because ``reject`` is off)."""
    loss: Scalar
    """L(θ_t) of the pending step's batch (closure mode; NaN otherwise), for the record."""
    lookahead_loss: Scalar
    """L(θ_{t+1}) on that batch (closure mode; NaN otherwise), for the record."""
    scale: Scalar
    """The schedule's factor s = lr / initial_lr the pending step was taken at (1 unscheduled)."""
    updates: Scalar
    """int64: how many Newton updates α has had."""


class Probe(NamedTuple):
    """What ``before_step`` sees: this batch's gradient at θ_t (Python numbers or 0-d tensors)."""

    fresh_slope: Scalar
    """B = ⟨∇L_{batch t}(θ_t), d_{t−1}⟩ (meaningful only while a step is pending)."""
    gradient_finite: Scalar
    """bool: the gradient at θ_t has no NaN/inf."""
    momentum: float = 0.0
    """β₁ of the inner optimizer (``betas[0]`` or ``momentum``; 0 if none), read by the
    optimizer for the gated controller (``controller="gated"`` or ``"auto"``) only."""
    scale: Scalar = 1.0
    """The schedule's factor s = lr / initial_lr of the step about to be taken (1
    unscheduled); the gated controller compares it with the largest so far (H35)."""


class Outcome(NamedTuple):
    """What ``after_step`` sees of the step d_t just taken (Python numbers or 0-d tensors)."""

    slope: Scalar
    """A = ⟨∇L_{batch t}(θ_t), d_t⟩."""
    lookahead_slope: Scalar | None
    """B = ⟨∇L_{batch t}(θ_{t+1}), d_t⟩ on the same batch (closure mode), else ``None``."""
    loss: Scalar | None
    """L_{batch t}(θ_t) (closure mode), else ``None``."""
    lookahead_loss: Scalar | None
    """L_{batch t}(θ_{t+1}) (closure mode), else ``None``."""
    own_loss: bool
    """The loss change is this group's alone (one group stepped): judge it by the losses;
    else by the group's own trapezoid share (A + B)/2."""
    scale: Scalar
    """The schedule's factor s of this step."""


class Decision(NamedTuple):
    """What the controller decided (Python numbers or 0-d tensors)."""

    alpha: Scalar
    """The learned α from now on (unscheduled scale)."""
    accept: Scalar
    """bool. before_step: take this step (false: skip it). after_step: keep d_t (false: undo)."""
    safeguard: Scalar
    """int64 `Safeguard` code of what happened."""
    report: Scalar
    """bool: this decision replaces the last one in `newt.NewtOptimizer.last_stats`."""
    used_alpha: Scalar
    """The α of the step this decision is about."""
    lookahead_slope: Scalar
    """The lookahead slope B the decision used (NaN if none)."""
    curvature: Scalar
    """The curvature C the decision used (NaN if none)."""
    loss: Scalar
    """L(θ_t) of the step it is about (NaN without a closure)."""
    lookahead_loss: Scalar
    """L(θ_{t+1}) of that step on the same batch (NaN without a closure)."""


def _rule_options(options: NewtOptions) -> dict[str, float | str]:
    names = ("update", "gamma", "eps", "lr_min", "lr_max", "factor_min", "factor_max",
             "backoff", "nonconvex_factor", "nonfinite_factor")
    return {name: getattr(options, name) for name in names}


def _shrink(alpha: Scalar, factor: float, options: NewtOptions) -> Scalar:
    """clamp(α·factor, lr_min, lr_max); a frozen α = 0 stays 0."""
    xp = ops(alpha)
    return xp.where(alpha == 0, alpha, xp.clamp(alpha * factor, options.lr_min, options.lr_max))


def _zeros(device: torch.device | None) -> tuple[Scalar, Scalar, Scalar, Scalar]:
    """``(False, 0.0, 0, NaN)`` as host scalars (``device=None``) or 0-d tensors on it
    (float64, int64)."""
    if device is None:
        return False, 0.0, 0, math.nan
    return (torch.zeros((), dtype=torch.bool, device=device),
            torch.zeros((), dtype=torch.float64, device=device),
            torch.zeros((), dtype=torch.int64, device=device),
            torch.full((), math.nan, dtype=torch.float64, device=device))


def _device(state: NamedTuple) -> torch.device | None:
    value = state[0]
    return value.device if isinstance(value, Tensor) else None


def init(device: torch.device | None) -> RuleState:
    """The state before the first step: nothing pending. ``device=None``: host scalars
    (Python floats, for parameters on the CPU); else 0-d tensors on ``device``."""
    false, zero, izero, nan = _zeros(device)
    return RuleState(pending=false, slope=nan, curvature=nan, same_batch_curvature=false,
                     loss_increase=false, loss=nan, lookahead_loss=nan, scale=zero + 1.0,
                     updates=izero)


def _own_state(state: RuleState | GatedState, options: NewtOptions) -> RuleState | GatedState:
    """The state of the group's ``controller``; a state of another one (the option was
    changed mid-run) is replaced by a fresh one. ``"auto"`` owns both kinds."""
    if options.controller == "auto":
        return state
    if options.controller == "gated":
        return state if isinstance(state, GatedState) else gated_init(_device(state))
    return state if isinstance(state, RuleState) else init(_device(state))


def before_step(state: RuleState | GatedState, probe: Probe, alpha: Scalar,
                options: NewtOptions) -> tuple[RuleState | GatedState, Decision]:
    """At θ_t: α_t and whether to step, by the group's ``controller``
    (`newton_before_step`, `gated_before_step` or `auto_before_step`)."""
    state = _own_state(state, options)
    if options.controller == "auto":
        return auto_before_step(state, probe, alpha, options)
    if isinstance(state, GatedState):
        return gated_before_step(state, probe, alpha, options)
    return newton_before_step(state, probe, alpha, options)


def after_step(state: RuleState | GatedState, outcome: Outcome, alpha: Scalar,
               options: NewtOptions) -> tuple[RuleState | GatedState, Decision]:
    """After the inner step: keep or undo it, by the group's ``controller``
    (`newton_after_step` or `gated_after_step`)."""
    state = _own_state(state, options)
    if isinstance(state, GatedState):
        return gated_after_step(state, outcome, alpha, options)
    return newton_after_step(state, outcome, alpha, options)


def newton_before_step(state: RuleState, probe: Probe, alpha: Scalar,
                       options: NewtOptions) -> tuple[RuleState, Decision]:
    r"""At $\theta_t$: the Newton update of the pending step, and whether to step.

    With the pending step's $A$, its curvature $C$ (same-batch, or
    $A - B$ with this batch's $B$ when there was no lookahead) and the fresh
    slope $B$: $\alpha_t = $ `newton_update`$(\alpha_{t-1}, A, B, C)$.
    A non-finite gradient skips the step: α is kept, the parameters are not
    touched, and the pending step is dropped (its fresh slope is lost).
    """
    xp = ops(state.slope)
    B = xp.real(probe.fresh_slope, like=state.slope)
    finite = probe.gradient_finite & (xp.isfinite(B) | xp.not_(state.pending))
    C = xp.where(state.same_batch_curvature, state.curvature, state.slope - B)
    update = newton_update(alpha, state.slope, B, C, loss_increase=state.loss_increase,
                           scale=state.scale, **_rule_options(options))
    updated = state.pending & finite
    new_alpha = xp.where(updated, xp.real(update.lr, like=alpha), alpha)
    safeguard = xp.where(finite, update.safeguard, int(Safeguard.SKIPPED))
    nan = xp.const(math.nan, state.slope)
    decision = Decision(
        alpha=new_alpha, accept=finite, safeguard=safeguard,
        report=updated | xp.not_(finite), used_alpha=alpha,
        lookahead_slope=xp.where(updated, B, nan),
        curvature=xp.where(updated, xp.real(update.curvature, like=nan), nan),
        loss=state.loss, lookahead_loss=state.lookahead_loss,
    )
    return state._replace(pending=xp.const(False, state.pending),
                          updates=state.updates + xp.integer(updated)), decision


def newton_after_step(state: RuleState, outcome: Outcome, alpha: Scalar,
                      options: NewtOptions) -> tuple[RuleState, Decision]:
    r"""After the inner step $d_t$: keep or undo it, and α after it.

    - A non-finite $A$, lookahead slope or lookahead loss: undo, α × `nonfinite_factor`.
    - Closure mode, loss increase (the loss rose on the batch; with several
      groups, the group's own trapezoid share $(A + B)/2 < 0$): with `reject`
      (and γ > 0) undo and α × backoff^γ (backoff with ``update="linear"``).
    - ``slope="same_batch"`` (the seed's rule): the Newton update
      $\alpha_{t+1} =$ `newton_update`$(\alpha_t, A, B, C)$ at once.
    - Otherwise the step is kept and waits for the next batch's slope
      (`before_step`), with its same-batch curvature if there was a lookahead.
    """
    xp = ops(state.slope)
    A = xp.real(outcome.slope, like=state.slope)
    closure = outcome.lookahead_slope is not None
    nan = xp.const(math.nan, A)
    scale = xp.real(outcome.scale, like=A)
    if not closure:
        finite = xp.isfinite(A)
        new_alpha = xp.where(finite, alpha, _shrink(alpha, options.nonfinite_factor, options))
        false = xp.const(False, state.pending)
        new_state = state._replace(pending=finite, slope=A, curvature=nan,
                                   same_batch_curvature=false, loss_increase=false, loss=nan,
                                   lookahead_loss=nan, scale=scale)
        return new_state, Decision(
            alpha=new_alpha, accept=finite, safeguard=xp.const(int(Safeguard.NONFINITE), A),
            report=xp.not_(finite), used_alpha=alpha, lookahead_slope=nan, curvature=nan,
            loss=nan, lookahead_loss=nan)

    assert outcome.lookahead_slope is not None
    assert outcome.loss is not None and outcome.lookahead_loss is not None
    B = xp.real(outcome.lookahead_slope, like=A)
    L0, L1 = xp.real(outcome.loss, like=A), xp.real(outcome.lookahead_loss, like=A)
    C = curvature_estimate(A, B, L0, L1, options.curvature)
    finite = (xp.isfinite(A) & xp.isfinite(B) & xp.isfinite(C)
              & xp.isfinite(L0) & xp.isfinite(L1))
    if outcome.own_loss or options.curvature == "loss":
        increase = L1 > L0
    else:
        increase = A + B < 0  # this group's share of L(θ_t) − L(θ_{t+1}) ≈ (A + B)/2 is negative
    rejected = finite & increase & (options.reject and options.gamma > 0)
    accept = finite & xp.not_(rejected)

    if options.slope == "same_batch":
        update = newton_update(alpha, A, B, C, loss_increase=increase, scale=scale,
                               **_rule_options(options))
        return state._replace(pending=xp.const(False, state.pending),
                              updates=state.updates + xp.integer(finite)), Decision(
            alpha=xp.real(update.lr, like=alpha), accept=accept, safeguard=update.safeguard,
            report=xp.const(True, state.pending), used_alpha=alpha, lookahead_slope=B,
            curvature=xp.real(update.curvature, like=A), loss=L0, lookahead_loss=L1)

    exponent = 1.0 if options.update == "linear" else options.gamma
    new_alpha = xp.where(
        xp.not_(finite), _shrink(alpha, options.nonfinite_factor, options),
        xp.where(rejected, _shrink(alpha, options.backoff**exponent, options), alpha))
    safeguard = xp.where(finite, int(Safeguard.LOSS_INCREASE), int(Safeguard.NONFINITE))
    new_state = state._replace(pending=accept, slope=A, curvature=C,
                               same_batch_curvature=xp.const(True, state.pending),
                               loss_increase=increase, loss=L0, lookahead_loss=L1, scale=scale)
    return new_state, Decision(
        alpha=new_alpha, accept=accept, safeguard=safeguard, report=xp.not_(accept),
        used_alpha=alpha, lookahead_slope=B, curvature=C, loss=L0, lookahead_loss=L1)


# ------------------------------------------------------------------ the gated controller
# ``controller="gated"``: the recommended controller of docs/design/alpha.md (section 4),
# the same function as ``REC`` of benchmarks/ablations/alpha_controller.py over tensors.
# Its constants are its own: the Newton rule's options (gamma, factor_*, lr_*, backoff,
# eps, update, curvature, slope, nonconvex_factor, nonfinite_factor) do not apply; only
# ``reject`` is read (False: closure mode never undoes a step).

GATED_START = 1e-6
"""The first α is min(α₀, GATED_START)."""
GATED_GROWTH = 2.0
"""Phase 1: α × GATED_GROWTH per step while ρ = B / A > GATED_RHO_STOP."""
GATED_RHO_STOP = 0.5
GATED_BETA = 0.9
"""The EMAs' coefficient."""
GATED_TAU = 0.2
"""τ₀: the shift of the slope is τ₀ (1 − β₁) times the step's own slope."""
GATED_TAU_CLOSURE_PLAIN = 0.4
"""τ for a closure step without momentum (β₁ = 0) that an undo protects (``reject``): the
target lies further past the expected line minimum (docs/design/alpha.md, H28)."""
GATED_K_DOWN = 3.0
GATED_K_UP = 2.0
GATED_FACTOR_MIN, GATED_FACTOR_MAX = 0.5, 4.0
GATED_GAMMA = 0.5
GATED_DECREASE = 0.8
"""At most × GATED_DECREASE per step downwards."""
GATED_RATCHET = 0.9
GATED_FLOOR = 0.3
GATED_STREAK = 3
GATED_STREAK_FACTOR = 0.9
GATED_LR_MIN, GATED_LR_MAX = 1e-10, 100.0
GATED_NONFINITE = 0.1
GATED_OVERSHOOT = -1.0
"""The first phase-2 fresh ratio ρ = B/A below this (the step went more than 2× past the
fresh batch's line minimum), closure-free and without momentum, caps growth at
GATED_RATCHET × α and shrinks α × GATED_OVERSHOOT_SHRINK (docs/design/alpha.md, H11)."""
GATED_OVERSHOOT_SHRINK = 0.5
GATED_OVERSHOOT_RUN = 3
"""Closure-free without momentum, every GATED_OVERSHOOT_RUN-th phase-2 fresh ratio in a row
below GATED_OVERSHOOT is a blow-up under way: the cap and the shrink of the first overshoot
act again, and the floor's peak is reset to α (docs/design/alpha.md, H32)."""
GATED_STALL_WINDOW = 100
"""Closure-free with momentum (β₁ > 0): the first window of phase-2 updates over which the
mean of log a (a = A/η, the gradient scale along the step) is formed (H22)."""
GATED_STALL_GROWTH = 1.5
"""Each window is this many times longer than the one before (a window ends at the first
update count at or past its end: updates 100, 250, 475, 813, 1320, …); unless the mean of
log a fell by log GATED_STALL_GROWTH from the previous window (a ∝ t^(−p) with p < 1: a
scale that stalls), α × GATED_STALL_FACTOR and the cap follows (H22). The one constant sets
both the growth of the windows and the fall asked for, so that the test is p ≥ 1 at every
scale (the harness keeps them apart as ``stall_grow`` and ``stall_drop``)."""
GATED_STALL_FACTOR = 0.8
GATED_HOLD_AFTER = 100
"""Under a decaying schedule (the factor of the step about to be taken below the largest so
far), once phase 2 has had this many updates, neither a gated decrease nor a stall step-down
lowers α: the schedule is the run's decay, and the rule's own decrease at the noise floor
would decay it twice (docs/design/alpha.md, H35). Earlier, a decrease still corrects an
overshoot of phase 1's doubling, which ends near a warmup's peak."""


AUTO_QUIET = 1e-3
"""``controller="auto"``: a fresh measurement at the gated start (α = 1e-6, 2e-6, 4e-6) is
quiet if |1 − B/A| is below this. On eight deterministic problems the first three
measurements stay below 2.8e-4, except SGD on Rosenbrock (1.5e-3 at the first), which is
left on the gated side on purpose (the gated rule is the better one there); the first
measurement of five mini-batch problems is at least 1.2e-2 (H15)."""
AUTO_CHECKS = 3
"""``controller="auto"``: quiet measurements in a row that hand over to the Newton rule."""
AUTO_PATIENCE = 10
"""``controller="auto"``: steps that could have given a measurement and did not (skipped
on a non-finite gradient, undone, or with a zero slope A) after which a group stops
watching and stays gated, so that the tensor path's one read per step while watching does
not last the whole run. The first step and, with ``interval``, the measured steps (whose
fresh slope comes one step later) have nothing to measure and do not count."""


class GatedState(NamedTuple):
    """The gated controller's state for one group (Python numbers on the host, else 0-d
    tensors; floats are float64)."""

    pending: Scalar
    """bool: a kept step awaits the slope of a fresh batch along its displacement."""
    slope: Scalar
    """A = ⟨∇L(θ_t), d_t⟩ of the pending step, on its own batch."""
    step: Scalar
    """η = α·s, the step size the pending step was taken with."""
    started: Scalar
    """bool: the first α was set to min(α₀, 1e-6)."""
    phase: Scalar
    """int64: 1 (doubling) or 2 (gated Newton factor)."""
    cap: Scalar
    """The ratchet's cap on growth (+inf until a significant decrease or an undo streak)."""
    peak: Scalar
    """The largest α of phase 2 (the floor is 0.3 × it)."""
    streak: Scalar
    """int64: consecutive undone steps (closure mode)."""
    mean_b: Scalar
    """EMA of b = B/η."""
    mean_b2: Scalar
    """EMA of b²."""
    mean_a: Scalar
    """EMA of a = A/η."""
    mean_c: Scalar
    """EMA of c = (A − B)/η²."""
    count: Scalar
    """int64: the number of EMA updates (for the bias correction 1 − β^n)."""
    updates: Scalar
    """int64: how many updates (phase 1 or 2) α has had."""
    free: Scalar = False
    """bool: the pending step was closure-free (no lookahead)."""
    shot: Scalar = False
    """bool: the first fresh overshoot has acted (closure-free, β₁ = 0; once a run)."""
    watch: Scalar = False
    """bool, ``controller="auto"``: still testing whether the gradients are noisy (a
    host bool; a loaded checkpoint's tensor is read once)."""
    quiet: Scalar = 0
    """int64, ``controller="auto"``: fresh measurements so far with $|1 - B/A|$ below
    `AUTO_QUIET`."""
    initial: Scalar = math.nan
    """α₀ as the user gave it, before the start at min(α₀, 1e-6) (``controller="auto"``
    restores it when it hands over to the Newton rule)."""
    idle: Scalar = 0
    """int64, ``controller="auto"``: steps so far that could have been measured and were
    not, while watching (a host int, as ``quiet``); at `AUTO_PATIENCE` the watch ends,
    gated."""
    stall_sum: Scalar = 0.0
    """The sum of log a (a = A/η) over the current window (closure-free, β₁ > 0; H22)."""
    stall_count: Scalar = 0
    """int64: the updates in the current window."""
    stall_window: Scalar = float(GATED_STALL_WINDOW)
    """The current window's length in updates (× `GATED_STALL_GROWTH` after each window)."""
    stall_mean: Scalar = math.nan
    """The mean of log a over the previous window (NaN before the first is complete)."""
    overshoots: Scalar = 0
    """int64: phase-2 fresh ratios ρ < `GATED_OVERSHOOT` in a row, closure-free without
    momentum (H32; back to 0 at each `GATED_OVERSHOOT_RUN`-th)."""
    scale_peak: Scalar = 0.0
    """The largest schedule factor s of the steps so far (H35; 1 unscheduled)."""
    loss: Scalar = math.nan
    """L(θ_t) of the pending step on its own batch (closure mode; NaN closure-free), for the
    report of the decision that its fresh slope makes."""
    lookahead_loss: Scalar = math.nan
    """L(θ_{t+1}) of the pending step on the same batch (closure mode; NaN closure-free)."""


def gated_init(device: torch.device | None) -> GatedState:
    """The gated controller's state before the first step (host scalars for
    ``device=None``, else 0-d tensors on ``device``)."""
    false, zero, izero, nan = _zeros(device)
    return GatedState(pending=false, slope=nan, step=nan, started=false, phase=izero + 1,
                      cap=zero + math.inf, peak=zero, streak=izero, mean_b=zero, mean_b2=zero,
                      mean_a=zero, mean_c=zero, count=izero, updates=izero, free=false,
                      shot=false, stall_sum=zero, stall_count=izero,
                      stall_window=zero + GATED_STALL_WINDOW, stall_mean=nan,
                      overshoots=izero, scale_peak=zero, loss=nan, lookahead_loss=nan)


def auto_init(device: torch.device | None) -> GatedState:
    """``controller="auto"`` before the first step: the gated controller, watching."""
    return gated_init(device)._replace(watch=True)


def auto_before_step(state: RuleState | GatedState, probe: Probe, alpha: Scalar,
                     options: NewtOptions) -> tuple[RuleState | GatedState, Decision]:
    r"""``controller="auto"``: the gated controller, or the Newton rule
    where the gradients are deterministic (docs/design/alpha.md, H15).

    It starts as the gated controller, whose first steps are tiny (α = 1e-6, 2e-6,
    4e-6, … times the schedule's factor). At such a step a deterministic gradient
    barely changes, $B/A = 1 - O(\alpha\, u^\top H u / g^\top u)$, while a fresh
    batch's gradient differs from the last one by the batch noise, at any α. So each
    fresh measurement while watching is *quiet* if $|1 - B/A| <$ `AUTO_QUIET`:

    - the first noisy one ends the watch: the gated controller goes on, unchanged;
    - the `AUTO_CHECKS`-th quiet one hands over to the Newton rule (`newton_before_step`
      from a fresh `RuleState`, its update count from 0) at the user's α₀, reported in
      `last_stats` as a first step. `newt.NewtOptimizer` then drops the group's inner
      optimizer state, so that the run from there is the Newton rule's from α₀ (H38).

    The verdict is per group. A frozen group (α = 0) ends its watch at once and stays
    frozen; a group whose steps give no measurement (skipped, undone, or exactly zero
    gradients) `AUTO_PATIENCE` times ends it too, gated. A loss whose curvature along the
    first steps is large against its slope (|1 − B/A| ≥ 1e-3 at α = 1e-6) reads as noisy
    and stays gated.

    Python control flow, unlike the rest of this module: while watching, a device
    group's verdict (one number) is read on the host at each `before_step`; never after.
    """
    if not isinstance(state, GatedState):
        return newton_before_step(state, probe, alpha, options)
    watch = bool(state.watch)  # a host bool (read once after loading a checkpoint)
    new, decision = gated_before_step(state, probe, alpha, options)
    if not watch:
        return new._replace(watch=False), decision
    xp = ops(state.slope)
    A = state.slope
    B = xp.real(probe.fresh_slope, like=A)
    usable = (state.pending & probe.gradient_finite & xp.isfinite(A) & (A != 0)
              & xp.isfinite(B))
    rho = B / xp.where(usable, A, xp.const(1.0, A))
    quiet = (rho > 1 - AUTO_QUIET) & (rho < 1 + AUTO_QUIET)
    frozen = xp.real(alpha, like=A) == 0
    # 0: nothing to measure yet, 1: noisy (or a frozen group), 2: quiet, 3: a step that
    # could have been measured and was not (skipped, A = 0, B non-finite); one read
    missed = state.pending | xp.not_(probe.gradient_finite)
    verdict = int(xp.where(frozen, 1, xp.where(usable, 1 + xp.integer(quiet),
                                               3 * xp.integer(missed))))
    initial = xp.where(state.started, state.initial, xp.real(alpha, like=A))
    idle = int(state.idle) + (verdict == 3)  # a host int, as ``watch``
    new = new._replace(initial=initial, idle=idle,
                       watch=verdict != 1 and idle < AUTO_PATIENCE)
    if verdict == 2:
        new = new._replace(quiet=int(state.quiet) + 1)  # a host int, as ``watch``
        if new.quiet >= AUTO_CHECKS:  # deterministic: the Newton rule, from α₀
            newton, first = newton_before_step(init(_device(state)), probe,
                                               xp.real(initial, like=alpha), options)
            return newton, first._replace(
                report=xp.const(True, first.accept),
                safeguard=xp.where(first.accept, int(Safeguard.FIRST_STEP),
                                   int(Safeguard.SKIPPED)))
    return new, decision


def gated_before_step(state: GatedState, probe: Probe, alpha: Scalar,
                      options: NewtOptions) -> tuple[GatedState, Decision]:
    r"""The gated controller at $\theta_t$ (docs/design/alpha.md, section 4).

    The first call sets $\alpha \leftarrow \min(\alpha_0, 10^{-6})$. With a
    pending step ($A$, its step $\eta = \alpha s$) and the fresh slope $B$:

    - phase 1: $\alpha \leftarrow 2\alpha$ while $\rho = B/A > \tfrac12$;
      then phase 2 for good;
    - phase 2: bias-corrected EMAs (β = 0.9) of $b = B/\eta$, $b^2$,
      $a = A/\eta$, $c = (A - B)/\eta^2$; the s.d. of the average
      $\mathrm{sd} = \sqrt{\max(\overline{b^2} - \bar b^2, 0)(1-\beta)/(1+\beta)}$;
      the shifted slope $\tilde b = \bar b + \tau\,\bar a$ with $\tau = \tau_0 (1 -
      \beta_1)$, $\tau_0 = 0.2$ (0.4 for a closure step with $\beta_1 = 0$ and
      ``reject``, H28); the factor
      $f = \operatorname{clamp}(1 + \tilde b/(\eta \bar c), \tfrac12, 4)$ (4 if
      $\bar c \le 0$), set to 1 unless significant (a decrease needs
      $\tilde b < -3\,\mathrm{sd}$, an increase $\tilde b > 2\,\mathrm{sd}$), a decrease
      at most ×0.8; $\alpha' = \operatorname{clamp}(\alpha f^{1/2}, 10^{-10}, 100)$;
      a decrease sets the cap $\min(\text{cap}, 0.9\alpha)$, an increase stops at
      $\max(\text{cap}, \alpha)$; closure-free with $\beta_1 = 0$, the first
      $\rho = B/A < -1$ of the run sets the cap $\min(\text{cap}, 0.9\alpha)$ and
      $\alpha' \leftarrow \min(\alpha', \alpha/2)$, and so does every third
      $\rho < -1$ in a row (H32: a blow-up under way), which also resets the floor's peak
      to α; closure-free with $\beta_1 > 0$,
      at the end of each window of $W_k = 100 \cdot 1.5^k$ updates ($k \ge 1$) whose mean
      of $\log a$ did not fall by $\log 1.5$ from the previous window's (a converging
      $a \propto t^{-p}$ falls by $p \log 1.5$), $\alpha' \leftarrow \min(\alpha',
      0.8\alpha)$ and the cap follows (H22); α never falls below 0.3 × the phase-2 peak;
      while the schedule's factor $s$ of the step about to be taken is below the largest
      so far and phase 2 has had 100 updates, neither a gated decrease nor a stall
      step-down applies (H35: the schedule decays the step).

    A non-finite gradient skips the step, divides α by 10 and ends phase 1.
    """
    xp = ops(state.slope)
    a0 = xp.real(alpha, like=state.slope)
    a = xp.where(state.started, a0, xp.clamp(a0, hi=GATED_START))
    B = xp.real(probe.fresh_slope, like=state.slope)
    finite = probe.gradient_finite & (xp.isfinite(B) | xp.not_(state.pending))
    A, eta = state.slope, state.step
    one = xp.const(1.0, A)
    usable = (state.pending & finite & xp.isfinite(A) & (A != 0)
              & xp.isfinite(eta) & (eta > 0))
    safe_A = xp.where(usable, A, one)  # divisors: finite and non-zero
    safe_eta = xp.where(usable, eta, one)
    grow = usable & (state.phase == 1) & (B / safe_A > GATED_RHO_STOP)
    newton = usable & xp.not_(grow)
    # H35: a schedule past its peak decays the step; after the first updates of phase 2
    # (which still correct an overshoot of the doubling) the rule does not decay it again
    scale = xp.real(probe.scale, like=A)
    scale_peak = xp.maximum(state.scale_peak, scale)
    held = (scale < scale_peak) & (state.count >= GATED_HOLD_AFTER)

    # phase 2: the scale-free values of the pending step, averaged
    beta = GATED_BETA
    b, aa, c = B / safe_eta, A / safe_eta, (A - B) / safe_eta / safe_eta
    mean_b = beta * state.mean_b + (1 - beta) * b
    mean_b2 = beta * state.mean_b2 + (1 - beta) * (b * b)
    mean_a = beta * state.mean_a + (1 - beta) * aa
    mean_c = beta * state.mean_c + (1 - beta) * c
    count = state.count + 1
    correction = 1 - xp.pow(beta, xp.real(count, like=A))
    bb, ab = mean_b / correction, mean_a / correction
    cb, b2 = mean_c / correction, mean_b2 / correction
    sd = xp.sqrt(xp.clamp(b2 - bb * bb, lo=0.0) * ((1 - beta) / (1 + beta)))
    # H28: a closure step without momentum, which an undo protects, aims further past
    tau = GATED_TAU * (1 - probe.momentum)  # β₁ is a host float
    if options.reject and probe.momentum == 0:
        tau = xp.where(state.free, xp.const(GATED_TAU, A), xp.const(GATED_TAU_CLOSURE_PLAIN, A))
    shifted = bb + tau * ab
    positive = cb > 0
    f = xp.where(positive, 1 + shifted / safe_eta / xp.where(positive, cb, one),
                 GATED_FACTOR_MAX * one)
    f = xp.clamp(f, GATED_FACTOR_MIN, GATED_FACTOR_MAX)
    decrease = f < 1
    f = xp.where(
        decrease,
        xp.where((shifted >= -GATED_K_DOWN * sd) | held, one,
                 xp.clamp(f, lo=GATED_DECREASE ** (1 / GATED_GAMMA))),
        xp.where(shifted <= GATED_K_UP * sd, one, f))
    proposed = xp.clamp(a * xp.pow(f, GATED_GAMMA), GATED_LR_MIN, GATED_LR_MAX)
    cap = xp.where(f < 1, xp.minimum(state.cap, GATED_RATCHET * a), state.cap)
    proposed = xp.where(f > 1, xp.minimum(proposed, xp.maximum(cap, a)), proposed)
    # a fresh overshoot without momentum, closure-free: the first of the run (H11), and
    # every third in a row after it, a blow-up under way whose growing spread keeps the
    # gate shut (a rising warmup carries a held α there; H32): cap and step back
    over = state.free & (probe.momentum == 0) & (B / safe_A < GATED_OVERSHOOT)
    shot = over & xp.not_(state.shot)
    overshoots = xp.where(over, state.overshoots + 1, xp.const(0, state.overshoots))
    run = overshoots >= GATED_OVERSHOOT_RUN
    overshoots = xp.where(run, xp.const(0, state.overshoots), overshoots)
    act = shot | run
    cap = xp.where(act, xp.minimum(cap, GATED_RATCHET * a), cap)
    proposed = xp.where(act, xp.minimum(proposed, GATED_OVERSHOOT_SHRINK * a), proposed)
    # a gradient scale that stops falling, closure-free with momentum (H22): over windows
    # of 100, 150, 225, … updates, a converging run's a ∝ t^(−p) has a mean log a that
    # falls by p log 1.5 per window; unless it falls by log 1.5 (p ≥ 1), step down
    counted = newton & state.free & (probe.momentum > 0) & (aa > 0) & xp.not_(held)
    stall_sum = state.stall_sum + xp.where(counted, xp.log(xp.where(counted, aa, one)), 0.0)
    stall_count = state.stall_count + xp.integer(counted)
    full = counted & (stall_count >= state.stall_window)
    window_mean = stall_sum / xp.real(xp.where(full, stall_count, 1), like=A)
    stall = full & (window_mean > state.stall_mean - math.log(GATED_STALL_GROWTH))
    proposed = xp.where(stall, xp.minimum(proposed, GATED_STALL_FACTOR * a), proposed)
    cap = xp.where(stall, xp.minimum(cap, proposed), cap)
    peak = xp.where(run, a, xp.maximum(state.peak, a))  # a blow-up's α is no peak to hold
    proposed = xp.maximum(proposed, GATED_FLOOR * peak)

    new_alpha = xp.where(
        xp.not_(finite), xp.clamp(a * GATED_NONFINITE, lo=GATED_LR_MIN),
        xp.where(grow, xp.clamp(a * GATED_GROWTH, hi=GATED_LR_MAX),
                 xp.where(newton, proposed, a)))
    new_alpha = xp.where(a == 0, a, new_alpha)  # a frozen group stays frozen
    phase = xp.where(newton | xp.not_(finite), 2, state.phase)
    safeguard = xp.where(
        xp.not_(finite), int(Safeguard.SKIPPED), xp.where(
            grow, int(Safeguard.GROWTH), xp.where(
                newton & act, int(Safeguard.OVERSHOOT), xp.where(
                    stall, int(Safeguard.STALL), xp.where(
                        newton & (f == 1), int(Safeguard.GATED), xp.where(
                            newton, int(Safeguard.NEWTON), int(Safeguard.FIRST_STEP)))))))
    nan = xp.const(math.nan, A)
    report = usable | xp.not_(finite)
    decision = Decision(
        alpha=xp.real(new_alpha, like=alpha), accept=finite, safeguard=safeguard,
        report=report, used_alpha=a, lookahead_slope=xp.where(usable, B, nan),
        curvature=xp.where(usable, A - B, nan), loss=xp.where(usable, state.loss, nan),
        lookahead_loss=xp.where(usable, state.lookahead_loss, nan))
    new_state = state._replace(
        pending=xp.const(False, state.pending), started=xp.const(True, state.started),
        phase=phase, cap=xp.where(newton, cap, state.cap),
        peak=xp.where(newton, peak, state.peak),
        mean_b=xp.where(newton, mean_b, state.mean_b),
        mean_b2=xp.where(newton, mean_b2, state.mean_b2),
        mean_a=xp.where(newton, mean_a, state.mean_a),
        mean_c=xp.where(newton, mean_c, state.mean_c),
        count=xp.where(newton, count, state.count),
        updates=state.updates + xp.integer(usable),
        shot=state.shot | (newton & shot),
        stall_sum=xp.where(full, 0.0, stall_sum),
        stall_count=xp.where(full, 0, stall_count),
        stall_window=xp.where(full, GATED_STALL_GROWTH * state.stall_window,
                              state.stall_window),
        stall_mean=xp.where(full, window_mean, state.stall_mean),
        overshoots=xp.where(newton, overshoots, state.overshoots), scale_peak=scale_peak)
    return new_state, decision


def gated_after_step(state: GatedState, outcome: Outcome, alpha: Scalar,
                     options: NewtOptions) -> tuple[GatedState, Decision]:
    r"""The gated controller after the inner step $d_t$.

    Records $A$ and $\eta = \alpha s$ of the step. Closure mode (with ``reject``): undo
    $d_t$ iff the batch loss rose (with several groups, the group's trapezoid share
    $(A + B)/2 < 0$), α unchanged, except from the 3rd consecutive undo on: then
    cap ← min(cap, 0.9α) and α ← 0.9α. A non-finite $A$, lookahead slope or loss undoes
    the step and divides α by 10 (phase 2).
    """
    xp = ops(state.slope)
    a = xp.real(alpha, like=state.slope)
    A = xp.real(outcome.slope, like=state.slope)
    nan = xp.const(math.nan, A)
    scale = xp.real(outcome.scale, like=A)
    closure = outcome.lookahead_slope is not None
    if not closure:
        finite = xp.isfinite(A)
        accept = finite
        rejected = xp.const(False, state.pending)
        B = L0 = L1 = nan
    else:
        assert outcome.loss is not None and outcome.lookahead_loss is not None
        B = xp.real(outcome.lookahead_slope, like=A)
        L0, L1 = xp.real(outcome.loss, like=A), xp.real(outcome.lookahead_loss, like=A)
        finite = xp.isfinite(A) & xp.isfinite(B) & xp.isfinite(L0) & xp.isfinite(L1)
        increase = L1 > L0 if outcome.own_loss else A + B < 0
        rejected = finite & increase & options.reject
        accept = finite & xp.not_(rejected)
    streak = xp.where(rejected, state.streak + 1, xp.const(0, state.streak))
    long = rejected & (streak >= GATED_STREAK)
    cap = xp.where(long, xp.minimum(state.cap, GATED_RATCHET * a), state.cap)
    new_alpha = xp.where(
        xp.not_(finite), xp.clamp(a * GATED_NONFINITE, lo=GATED_LR_MIN),
        xp.where(long, xp.clamp(a * GATED_STREAK_FACTOR, lo=GATED_LR_MIN), a))
    new_alpha = xp.where(a == 0, a, new_alpha)
    safeguard = xp.where(finite, int(Safeguard.LOSS_INCREASE), int(Safeguard.NONFINITE))
    new_state = state._replace(
        pending=accept, slope=A, step=a * scale, cap=cap, streak=streak,
        phase=xp.where(finite, state.phase, 2), free=xp.const(not closure, state.pending),
        loss=L0, lookahead_loss=L1)
    return new_state, Decision(
        alpha=xp.real(new_alpha, like=alpha), accept=accept, safeguard=safeguard,
        report=xp.not_(accept), used_alpha=a, lookahead_slope=B,
        curvature=A - B if closure else nan, loss=L0, lookahead_loss=L1)
