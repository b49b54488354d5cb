r"""The step-size rule: a Newton step on α and the safeguards around it.

All functions here are pure functions of a few scalar tensors, written with
``torch.where`` and clamps instead of Python ``if``, so they never force a
device-to-host synchronisation and compile with ``torch.compile(fullgraph=True)``.

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
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Curvature",
    "Safeguard",
    "StepSizeUpdate",
    "Update",
    "average_derivatives",
    "curvature_estimate",
    "gradient_difference",
    "loss_difference",
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
    """No lookahead to use yet (the first step, or the step after an undone one): α kept."""


class StepSizeUpdate(NamedTuple):
    """Result of `update_lr` (all 0-d tensors)."""

    lr: Tensor
    """The new step size α_{t+1}."""
    curvature: Tensor
    """The estimate C (so g''(α_t) ≈ C / α_t²)."""
    safeguard: Tensor
    """A `Safeguard` value, as an int64 tensor."""
    finite: Tensor
    """False when the step must be undone (non-finite loss or inner product)."""


def gradient_difference(slope: Tensor, lookahead_slope: Tensor) -> Tensor:
    r"""Gradient-difference curvature (Retsinas et al. 2023, eq. 7): $C = A - B$."""
    return slope - lookahead_slope


def loss_difference(loss: Tensor, lookahead_loss: Tensor, lookahead_slope: Tensor) -> Tensor:
    r"""Loss-difference curvature (second-order Taylor of $g_t$ around $\alpha_t$):
    $C = 2\,(L(\theta_t) - L(\theta_{t+1}) - B)$."""
    return 2.0 * (loss - lookahead_loss - lookahead_slope)


def curvature_estimate(
    slope: Tensor,
    lookahead_slope: Tensor,
    loss: Tensor | None,
    lookahead_loss: Tensor | None,
    curvature: Curvature,
) -> Tensor:
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


def average_derivatives(
    average: Tensor,
    lr: Tensor,
    lookahead_slope: Tensor,
    curvature: Tensor,
    keep: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Exponential moving averages of $g_t'(\alpha_t)$ and $g_t''(\alpha_t)$.

    With $g' = -B/\alpha$ and $g'' \approx C/\alpha^2$ (scale-free in α),

    $$
    m_1 \leftarrow \beta m_1 + (1-\beta)\, g', \qquad
    m_2 \leftarrow \beta m_2 + (1-\beta)\, g'', \qquad n \leftarrow n + 1,
    $$

    and the averaged, bias-corrected $B, C$ at the current α are returned:
    $\bar B = -\alpha\, m_1 / (1-\beta^n)$, $\bar C = \alpha^2 m_2 / (1-\beta^n)$.
    Where ``keep`` is false (non-finite or stale values) the averages do not move.

    Args:
        average: the state ``[m_1, m_2, n]`` as a tensor of shape (3,).
        lr: α_t.
        lookahead_slope: B.
        curvature: C.
        keep: whether this step's values may enter the average.
        beta: the averaging coefficient in [0, 1).

    Returns:
        ``(B̄, C̄, new_average)``.
    """
    dtype = average.dtype
    lr = lr.to(dtype)
    values = torch.stack([-lookahead_slope.to(dtype) / lr, curvature.to(dtype) / lr**2])
    moved = torch.cat([beta * average[:2] + (1 - beta) * values, (average[2:] + 1)])
    new = torch.where(keep, moved, average)
    correction = 1 - beta ** torch.clamp(new[2], min=1.0)
    mean = new[:2] / correction
    return -lr * mean[0], lr**2 * mean[1], new


def update_lr(
    lr: Tensor,
    slope: Tensor,
    lookahead_slope: Tensor,
    loss: Tensor | None = None,
    lookahead_loss: Tensor | None = None,
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
        increase = lookahead_loss > loss
        finite = torch.isfinite(loss) & torch.isfinite(lookahead_loss)
    return newton_update(lr, A, B, C, loss_increase=increase, losses_finite=finite, **options)


def newton_update(
    lr: Tensor,
    slope: Tensor,
    lookahead_slope: Tensor,
    curvature: Tensor,
    *,
    loss_increase: Tensor | None = None,
    losses_finite: Tensor | None = None,
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

    Returns:
        A `StepSizeUpdate` of 0-d tensors in the promoted dtype of ``lr``
        and the inner products.
    """
    lr = torch.as_tensor(lr)
    dtype = torch.promote_types(lr.dtype, slope.dtype)
    A, B, C = slope.to(dtype), lookahead_slope.to(dtype), curvature.to(dtype)
    one = torch.ones((), dtype=dtype, device=A.device)

    finite = torch.isfinite(A) & torch.isfinite(B) & torch.isfinite(C)
    if losses_finite is not None:
        finite = finite & losses_finite
    if loss_increase is None:
        loss_increase = torch.zeros((), dtype=torch.bool, device=A.device)
    informative = (A != 0) | (B != 0)
    convex = C > eps * (A.abs() + B.abs())

    # g'' > 0: Newton factor f = 1 + B/C (the division is guarded where C is not positive).
    newton = 1.0 + B / torch.where(convex, C, one)
    if update == "exp":
        # e^{B/C}: the same first-order step in log α, but unbiased when B is noisy
        # (E[log(1 + B/C)] < log(1 + E[B]/C) drifts α down; E[B/C] does not).
        newton = torch.exp(torch.clamp(B / torch.where(convex, C, one), -50.0, 50.0))
    if update == "linear":
        newton = 1.0 + gamma * (newton - 1.0)

    factor = torch.where(convex, newton, nonconvex_factor * one)
    factor = torch.where(loss_increase, torch.minimum(factor, backoff * one), factor)
    code = torch.where(
        loss_increase,
        int(Safeguard.LOSS_INCREASE),
        torch.where(convex, int(Safeguard.NEWTON), int(Safeguard.NONPOSITIVE_CURVATURE)),
    )
    clamped = torch.clamp(factor, factor_min, factor_max)
    code = torch.where((clamped != factor) & (code == int(Safeguard.NEWTON)),
                       int(Safeguard.FACTOR_CLAMP), code)
    if update != "linear":
        # α ← α·f̂^γ: a step of γ in log α (the clamp above keeps f̂ > 0 when factor_min > 0).
        tiny = torch.finfo(dtype).tiny
        clamped = torch.exp(gamma * torch.log(torch.clamp(clamped, min=tiny)))
    factor = torch.where(informative, clamped, one)
    code = torch.where(informative, code, int(Safeguard.NO_INFORMATION))
    factor = torch.where(finite, factor, nonfinite_factor * one)
    code = torch.where(finite, code, int(Safeguard.NONFINITE))

    proposed = lr.to(dtype) * factor
    new_lr = torch.clamp(proposed, lr_min, lr_max)
    code = torch.where((new_lr != proposed) & (code == int(Safeguard.NEWTON)),
                       int(Safeguard.LR_CLAMP), code)
    return StepSizeUpdate(new_lr, C, code, finite)
