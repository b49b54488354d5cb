r"""Research harness for newt's α controller (issue 9): candidate controllers and their ablations.

The decision record is ``docs/design/alpha.md``; every table in it is printed by
one ``--experiment`` of this module::

    python -m benchmarks.ablations.alpha_controller --list
    python -m benchmarks.ablations.alpha_controller --experiment baselines
    python -m benchmarks.ablations.alpha_controller --experiment bar --controllers asym,rec

The training loop is self-contained (it does not use ``newt.NewtOptimizer``): it
computes exactly the scalars the core's replaceable controller sees, and a
controller is a pure function of them over Python floats, with two decision
points per step ``t`` (one parameter group):

1. ``before_step``, once the fresh batch's gradient at $\theta_t$ is known:
   $B = \langle \nabla L_{t}(\theta_t), d_{t-1} \rangle$, the fresh slope of the
   pending displacement $d_{t-1} = \theta_{t-1} - \theta_t$ (``None`` on the first
   step and after an undone step), whether the gradient is finite, and the
   schedule factor $s$. Decision: $\alpha_t$ (the inner step uses $\alpha_t s$).
2. ``after_step``, after the inner step (and, in closure mode, the lookahead
   evaluation at $\theta_{t+1}$ on the same batch):
   $A = \langle \nabla L_t(\theta_t), d_t \rangle$ and, in closure mode,
   $B_s = \langle \nabla L_t(\theta_{t+1}), d_t \rangle$, $L_t(\theta_t)$,
   $L_t(\theta_{t+1})$. Decision: keep or undo $d_t$, and α after.

Budgets count gradient evaluations: a closure-free step costs one, a closure step
two. The metric is the full-batch training loss at the end; the reference is the
best fixed learning rate of the same inner optimizer over a log grid at the same
number of evaluations (one per step), and the ratio is newt's loss over that.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from newt.problems import PROBLEMS, Problem, digits_mlp

State = dict[str, float]

# ---------------------------------------------------------------- observations


class Before(NamedTuple):
    """What ``before_step`` sees at step t (Python floats)."""

    slope: float | None
    """B = ⟨∇L_t(θ_t), d_{t−1}⟩, the fresh slope of the pending displacement; None if none."""
    finite: bool
    """Whether the loss and gradient at θ_t are finite."""
    schedule: float
    """The schedule factor s (the inner step uses α·s)."""
    scale_slope: float | None = None
    """h = ⟨∇L_t(θ_t), θ_t − θ_0⟩, the slope of L_t(θ_0 + σ(θ_t − θ_0)) at σ = 1: whether
    scaling the whole run's displacement up (h < 0) or down (h > 0) would lower the loss
    (H26; Mechanic's signal); None where the gradient is not finite."""


class After(NamedTuple):
    """What ``after_step`` sees at step t (Python floats)."""

    slope: float
    """A = ⟨∇L_t(θ_t), d_t⟩ (the same batch as the step)."""
    lookahead_slope: float | None
    """B_s = ⟨∇L_t(θ_{t+1}), d_t⟩ (closure mode only)."""
    loss: float
    """L_t(θ_t)."""
    lookahead_loss: float | None
    """L_t(θ_{t+1}) (closure mode only)."""


# ---------------------------------------------------------------- controllers


@dataclass(frozen=True)
class Controller:
    """The interface: pure functions ``state -> state`` with two decision points."""

    name: str = "base"

    @property
    def uses_scale_slope(self) -> bool:
        """Whether ``before_step`` reads ``Before.scale_slope`` (the loop computes it only then)."""
        return False

    def init(self, alpha0: float, closure: bool) -> State:
        raise NotImplementedError

    def before_step(self, state: State, obs: Before) -> tuple[State, float]:
        raise NotImplementedError

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        raise NotImplementedError


@dataclass(frozen=True)
class Fixed(Controller):
    """A constant α (the baseline; also used for the diagnostics at fixed lr)."""

    name: str = "fixed"

    def init(self, alpha0: float, closure: bool) -> State:
        return {"alpha": alpha0}

    def before_step(self, state: State, obs: Before) -> tuple[State, float]:
        return state, state["alpha"]

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        return state, True, state["alpha"]


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


@dataclass(frozen=True)
class Today(Controller):
    r"""Today's default rule on ``main`` (for reference), per step, no averaging.

    Closure-free: $C = A_{t-1} - B$; closure: $C = A - B_s$ (same batch). Factor
    $f = 1 + B/C$ (1.25 if $C \le \varepsilon(|A|+|B|)$), clamped to [0.5, 4],
    $\alpha \leftarrow \alpha f^{\gamma}$, γ = 0.5; closure mode undoes a step that
    raised the batch loss and multiplies α by $0.5^\gamma$.
    """

    name: str = "today"
    gamma: float = 0.5
    reject: bool = True
    floor: float = 0.0
    """> 0: a Newton decrease never takes α below floor × the largest α seen (after
    ``floor_after`` Newton updates); undo back-offs and non-finite cuts are not floored."""
    floor_after: int = 0

    def init(self, alpha0: float, closure: bool) -> State:
        s = {"alpha": alpha0, "closure": float(closure), "A": math.nan, "C": math.nan,
             "step": alpha0}
        if self.floor > 0:
            s["updates"] = 0.0
            s["peak"] = alpha0 if self.floor_after == 0 else 0.0
        return s

    def before_step(self, state: State, obs: Before) -> tuple[State, float]:
        s = dict(state)
        if not obs.finite:
            s["alpha"] = max(s["alpha"] * 0.1, 1e-8)
        elif obs.slope is not None:
            A, B = s["A"], obs.slope
            C = s["C"] if s["closure"] else A - B
            f = 1 + B / C if C > 1e-6 * (abs(A) + abs(B)) else 1.25
            if A == 0 and B == 0:
                f = 1.0
            prev = s["alpha"]
            s["alpha"] = _clamp(prev * _clamp(f, 0.5, 4.0) ** self.gamma, 1e-8, 10.0)
            if self.floor > 0:
                if s["alpha"] < prev and s["peak"] > 0:
                    # a decrease stops at the floor (but does not lift an α already below it)
                    s["alpha"] = max(s["alpha"], min(prev, self.floor * s["peak"]))
                s["updates"] += 1
                if s["updates"] >= self.floor_after:
                    s["peak"] = max(s["peak"], s["alpha"])
        s["step"] = s["alpha"] * obs.schedule
        return s, s["alpha"]

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        s = dict(state)
        s["A"] = obs.slope
        accept = True
        if obs.lookahead_slope is not None:
            s["C"] = obs.slope - obs.lookahead_slope
            if self.reject and obs.lookahead_loss > obs.loss:
                accept = False
                s["alpha"] = max(s["alpha"] * 0.5**self.gamma, 1e-8)
        return s, accept, s["alpha"]


class _Ema:
    """Bias-corrected exponential averages kept as plain floats inside a state dict."""

    @staticmethod
    def update(s: State, key: str, value: float, beta: float) -> None:
        s[key] = beta * s.get(key, 0.0) + (1 - beta) * value

    @staticmethod
    def mean(s: State, key: str, beta: float, count: str = "n") -> float:
        n = s.get(count, 0.0)
        return s.get(key, 0.0) / (1 - beta**n) if n > 0 else 0.0


@dataclass(frozen=True)
class Asym(Controller):
    r"""QUALITY.md's throwaway "asymmetric gate + start small" rule.

    With $b = B/\alpha$, $c = C/\alpha^2$ (C = A_{t−1} − B closure-free, A − B_s in
    closure mode) averaged by bias-corrected EMAs (β) with the standard deviation
    of the average $sd = \sqrt{\mathrm{var}\,(1-\beta)/(1+\beta)}$: factor
    $f = 1 + \bar b/(\alpha \bar c)$ (``nonconvex`` if $\bar c \le 0$), clamped to
    [0.5, 4], a decrease applied only if $\bar b < -k\,sd$ (and at most ``dec_cap``
    per step), then $\alpha \leftarrow \alpha f^\gamma$. The first α is
    $\min(\alpha_0, \text{start})$. ``reject``: closure mode undoes a step whose
    batch loss rose (α × ``backoff``).
    """

    name: str = "asym"
    beta: float = 0.9
    k: float = 3.0
    dec_cap: float = 0.8
    gamma: float = 0.5
    start: float | None = 1e-6
    fmin: float = 0.5
    fmax: float = 4.0
    nonconvex: float = 1.25
    reject: bool = False
    backoff: float = 1.0
    lr_min: float = 1e-10
    lr_max: float = 10.0

    @property
    def uses_scale_slope(self) -> bool:
        return self.horizon > 0 or self.horizon_up > 0 or self.horizon_grow

    def init(self, alpha0: float, closure: bool) -> State:
        a0 = min(alpha0, self.start) if self.start is not None else alpha0
        return {"alpha": a0, "closure": float(closure), "A": math.nan, "Cs": math.nan,
                "step": a0, "n": 0.0}

    def _factor(self, s: State) -> float:
        beta = self.beta
        b = _Ema.mean(s, "b", beta)
        c = _Ema.mean(s, "c", beta)
        b2 = _Ema.mean(s, "b2", beta)
        sd = math.sqrt(max(b2 - b * b, 0.0) * (1 - beta) / (1 + beta))
        step = s["step"]
        f = 1 + b / (step * c) if c > 0 else self.nonconvex
        f = _clamp(f, self.fmin, self.fmax)
        if f < 1:
            if b >= -self.k * sd:
                f = 1.0
            else:
                f = max(f, self.dec_cap ** (1 / self.gamma))
        return f

    def before_step(self, state: State, obs: Before) -> tuple[State, float]:
        s = dict(state)
        if not obs.finite:
            s["alpha"] = max(s["alpha"] * 0.1, self.lr_min)
        elif obs.slope is not None and s["step"] > 0:
            step = s["step"]
            B = obs.slope
            C = s["Cs"] if s["closure"] else s["A"] - B
            b, c = B / step, C / step**2
            if math.isfinite(b) and math.isfinite(c):
                _Ema.update(s, "b", b, self.beta)
                _Ema.update(s, "c", c, self.beta)
                _Ema.update(s, "b2", b * b, self.beta)
                s["n"] += 1
                f = self._factor(s)
                s["alpha"] = _clamp(s["alpha"] * f**self.gamma, self.lr_min, self.lr_max)
        s["step"] = s["alpha"] * obs.schedule
        return s, s["alpha"]

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        s = dict(state)
        s["A"] = obs.slope
        accept = True
        if obs.lookahead_slope is not None:
            s["Cs"] = obs.slope - obs.lookahead_slope
            if self.reject and obs.lookahead_loss > obs.loss:
                accept = False
                s["alpha"] = max(s["alpha"] * self.backoff, self.lr_min)
        return s, accept, s["alpha"]


@dataclass(frozen=True)
class Window(Controller):
    r"""Averaged line-minimum target with a momentum correction and an asymmetric trust region.

    Scale-free per-step values, with $lpha$ the step that made $d_t$:
    $a = A/lpha$ and $c = (A - B_x)/lpha^2$, where $B_x$ is the same-batch
    lookahead slope $B_s$ in closure mode (``curvature="same"``) and the fresh slope
    $B$ of the next batch closure-free. Bias-corrected EMAs (β) give $ar a, ar c$
    and the target

    $$lpha^\star = \kappa\, m\, ar a / ar c,$$

    the line minimum along $d$ of the averaged quadratic model, times $m = 1 - eta_1$
    in closure mode (``momentum`` = the inner optimizer's $eta_1$: a displacement
    keeps moving the parameters for $pprox 1/(1-eta_1)$ steps) or ``m_free``
    closure-free, times κ. Then $\loglpha$ moves by γ·log(α*/α), clipped to
    [log ``dec``, log ``inc``]; $ar c \le 0$ grows α by ``inc``. First α =
    min(α₀, ``start``). ``reject`` (closure): undo a step whose batch loss rose by more
    than ``armijo``·A/2 below… (see ``after_step``) and multiply α by ``backoff``.
    """

    name: str = "win"
    beta: float = 0.9
    kappa: float = 1.0
    momentum: float = 0.0
    m_free: float = 1.0
    gamma: float = 1.0
    inc: float = 2.0
    dec: float = 0.8
    start: float | None = 1e-6
    reject: bool = False
    backoff: float = 0.7
    correct: bool = True
    cpow: float = 1.0  # the momentum correction (1 − β₁)^cpow
    lr_min: float = 1e-10
    lr_max: float = 100.0

    @property
    def uses_scale_slope(self) -> bool:
        return self.horizon > 0 or self.horizon_up > 0 or self.horizon_grow

    def init(self, alpha0: float, closure: bool) -> State:
        a0 = min(alpha0, self.start) if self.start is not None else alpha0
        return {"alpha": a0, "closure": float(closure), "A": math.nan, "step": a0, "n": 0.0}

    def _move(self, s: State, A: float, Bx: float) -> None:
        step = s["step"]
        a, c = A / step, (A - Bx) / step**2
        if not (math.isfinite(a) and math.isfinite(c)) or (A == 0 and Bx == 0):
            return
        _Ema.update(s, "a", a, self.beta)
        _Ema.update(s, "c", c, self.beta)
        s["n"] += 1
        abar, cbar = _Ema.mean(s, "a", self.beta), _Ema.mean(s, "c", self.beta)
        if cbar <= 0 or abar <= 0:
            f = self.inc if cbar <= 0 < abar else self.dec
        else:
            m = ((1 - self.momentum * self.correct) ** self.cpow if s["closure"]
                 else self.m_free)
            target = self.kappa * m * abar / cbar
            f = math.exp(_clamp(self.gamma * math.log(target / s["alpha"]),
                                math.log(self.dec), math.log(self.inc)))
        s["alpha"] = _clamp(s["alpha"] * f, self.lr_min, self.lr_max)

    def before_step(self, state: State, obs: Before) -> tuple[State, float]:
        s = dict(state)
        if not obs.finite:
            s["alpha"] = max(s["alpha"] * 0.1, self.lr_min)
        elif obs.slope is not None and not s["closure"]:
            self._move(s, s["A"], obs.slope)
        s["step"] = s["alpha"] * obs.schedule
        return s, s["alpha"]

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        s = dict(state)
        s["A"] = obs.slope
        accept = True
        if obs.lookahead_slope is not None:
            if self.reject and obs.lookahead_loss > obs.loss:
                accept = False
                s["alpha"] = max(s["alpha"] * self.backoff, self.lr_min)
            else:
                self._move(s, obs.slope, obs.lookahead_slope)
        return s, accept, s["alpha"]


@dataclass(frozen=True)
class Gate(Controller):
    r"""Fast start, then a significance-gated Newton factor on a shifted slope (the candidate).

    Phase 1 (from α = min(α₀, ``start``)): α × ``g1`` per step while the per-step
    slope ratio ρ = B_x/A stays above ``rho_stop`` (B_x = B_s in closure mode, the
    fresh B closure-free; on a quadratic ρ = 1 − α/α_line, so ρ > ½ means α < α_line/2).

    Phase 2: bias-corrected EMAs (β) of $b = B/lpha$ (fresh slope), $b^2$,
    $a = A/lpha$ and $c = (A - B_c)/lpha^2$ ($B_c = B_s$ in closure mode,
    the fresh B closure-free); the shifted slope $	ilde b = ar b + 	au ar a$ with
    $	au = 	au_0 (1-eta_1)^p$ (aim past the expected-loss minimum, where the
    fresh slope is ρ* = −τ of A); factor $f = 1 + 	ilde b/(lpha ar c)$
    (``inc`` if $ar c \le 0$) clamped to [0.5, ``inc``], a decrease only if
    $	ilde b < -k\,sd$ ($sd^2 = \mathrm{var}(b)(1-eta)/(1+eta)$), at most
    ``dec`` per step; α ← α f^γ. ``reject`` (closure): undo a step whose batch loss
    rose and multiply α by ``backoff``.
    """

    name: str = "gate"
    start: float | None = 1e-6
    g1: float = 2.0
    rho_stop: float = 0.5
    beta: float = 0.9
    tau0: float = 0.0
    power: float = 0.0
    momentum: float = 0.0
    k: float = 3.0
    dec: float = 0.8
    inc: float = 4.0
    gamma: float = 0.5
    streak: float = math.inf  # closure: the streak-th consecutive undo scales α by streak_factor
    streak_factor: float = 0.5
    streak_cap: bool = False  # the streak also sets the ratchet's cap
    first_undo: float = 1.0  # < 1 (H37): the run's first undo caps at ratchet·α, scales α by it
    first_undo_plain: bool = False  # H37: only without momentum (β₁ = 0)
    peak: float = 1.0  # the inner step uses peak·α·s (H7: a schedule's peak above the constant)
    uncompensated: bool = False  # the Newton target sets α, not α·s (schedule not undone)
    creep: float = 0.0  # > 0: after creep_after phase-2 steps, growth ≤ ×creep per step
    creep_after: float = 50.0
    ratchet: float = 0.0  # > 0: after a gated decrease at α, growth stops at ratchet·α
    floor: float = 0.0  # > 0: α never falls below floor × the largest α of phase 2
    ratchet_k: float = 0.0  # only a decrease this many s.d. beyond the gate sets the cap
    relax: float = 1.0  # the ceiling grows by this factor per phase-2 step
    relax_gated: float = 1.0  # H14: … by this factor on each step whose growth passed the gate
    brake: float = 0.0  # > 0: shrink when the fast average of A/α exceeds brake × the slow one
    brake_factor: float = 0.5
    brake_plain: bool = False  # H34: the brake only closure-free without momentum (β₁ = 0)
    brake_growing: bool = False  # H34: … and only on a step whose gated factor would grow α
    rho_rel: bool = False  # phase 1 stops at rho_stop × the initial ratio ρ₀
    kg: float = -math.inf  # grow only when the shifted slope is kg s.d. above 0
    prime: float = 0.0  # > 0 (H9a): the ratchet's cap starts at prime × the α where phase 1 ended
    overshoot: float = -math.inf  # H9b: a per-step fresh ratio ρ = B/A below this is an overshoot
    overshoot_shrink: float = 0.5  # … then α ← shrink·α (≤ 0: α/(1 − ρ), the event's line minimum)
    overshoot_cap: float = 0.9  # … and the ratchet's cap ← min(cap, overshoot_cap × α)
    overshoot_lag: bool = False  # … α ← min(α, ᾱ_lag) instead, the EMA (β) of log α
    overshoot_cap_lag: bool = False  # … and the cap ← min(cap, ᾱ_lag) instead
    overshoot_scaled: bool = False  # the threshold is overshoot / (1 − β₁)
    overshoot_power: bool = False  # the shrink is applied to the power 1 − β₁
    overshoot_fix: bool = False  # after the overshoot, gated decreases no longer lower the cap
    overshoot_once: bool = True  # only the first overshoot of the run acts
    overshoot_plain: bool = False  # H11: the overshoot acts only when β₁ = 0 and closure-free
    overshoot_free: bool = False  # H20: … only closure-free (any β₁)
    curvature: str = "auto"  # "auto": same-batch in closure mode; "fresh": always A − B
    reject: bool = False
    backoff: float = 0.7
    lr_min: float = 1e-10
    lr_max: float = 100.0
    anchor: float = 0.0  # K > 0: phase 1 doubles whatever ρ says while α < α₀/K (α₀ = user lr)
    anchor_stop: bool = False  # H19: reaching α₀/K ends phase 1 (phase 2 climbs from there)
    stall: int = 0  # H21: W > 0: every W phase-2 steps, compare the window's mean log a
    stall_drop: float = 0.5  # … with the previous window's: unless a fell by this factor,
    stall_factor: float = 0.8  # … α ← α × stall_factor and the cap ← min(cap, the new α)
    stall_momentum: bool = False  # … only closure-free with β₁ > 0 (H11's event covers β₁ = 0)
    stall_grow: float = 1.0  # H22: each window is this many times longer than the one before
    grow_max: float = math.inf  # H23: phase-2 growth at most ×grow_max per step
    lagged: bool = False  # H23: the averaged slope is taken at the averaged step, not at η
    slow: int = 0  # H25: W > 0: below the cap, a window of W updates tests growth on its mean
    slow_plain: bool = False  # … only closure-free without momentum
    horizon: float = 0.0  # H26: k > 0: α ← horizon_factor·α (and the cap) when the EMA of
    horizon_beta: float = 0.98  # … h = ⟨g_t, θ_t − θ_0⟩ (β) is k s.d. of its mean above 0,
    horizon_min: float = 20.0  # … tested once it holds this many phase-2 steps (then restarted)
    horizon_factor: float = 0.8
    horizon_grow: bool = False  # … and no phase-2 growth while that EMA of h is above 0
    horizon_up: float = 0.0  # H26: k > 0: where the rule does not shrink, α ≥ α·horizon_rate
    horizon_rate: float = 1.02  # … (the cap follows) while the EMA of h is k s.d. below 0
    tau_plain: float = -1.0  # H28: ≥ 0: τ without momentum (β₁ = 0) instead of τ₀
    tau_plain_closure: bool = False  # … only for closure steps with the undo (``reject``)
    warmup_free: bool = False  # H29: the step is α·s/max(s so far): a schedule's rise is ignored
    warmup_plain: bool = False  # … only without momentum (β₁ = 0)
    decay_weighted: bool = False  # H30: phase-2 growth ×(new/α)^(s/max s): a decay is not undone
    cap_step: bool = False  # H31: a cap set at the schedule's factor s_c also holds α·s ≤ cap·s_c
    floor_step: bool = False  # H31: the floor is floor × the largest step α·s / max(s so far)
    floor_reset: bool = False  # H31: a non-finite step lowers the floor's peak with α
    overshoot_run: int = 0  # H32: K > 0: K phase-2 fresh ratios in a row below ``overshoot``
    # (closure-free) shrink α × overshoot_shrink and cap it at overshoot_cap × α, every time
    overshoot_run_plain: bool = False  # … only without momentum (β₁ = 0)
    overshoot_run_floor: bool = False  # … and the floor's peak falls to the new α
    tau_sched: float = -1.0  # H33: ≥ 0: τ for every β₁ once the schedule's factor was not 1
    tau_sched_plain: bool = False  # … only closure-free without momentum (β₁ = 0)
    sched_hold: int = 0  # H35: while the schedule's factor is below its peak so far, 1: no
    # stall step-down (the schedule is the run's decay), 2: no gated decrease either, 3: no
    # gated change at all (α holds the scale it had at the schedule's peak), 4: as 2 unless
    # the averaged fresh ratio b̄/ā is below −1 (the averaged step is past the stability edge)
    sched_hold_below: float = 1.0  # … "below its peak" is below this fraction of the peak
    sched_hold_after: float = 0.0  # … and only after this many phase-2 updates

    @property
    def uses_scale_slope(self) -> bool:
        return self.horizon > 0 or self.horizon_up > 0 or self.horizon_grow

    def init(self, alpha0: float, closure: bool) -> State:
        a0 = min(alpha0, self.start) if self.start is not None else alpha0
        s = {"alpha": a0, "closure": float(closure), "A": math.nan, "Cs": math.nan,
             "rs": math.nan, "step": a0, "n": 0.0, "phase": 1.0}
        if self.anchor > 0:
            s["alpha0"] = alpha0  # the run depends on α₀, not only on the first α
        return s

    def before_step(self, state: State, obs: Before) -> tuple[State, float]:
        s = dict(state)
        cap0 = s.get("ceiling", math.inf)
        decaying = False
        if self.sched_hold:
            s["shmax"] = max(s.get("shmax", 0.0), obs.schedule)
            decaying = (obs.schedule < self.sched_hold_below * s["shmax"]
                        and s["n"] >= self.sched_hold_after)
        if not obs.finite:
            s["alpha"] = max(s["alpha"] * 0.1, self.lr_min)
            s["phase"] = 2.0
            if self.floor_reset and "peak" in s:
                s["peak"] = min(s["peak"], s["alpha"] * (s.get("fmax", 1.0)
                                                        if self.floor_step else 1.0))
        elif (obs.slope is not None and math.isfinite(s["A"]) and s["A"] != 0
              and s["step"] > 0):
            step, A, B = s["step"], s["A"], obs.slope
            same = s["closure"] and self.curvature == "auto"
            # the α the averages were formed at: bias-corrected EMA of log α (H9)
            lag = s["alpha"]
            if self.overshoot_lag or self.overshoot_cap_lag:
                _Ema.update(s, "la", math.log(s["alpha"]), self.beta)
                s["nl"] = s.get("nl", 0.0) + 1
                lag = math.exp(_Ema.mean(s, "la", self.beta, "nl"))
            rho = s["rs"] if same else B / A
            if self.rho_rel and s["phase"] == 1.0:
                # ρ(α) ≈ ρ₀(1 − α/α*) on a noisy quadratic (ρ₀ = the gradient's signal
                # fraction): stop growing once the averaged ρ is below rho_stop·ρ₀.
                xb, xa = (s["rs"] * A if same else B) / step, A / step
                s["n1"] = s.get("n1", 0.0) + 1
                if s["n1"] <= 4:
                    s["sb0"] = s.get("sb0", 0.0) + xb
                    s["sa0"] = s.get("sa0", 0.0) + xa
                _Ema.update(s, "pb", xb, 0.5)
                _Ema.update(s, "pa", xa, 0.5)
                rho0 = s["sb0"] / s["sa0"] if s.get("sa0", 0.0) > 0 else 1.0
                rho = s["pb"] / s["pa"] if s["pa"] > 0 else -1.0
                grow = xb > 0 and (s["n1"] <= 4 or (rho0 > 0 and rho > self.rho_stop * rho0))
            else:
                grow = rho > self.rho_stop
            target = s["alpha0"] / self.anchor if self.anchor > 0 else 0.0
            if s["phase"] == 1.0 and s["alpha"] < target:
                # anchored start: double unconditionally up to α₀/K (clamped there)
                s["alpha"] = min(s["alpha"] * self.g1, target, self.lr_max)
                if self.anchor_stop and s["alpha"] >= target:
                    s["phase"] = 2.0
            elif s["phase"] == 1.0 and grow:
                s["alpha"] = min(s["alpha"] * self.g1, self.lr_max)
            else:
                if s["phase"] == 1.0 and self.prime > 0:
                    s["ceiling"] = self.prime * s["alpha"]
                s["phase"] = 2.0
                C = s["Cs"] if same else A - B
                b, a, c = B / step, A / step, C / step**2
                for key, v in (("b", b), ("b2", b * b), ("a", a), ("c", c)):
                    _Ema.update(s, key, v, self.beta)
                if self.lagged:
                    _Ema.update(s, "e", step, self.beta)
                s["n"] += 1
                bb, aa = _Ema.mean(s, "b", self.beta), _Ema.mean(s, "a", self.beta)
                cc, b2 = _Ema.mean(s, "c", self.beta), _Ema.mean(s, "b2", self.beta)
                sd = math.sqrt(max(b2 - bb * bb, 0.0) * (1 - self.beta) / (1 + self.beta))
                _Ema.update(s, "af", a, 0.5)
                _Ema.update(s, "as", a, 0.95)
                blowup = (self.brake > 0 and s["n"] > 4
                          and s["af"] > self.brake * _Ema.mean(s, "as", 0.95)
                          and not (self.brake_plain
                                   and (s["closure"] or self.momentum != 0)))
                tau = self.tau0 * (1 - self.momentum) ** self.power
                if (self.tau_plain >= 0 and self.momentum == 0
                        and (not self.tau_plain_closure or (s["closure"] and self.reject))):
                    tau = self.tau_plain  # H28: aim further past the minimum without momentum
                if (self.tau_sched >= 0 and s.get("scheduled")
                        and not (self.tau_sched_plain
                                 and (s["closure"] or self.momentum != 0))):
                    tau = self.tau_sched  # H33: a decaying schedule anneals; aim further
                shifted = bb + tau * aa
                if self.lagged and cc > 0:
                    # H23: on the quadratic model b(η) = a − c η, the average b̄ is the slope
                    # at the average step ē; the slope at η is b̄ − c̄ (η − ē), so that the
                    # Newton target is ē + b̃/c̄ (not η + b̃/c̄, which overshoots a fast climb)
                    shifted -= cc * (step - _Ema.mean(s, "e", self.beta))
                f = 1 + shifted / (step * cc) if cc > 0 else self.inc
                if self.uncompensated:
                    # the target step η·f names α itself (the schedule then scales it):
                    # factor on α = η f / α = s f
                    f *= step / s["alpha"]
                f = _clamp(f, 0.5, self.inc)
                if f < 1:
                    f = 1.0 if shifted >= -self.k * sd else max(f, self.dec ** (1 / self.gamma))
                    if decaying and (self.sched_hold in (2, 3)
                                     or (self.sched_hold == 4 and bb >= -aa)):
                        f = 1.0  # H35: the schedule does the decay
                elif shifted <= self.kg * sd:
                    f = 1.0
                if decaying and self.sched_hold == 3:
                    f = 1.0
                if blowup and (f > 1 or not self.brake_growing):
                    # |A|/α jumped above its slow average: the run is blowing up
                    f = self.brake_factor ** (1 / self.gamma)
                new = _clamp(s["alpha"] * f**self.gamma, self.lr_min, self.lr_max)
                if self.ratchet > 0:
                    # a significant decrease marks an overshoot: cap later growth below it
                    ceiling = s.get("ceiling", math.inf) * self.relax
                    if (f < 1 and shifted < -self.ratchet_k * sd
                            and not (self.overshoot_fix and s.get("shot"))):
                        ceiling = min(ceiling, self.ratchet * s["alpha"])
                    if f > 1:  # a significant growth (the gate passed) relaxes the cap (H14)
                        ceiling *= self.relax_gated
                        new = min(new, max(ceiling, s["alpha"]))
                    s["ceiling"] = ceiling
                new = min(new, max(s["alpha"] * self.grow_max, s["alpha"]))
                if (self.slow > 0 and math.isfinite(s.get("ceiling", math.inf))
                        and not (self.slow_plain and (s["closure"] or self.momentum != 0))):
                    # H25: once a cap is known, growth up to it is safe; a window's mean
                    # shifted slope has √(W/19) times less noise than the EMA's (whose
                    # effective sample is (1 + β)/(1 − β) = 19), so a small steady "grow"
                    # that the EMA gate never passes would show up at the window's end
                    x = b + tau * a
                    for key, v in (("xw", x), ("xw2", x * x), ("cw", c), ("xn", 1.0)):
                        s[key] = s.get(key, 0.0) + v
                    if s["xn"] >= self.slow:
                        n, m = s["xn"], s["xw"] / s["xn"]
                        se = math.sqrt(max(s["xw2"] / n - m * m, 0.0) / n)
                        cw = s["cw"] / n
                        if f == 1.0 and m > self.kg * se and cw > 0:
                            fw = min(1 + m / (step * cw), self.inc)
                            new = max(new, min(s["alpha"] * fw**self.gamma, s["ceiling"]))
                        s["xw"] = s["xw2"] = s["cw"] = s["xn"] = 0.0
                if self.creep > 0 and s["n"] > self.creep_after:
                    new = min(new, s["alpha"] * self.creep)  # slow growth once the scale is known
                limit = self.overshoot / (1 - self.momentum if self.overshoot_scaled else 1)
                plain = self.momentum == 0 and not s["closure"]
                if (B / A < limit and not (self.overshoot_once and s.get("shot"))
                        and (plain or not self.overshoot_plain)
                        and not (self.overshoot_free and s["closure"])):
                    # the step went past the fresh batch's line minimum by more than 2×
                    # (ρ < −1 on a quadratic): remember it as a cap, and step back
                    s["shot"] = 1.0
                    s["ceiling"] = min(s.get("ceiling", math.inf),
                                       lag if self.overshoot_cap_lag
                                       else self.overshoot_cap * s["alpha"])
                    shrink = (self.overshoot_shrink if self.overshoot_shrink > 0
                              else 1 / (1 - B / A))
                    target = lag if self.overshoot_lag else shrink * s["alpha"]
                    if self.overshoot_power:
                        target = s["alpha"] * (target / s["alpha"]) ** (1 - self.momentum)
                    new = min(new, target)
                if (self.overshoot_run > 0 and not s["closure"]
                        and not (self.overshoot_run_plain and self.momentum != 0)):
                    # H32: a run of fresh overshoots is a blow-up in progress, whose variance
                    # keeps the significance gate shut; act on it at every K-th in a row
                    s["orun"] = s.get("orun", 0.0) + 1 if B / A < self.overshoot else 0.0
                    if s["orun"] >= self.overshoot_run:
                        s["orun"] = 0.0
                        s["ceiling"] = min(s.get("ceiling", math.inf),
                                           self.overshoot_cap * s["alpha"])
                        new = min(new, self.overshoot_shrink * s["alpha"])
                        if self.overshoot_run_floor:
                            s["peak"] = min(s.get("peak", 0.0), new)
                if (self.stall > 0 and a > 0 and not decaying
                        and not (self.stall_momentum
                                 and (s["closure"] or self.momentum == 0))):
                    # a stalled gradient scale (a = A/η not falling over a window) reads as
                    # a run at its noise floor or held above its stability edge: step down
                    s["sw"] = s.get("sw", 0.0) + math.log(a)
                    s["sn"] = s.get("sn", 0.0) + 1
                    if s["sn"] >= s.get("sW", self.stall):
                        mean, prev = s["sw"] / s["sn"], s.get("sp", math.nan)
                        if math.isfinite(prev) and mean > prev + math.log(self.stall_drop):
                            new = min(new, self.stall_factor * s["alpha"])
                            s["ceiling"] = min(s.get("ceiling", math.inf), new)
                        s["sp"], s["sw"], s["sn"] = mean, 0.0, 0.0
                        # H22: with windows growing geometrically, a ∝ t^(−p) falls by
                        # stall_grow^p per window at every t, so the test asks p ≥ log(1/drop)
                        # / log(grow) instead of a fall per fixed window that shrinks as t grows
                        s["sW"] = s.get("sW", self.stall) * self.stall_grow
                h = obs.scale_slope
                if self.uses_scale_slope and h is not None and math.isfinite(h):
                    # H26: h > 0 on average means the run's displacement from θ_0 is longer
                    # than the loss wants: the iterate oscillates around the valley at this α
                    # more than it progresses along it (the comparator of the best constant
                    # scale in hindsight, as Mechanic's); step down and cap growth there.
                    # Growth (`horizon_up`): h < 0 means a longer displacement would still
                    # help: grow past the one-step target while the gate holds
                    hb = self.horizon_beta
                    _Ema.update(s, "hm", h, hb)
                    _Ema.update(s, "hq", h * h, hb)
                    s["hn"] = s.get("hn", 0.0) + 1
                    if self.horizon_grow and _Ema.mean(s, "hm", hb, "hn") > 0:
                        new = min(new, s["alpha"])  # the run already overshoots its scale
                    if s["hn"] >= self.horizon_min:
                        hm, hq = _Ema.mean(s, "hm", hb, "hn"), _Ema.mean(s, "hq", hb, "hn")
                        hsd = math.sqrt(max(hq - hm * hm, 0.0) * (1 - hb) / (1 + hb))
                        if self.horizon > 0 and hm > self.horizon * hsd:
                            new = min(new, self.horizon_factor * s["alpha"])
                            s["ceiling"] = min(s.get("ceiling", math.inf), new)
                            s["hm"] = s["hq"] = s["hn"] = 0.0
                        elif (self.horizon_up > 0 and hm < -self.horizon_up * hsd
                              and new >= s["alpha"]):
                            new = min(max(new, s["alpha"] * self.horizon_rate), self.lr_max)
                            if "ceiling" in s:
                                s["ceiling"] = max(s["ceiling"], new)
                if self.decay_weighted and new > s["alpha"] and s.get("smax", 0.0) > 0:
                    # H30: growth in log α is weighted by s/max(s) of the pending step, so that
                    # a rule tracking a decay s → s_end grows α by at most exp(1 − s_end/max s)
                    w = s["sched"] / s["smax"]
                    new = s["alpha"] * (new / s["alpha"]) ** w
                if self.floor > 0 and self.floor_step:
                    # H31: the peak is a step, α·s; the floor on α is its share at the largest
                    # factor so far (the upcoming one included), so that a warmup's rise does
                    # not lift the floor's step, and a decay does not lift the floor on α
                    s["peak"] = max(s.get("peak", 0.0), s["step"])
                    s["fmax"] = max(s.get("fmax", 0.0), obs.schedule, s["step"] / s["alpha"])
                    new = max(new, self.floor * s["peak"] / s["fmax"])
                elif self.floor > 0:
                    # the brake may undo at most a factor 1/floor of the largest α reached
                    s["peak"] = max(s.get("peak", 0.0), s["alpha"])
                    new = max(new, self.floor * s["peak"])
                s["alpha"] = new
        if self.cap_step:
            s = self._hold_cap_step(s, cap0, obs.schedule)
        if self.tau_sched >= 0 and obs.schedule != 1.0:
            s["scheduled"] = 1.0
        rise = 1.0
        if (self.warmup_free and obs.schedule > 0
                and not (self.warmup_plain and self.momentum != 0)):
            # H29: the rule has its own start, so a warmup only carries the step past the
            # cap and the floor it set in α; keep the schedule's fall, drop its rise
            s["rmax"] = rise = max(s.get("rmax", 0.0), obs.schedule)
        s["step"] = s["alpha"] * self.peak * obs.schedule / rise
        if self.decay_weighted:
            s["sched"], s["smax"] = obs.schedule, max(s.get("smax", 0.0), obs.schedule)
        return s, s["alpha"] * self.peak / rise

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        s = dict(state)
        cap0 = s.get("ceiling", math.inf)
        s["A"] = obs.slope
        accept = True
        if obs.lookahead_slope is not None:
            s["Cs"] = obs.slope - obs.lookahead_slope
            s["rs"] = obs.lookahead_slope / obs.slope if obs.slope else math.nan
            if self.reject and obs.lookahead_loss > obs.loss:
                accept = False
                s["streak"] = s.get("streak", 0.0) + 1
                shrink = self.backoff if s["streak"] < self.streak else self.streak_factor
                if (self.first_undo < 1 and not s.get("undone")
                        and not (self.first_undo_plain and self.momentum != 0)):
                    s["undone"] = 1.0  # H37: the first undo is the overshoot event
                    s["ceiling"] = min(s.get("ceiling", math.inf), self.ratchet * s["alpha"])
                    shrink = min(shrink, self.first_undo)
                if self.streak_cap and s["streak"] >= self.streak:
                    s["ceiling"] = min(s.get("ceiling", math.inf), self.ratchet * s["alpha"])
                s["alpha"] = max(s["alpha"] * shrink, self.lr_min)
            else:
                s["streak"] = 0.0
        if self.cap_step:
            s = self._hold_cap_step(s, cap0, None)
        return s, accept, s["alpha"]

    def _hold_cap_step(self, s: State, cap0: float, schedule: float | None) -> State:
        """H31: a cap set now is also a cap on the step, at the pending step's factor s_c;
        when a rising schedule (``schedule`` > s_c) would carry α·s past cap·s_c, α falls."""
        if s.get("ceiling", math.inf) < cap0:
            s["cap_s"] = s.get("sched", 1.0)  # the factor of the step that set the cap
        if schedule is not None:
            if "cap_s" in s and schedule > s["cap_s"]:
                s["alpha"] = min(s["alpha"], s["ceiling"] * s["cap_s"] / schedule)
            s["sched"] = schedule
        return s


@dataclass(frozen=True)
class PlainClosure(Controller):
    """H24: ``alt`` in closure mode without momentum (β₁ = 0), ``base`` otherwise."""

    name: str = "plain_closure"
    momentum: float = 0.0
    base: Controller = field(default_factory=Controller)
    alt: Controller = field(default_factory=Controller)

    def _pick(self, closure: bool) -> Controller:
        use = self.alt if closure and self.momentum == 0 else self.base
        return replace(use, momentum=self.momentum) if hasattr(use, "momentum") else use

    def init(self, alpha0: float, closure: bool) -> State:
        return {**self._pick(closure).init(alpha0, closure), "closure_mode": closure}

    def before_step(self, state: State, obs: Before) -> tuple[State, float]:
        return self._pick(state["closure_mode"]).before_step(state, obs)

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        return self._pick(state["closure_mode"]).after_step(state, obs)


@dataclass(frozen=True)
class Handover(Controller):
    r"""H27: the default rule from the user's α₀ first, then ``then`` (phase 2) at its scale.

    For the first ``steps`` updates, ``first`` (the Newton rule, which reaches the scale
    within a few dozen steps from any α₀) sets α; the next update starts ``then``'s phase 2
    at ``frac`` × the geometric mean of the α of updates ``steps``/2 … ``steps`` (the Newton
    rule's α is noisy step to step), with the pending displacement's A and η carried over,
    so that the averaged rule forms its estimates at the scale instead of climbing to it.
    """

    name: str = "handover"
    first: Controller = field(default_factory=lambda: Today())
    then: Controller = field(default_factory=Controller)
    steps: int = 100
    frac: float = 0.5
    momentum: float = 0.0

    def _then(self) -> Controller:
        return (replace(self.then, momentum=self.momentum)
                if hasattr(self.then, "momentum") else self.then)

    def init(self, alpha0: float, closure: bool) -> State:
        return {**self.first.init(alpha0, closure), "ho": 0.0, "ho_n": 0.0, "ho_log": 0.0,
                "ho_k": 0.0}

    def before_step(self, state: State, obs: Before) -> tuple[State, float]:
        if state["ho"]:
            return self._then().before_step(state, obs)
        if state["ho_n"] >= self.steps and obs.slope is not None and obs.finite:
            alpha = self.frac * math.exp(state["ho_log"] / max(state["ho_k"], 1.0))
            t = self._then().init(alpha, bool(state["closure"]))
            A, C = state["A"], state.get("C", math.nan)
            t.update(alpha=alpha, phase=2.0, A=A, step=state["step"], ho=1.0, Cs=C,
                     rs=(A - C) / A if A else math.nan)
            return self._then().before_step(t, obs)
        s, alpha = self.first.before_step(state, obs)
        s = dict(s)
        if obs.slope is not None and obs.finite:
            s["ho_n"] += 1
            if s["ho_n"] > self.steps / 2:
                s["ho_log"] += math.log(s["alpha"])
                s["ho_k"] += 1
        return s, alpha

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        if state["ho"]:
            return self._then().after_step(state, obs)
        return self.first.after_step(state, obs)


REC_V1 = Gate(name="rec_v1", tau0=0.2, power=1.0, kg=2.0, curvature="fresh", reject=True,
              backoff=1.0)
"""The first candidate (``gate_t2m_g2_fresh_rej``): diverges SGD at 3600 evaluations (H5)."""
REC_V2 = replace(REC_V1, name="rec_v2", ratchet=0.9, floor=0.3)
"""``rec_v1`` + ratchet + floor (H5); freezes closure-mode SGD on the CNN (H6)."""
REC_H6 = replace(REC_V2, name="rec_h6", streak=3, streak_cap=True, streak_factor=0.9)
"""``rec_v2`` + undo streak (H6): the recommended controller until H11, named ``rec`` in the
record's tables before H11; the base of the H9–H11 variants."""
REC_H11 = replace(REC_H6, name="rec_h11", overshoot=-1.0, overshoot_plain=True)
"""``rec_h6`` + the first fresh overshoot as an event, closure-free and without momentum
(``rec_o1p``, H11): the recommended controller until H22, named ``rec`` in the record's
tables of H11–H21; the base of the H12–H22 variants."""
REC_H22 = replace(REC_H11, name="rec_h22", stall=100, stall_grow=1.5, stall_drop=1 / 1.5,
                  stall_momentum=True)
"""``rec_h11`` + a step down when the gradient scale stalls over windows of 100, 150, 225, …
updates, closure-free with momentum (``rec_sg100hm``, H22): the recommended controller until
H28's closure-mode τ, named ``rec`` in the record's tables of H22–H28; the base of the
H23–H28 variants."""
REC_H28 = replace(REC_H22, name="rec_h28", tau_plain=0.4, tau_plain_closure=True)
"""``rec_h22`` with τ = 0.4 for closure steps without momentum (the closure-mode half of
``rec_tp4``, H28)."""
REC_H32 = replace(REC_H28, name="rec_h32", overshoot_run=3, overshoot_run_plain=True,
                  overshoot_run_floor=True)
"""``rec_h28`` with H32's run of three fresh overshoots (closure-free, without momentum)
acting as a blow-up, every time: the recommended controller until H35, named ``rec`` in the
record's tables of H32–H34; the base of the H33–H35 variants."""
REC = replace(REC_H32, name="rec", sched_hold=2, sched_hold_after=100)
"""The recommended controller (docs/design/alpha.md, section 4): ``rec_h32`` with H35's hold
(``rec_sh2a100``): while a schedule's factor is below its peak so far, and after 100 phase-2
updates, neither a gated decrease nor a stall step-down lowers α (the schedule decays)."""

CONTROLLERS: dict[str, Controller] = {
    "rec": REC,
    "rec_h22": REC_H22,
    "rec_h28": REC_H28,
    "rec_h32": REC_H32,
    "rec_h11": REC_H11,
    "rec_lag": replace(REC_H22, name="rec_lag", lagged=True),
    "rec_r_gm07": replace(REC_H22, name="rec_r_gm07", rho_rel=True, grow_max=2 ** 0.1),
    "rec_slow": replace(REC_H22, name="rec_slow", slow=100),
    "rec_slowp": replace(REC_H22, name="rec_slowp", slow=100, slow_plain=True),
    "rec_win": PlainClosure(name="rec_win", base=REC_H22, alt=Window(name="win_rej", reject=True)),
    "rec_gm07": replace(REC_H22, name="rec_gm07", grow_max=2 ** 0.1),
    "rec_hz2": replace(REC_H22, name="rec_hz2", horizon=2.0),
    "rec_hz3": replace(REC_H22, name="rec_hz3", horizon=3.0),
    "rec_hg": replace(REC_H22, name="rec_hg", horizon_grow=True),
    "rec_hu": replace(REC_H22, name="rec_hu", horizon_up=2.0),
    "rec_hud": replace(REC_H22, name="rec_hud", horizon_up=2.0, horizon=2.0),
    "rec_hz2f": replace(REC_H22, name="rec_hz2f", horizon=2.0, horizon_beta=0.9, horizon_min=10),
    "rec_hz2h": replace(REC_H22, name="rec_hz2h", horizon=2.0, horizon_beta=0.9, horizon_min=10,
                        horizon_factor=0.5),
    "rec_hg9": replace(REC_H22, name="rec_hg9", horizon_grow=True, horizon_beta=0.9),
    "rec_gm035": replace(REC_H22, name="rec_gm035", grow_max=2 ** 0.05),
    "rec_a64s_st": replace(REC_H22, name="rec_a64s_st", anchor=64.0, anchor_stop=True),
    "rec_a16": replace(REC_H11, name="rec_a16", anchor=16.0),
    "rec_a4": replace(REC_H11, name="rec_a4", anchor=4.0),
    "rec_a16s": replace(REC_H11, name="rec_a16s", anchor=16.0, anchor_stop=True),
    "rec_a64s": replace(REC_H11, name="rec_a64s", anchor=64.0, anchor_stop=True),
    "rec_h6": REC_H6,
    "rec_st100": replace(REC_H11, name="rec_st100", stall=100),
    "rec_st50": replace(REC_H11, name="rec_st50", stall=50),
    "rec_st100m": replace(REC_H11, name="rec_st100m", stall=100, stall_momentum=True),
    "rec_sg100": replace(REC_H11, name="rec_sg100", stall=100, stall_grow=2.0),
    "rec_sg50": replace(REC_H11, name="rec_sg50", stall=50, stall_grow=2.0),
    "rec_sg100h": replace(REC_H11, name="rec_sg100h", stall=100, stall_grow=1.5,
                          stall_drop=1 / 1.5),
    "rec_sg100m": replace(REC_H11, name="rec_sg100m", stall=100, stall_grow=2.0,
                          stall_momentum=True),
    "rec_sg100hm": replace(REC_H11, name="rec_sg100hm", stall=100, stall_grow=1.5,
                           stall_drop=1 / 1.5, stall_momentum=True),
    "rec_of": replace(REC_H11, name="rec_of", overshoot_plain=False, overshoot_free=True),
    "rec_ofm": replace(REC_H11, name="rec_ofm", overshoot_plain=False, overshoot_free=True,
                       overshoot_scaled=True),
    "rec_ofp": replace(REC_H11, name="rec_ofp", overshoot_plain=False, overshoot_free=True,
                       overshoot_power=True),
    "rec_ofmp": replace(REC_H11, name="rec_ofmp", overshoot_plain=False, overshoot_free=True,
                        overshoot_scaled=True, overshoot_power=True),
    "rec_v1": REC_V1,
    "rec_tp4": replace(REC_H22, name="rec_tp4", tau_plain=0.4),
    "rec_tp6": replace(REC_H22, name="rec_tp6", tau_plain=0.6),
    "rec_wf": replace(REC_H28, name="rec_wf", warmup_free=True),
    "rec_wfp": replace(REC_H28, name="rec_wfp", warmup_free=True, warmup_plain=True),
    "rec_dw": replace(REC_H28, name="rec_dw", decay_weighted=True),
    "rec_cs": replace(REC_H28, name="rec_cs", cap_step=True),
    "rec_fs": replace(REC_H28, name="rec_fs", floor_step=True),
    "rec_or3": replace(REC_H28, name="rec_or3", overshoot_run=3),
    "rec_ts5": replace(REC_H32, name="rec_ts5", tau_sched=0.5),
    "rec_ts10": replace(REC_H32, name="rec_ts10", tau_sched=1.0),
    "rec_ts5p": replace(REC_H32, name="rec_ts5p", tau_sched=0.5, tau_sched_plain=True),
    "rec_b10": replace(REC_H32, name="rec_b10", brake=10.0),
    "rec_b3": replace(REC_H32, name="rec_b3", brake=3.0),
    "rec_b3p": replace(REC_H32, name="rec_b3p", brake=3.0, brake_plain=True),
    "rec_b3g": replace(REC_H32, name="rec_b3g", brake=3.0, brake_plain=True, brake_growing=True),
    "rec_sh1": replace(REC_H32, name="rec_sh1", sched_hold=1),
    "rec_sh2": replace(REC_H32, name="rec_sh2", sched_hold=2),
    "rec_sh3": replace(REC_H32, name="rec_sh3", sched_hold=3),
    "rec_sh4": replace(REC_H32, name="rec_sh4", sched_hold=4),
    "rec_sh2_9": replace(REC_H32, name="rec_sh2_9", sched_hold=2, sched_hold_below=0.9),
    "rec_sh2_5": replace(REC_H32, name="rec_sh2_5", sched_hold=2, sched_hold_below=0.5),
    "rec_sh2a50": replace(REC_H32, name="rec_sh2a50", sched_hold=2, sched_hold_after=50),
    "rec_sh2a100": replace(REC_H32, name="rec_sh2a100", sched_hold=2, sched_hold_after=100),
    # H37: the first undo of a closure run as the overshoot event (cap 0.9α, α × 0.5)
    "rec_u5": replace(REC, name="rec_u5", first_undo=0.5),
    "rec_u5p": replace(REC, name="rec_u5p", first_undo=0.5, first_undo_plain=True),
    "rec_fsr": replace(REC_H28, name="rec_fsr", floor_step=True, floor_reset=True),
    "rec_wfp_dw": replace(REC_H28, name="rec_wfp_dw", warmup_free=True, warmup_plain=True,
                          decay_weighted=True),
    "ho100": Handover(name="ho100", then=REC_H22),
    "ho50": Handover(name="ho50", then=REC_H22, steps=50),
    "rec_p8": replace(REC_H6, name="rec_p8", prime=8.0),
    "rec_o1": replace(REC_H6, name="rec_o1", overshoot=-1.0),
    "rec_o1l": replace(REC_H6, name="rec_o1l", overshoot=-1.0, overshoot_shrink=0.0),
    "rec_o1c5": replace(REC_H6, name="rec_o1c5", overshoot=-1.0, overshoot_cap=0.5),
    "rec_o1n": replace(REC_H6, name="rec_o1n", overshoot=-1.0, overshoot_shrink=1.0),
    "rec_o1n5": replace(REC_H6, name="rec_o1n5", overshoot=-1.0, overshoot_shrink=1.0,
                        overshoot_cap=0.5),
    "rec_o1s7": replace(REC_H6, name="rec_o1s7", overshoot=-1.0, overshoot_shrink=0.7),
    "rec_o1g": replace(REC_H6, name="rec_o1g", overshoot=-1.0, overshoot_lag=True),
    "rec_o1gg": replace(REC_H6, name="rec_o1gg", overshoot=-1.0, overshoot_lag=True,
                        overshoot_cap_lag=True),
    "rec_o1gf": replace(REC_H6, name="rec_o1gf", overshoot=-1.0, overshoot_lag=True,
                        overshoot_fix=True),
    "rec_o1f": replace(REC_H6, name="rec_o1f", overshoot=-1.0, overshoot_fix=True),
    "rec_o1gm": replace(REC_H6, name="rec_o1gm", overshoot=-1.0, overshoot_lag=True,
                        overshoot_scaled=True),
    "rec_o1m": replace(REC_H6, name="rec_o1m", overshoot=-1.0, overshoot_scaled=True),
    "rec_o1gp": replace(REC_H6, name="rec_o1gp", overshoot=-1.0, overshoot_lag=True,
                        overshoot_scaled=True, overshoot_power=True),
    "rec_o1a": replace(REC_H6, name="rec_o1a", overshoot=-1.0, overshoot_once=False),
    "rec_o1la": replace(REC_H6, name="rec_o1la", overshoot=-1.0, overshoot_shrink=0.0,
                        overshoot_once=False),
    "rec_o1p": replace(REC_H6, name="rec_o1p", overshoot=-1.0, overshoot_plain=True),
    "rec_o1np": replace(REC_H6, name="rec_o1np", overshoot=-1.0, overshoot_shrink=1.0,
                        overshoot_plain=True),
    "rec_rg02": replace(REC_H11, name="rec_rg02", relax_gated=1.02),
    "rec_rg05": replace(REC_H11, name="rec_rg05", relax_gated=1.05),
    "rec_k5": replace(REC_H6, name="rec_k5", ratchet_k=5.0),
    "rec_k8": replace(REC_H6, name="rec_k8", ratchet_k=8.0),
    "rec_u": replace(REC_H6, name="rec_u", uncompensated=True),
    "rec_u_p2": replace(REC_H6, name="rec_u_p2", uncompensated=True, peak=2.0),
    "rec_v2": REC_V2,
    "rec_c01": replace(REC_V2, name="rec_c01", creep=1.01),
    "rec_c003": replace(REC_V2, name="rec_c003", creep=1.003),
    "rec_s3c": replace(REC_V2, name="rec_s3c", streak=3, streak_cap=True),
    "rec_s3c9": replace(REC_V2, name="rec_s3c9", streak=3, streak_cap=True, streak_factor=0.9),
    "rec_s2": replace(REC_V2, name="rec_s2", streak=2),
    "rec_s3": replace(REC_V2, name="rec_s3", streak=3),
    "rec_s2_b10": replace(REC_V2, name="rec_s2_b10", streak=2, brake=10.0),
    "rec_r8": replace(REC_V1, name="rec_r8", ratchet=0.8),
    "rec_r8_x": replace(REC_V1, name="rec_r8_x", ratchet=0.8, relax=1.002),
    "rec_t1": replace(REC_V1, name="rec_t1", tau0=0.1),
    "rec_r8_f1": replace(REC_V1, name="rec_r8_f1", ratchet=0.8, floor=0.1),
    "rec_r8_f3": replace(REC_V1, name="rec_r8_f3", ratchet=0.8, floor=0.3),
    "rec_r9_f1": replace(REC_V1, name="rec_r9_f1", ratchet=0.9, floor=0.1),
    "today": Today(),
    "today_f3": Today(name="today_f3", floor=0.3),
    "today_f1": Today(name="today_f1", floor=0.1),
    "today_f3_a10": Today(name="today_f3_a10", floor=0.3, floor_after=10),
    "asym": Asym(),
    "asym_k2": Asym(name="asym_k2", k=2.0, dec_cap=0.0),
    "win": Window(),
    "win_k2": Window(name="win_k2", kappa=2.0),
    "win_rej": Window(name="win_rej", reject=True),
    "win_m0": Window(name="win_m0", correct=False),
    "win_m0_rej": Window(name="win_m0_rej", correct=False, reject=True),
    "win_p5_rej": Window(name="win_p5_rej", cpow=0.5, reject=True),
    "win_p5": Window(name="win_p5", cpow=0.5),
    "gate": Gate(),
    "gate_t1m_g2": Gate(name="gate_t1m_g2", tau0=0.1, power=1.0, kg=2.0),
    "gate_t2m_g2": Gate(name="gate_t2m_g2", tau0=0.2, power=1.0, kg=2.0),
    "gate_t1_g2": Gate(name="gate_t1_g2", tau0=0.1, kg=2.0),
    "gate_t3m_g2": Gate(name="gate_t3m_g2", tau0=0.3, power=1.0, kg=2.0),
    "gate_g2_fresh": Gate(name="gate_g2_fresh", kg=2.0, curvature="fresh"),
    "gate_t2m_g2_fresh": Gate(name="gate_t2m_g2_fresh", tau0=0.2, power=1.0, kg=2.0,
                              curvature="fresh"),
    "gate_t2m_g2_fresh_rej": Gate(name="gate_t2m_g2_fresh_rej", tau0=0.2, power=1.0, kg=2.0,
                                  curvature="fresh", reject=True, backoff=1.0),
    "gate_t2m_g2_r": Gate(name="gate_t2m_g2_r", tau0=0.2, power=1.0, kg=2.0, rho_rel=True),
    "gate_t2m_g2_fresh_rej_r": Gate(name="gate_t2m_g2_fresh_rej_r", tau0=0.2, power=1.0,
                                    kg=2.0, curvature="fresh", reject=True, backoff=1.0,
                                    rho_rel=True),
    "gate_t2m_g2_b": Gate(name="gate_t2m_g2_b", tau0=0.2, power=1.0, kg=2.0, brake=3.0),
    "gate_t2m_g2_r_b": Gate(name="gate_t2m_g2_r_b", tau0=0.2, power=1.0, kg=2.0, rho_rel=True,
                            brake=3.0),
    "gate_t2m_g2_rej": Gate(name="gate_t2m_g2_rej", tau0=0.2, power=1.0, kg=2.0, reject=True),
    "gate_t1": Gate(name="gate_t1", tau0=0.1),
    "gate_t2": Gate(name="gate_t2", tau0=0.2),
    "gate_t2m": Gate(name="gate_t2m", tau0=0.2, power=1.0),
    "gate_g1": Gate(name="gate_g1", kg=1.0),
    "gate_g2": Gate(name="gate_g2", kg=2.0),
    "gate_b97": Gate(name="gate_b97", beta=0.97),
    "gate_b97_g1": Gate(name="gate_b97_g1", beta=0.97, kg=1.0),
    "gate_t1_g1": Gate(name="gate_t1_g1", tau0=0.1, kg=1.0),
    "gate_t1m_g1": Gate(name="gate_t1m_g1", tau0=0.1, power=1.0, kg=1.0),
    "gate_rej": Gate(name="gate_rej", reject=True),
}

# β₁ of the inner optimizer, as the core would read it from the param group
MOMENTUM = {"Adam": 0.9, "SGD": 0.0, "SGDm": 0.9, "AdamW": 0.9}


def for_inner(controller: Controller, inner: str) -> Controller:
    """The controller with the inner optimizer's momentum filled in (where it has the field)."""
    if hasattr(controller, "momentum"):
        return replace(controller, momentum=MOMENTUM[inner])
    return controller

# ---------------------------------------------------------------- the training loop

INNER: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "Adam": torch.optim.Adam,
    "SGD": torch.optim.SGD,
    "SGDm": functools.partial(torch.optim.SGD, momentum=0.9),  # untuned: β₁ = 0.9 without Adam
    "AdamW": functools.partial(torch.optim.AdamW, weight_decay=0.01),  # the language model
}


@functools.cache
def problem(name: str) -> Problem:
    """``bar``: the digits MLP bar (64-64-10 tanh, all 1797 samples, batch 64); else newt's."""
    if name == "bar":
        return digits_mlp((64,), "tanh", test_size=None, batch_size=64, name="bar")
    return PROBLEMS[name]()


class RunOut(NamedTuple):
    loss: float
    alphas: list[float]
    rejects: int
    stats: dict[str, float]


def _dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> float:
    return float(sum(torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys, strict=True)))


def _evaluate(model: torch.nn.Module, prob: Problem, batch: Any) -> float:
    for p in model.parameters():
        p.grad = None
    with torch.enable_grad():
        loss = prob.loss(model, batch)
        loss.backward()
    return float(loss.detach())


def train(prob_name: str, inner: str, controller: Controller, alpha0: float, *, closure: bool,
          evals: int, seed: int = 0, schedule: Callable[[float], float] | None = None,
          diagnose: bool = False, checkpoints: int = 0, origin_every: int = 0) -> RunOut:
    """One run; returns the final full-batch training loss and the α trace.

    ``controller`` runs as given: wrap it in `for_inner` (as `evaluate` does) for the inner
    optimizer's β₁, or a Gate runs its β₁ = 0 rule with Adam too.

    ``origin_every`` > 0 moves θ_0 of the scale slope h to θ_t every that many steps
    (H26's local reference). ``diagnose`` (closure-free fixed-lr runs only) also evaluates
    the same batch at θ_{t+1} (not counted, the trajectory is unchanged) to record the ratios
    Σ B_fresh / Σ A and Σ B_s / Σ A over the second half of the run.
    """
    prob = problem(prob_name)
    model = prob.init(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = INNER[inner](params, lr=alpha0)
    batches = prob.batches(seed)
    snaps = [p.detach().clone() for p in params]
    origin = [p.detach().clone() for p in params]  # θ_0, for H26's scale slope
    state = controller.init(alpha0, closure)
    steps = evals // 2 if closure else evals
    pending = False
    alphas: list[float] = []
    rejects = 0
    sums = {"A": 0.0, "Bf": 0.0, "Bs": 0.0, "n": 0}
    last_A = math.nan
    curve: list[tuple[int, float, float]] = []
    for t in range(steps):
        if checkpoints and t % max(steps // checkpoints, 1) == 0:
            curve.append((t, state.get("alpha", math.nan), prob.train_loss(model)))
        batch = next(batches)
        if origin_every and t % origin_every == 0:
            with torch.no_grad():
                for o, p in zip(origin, params, strict=True):
                    o.copy_(p)
        loss = _evaluate(model, prob, batch)
        grads = [p.grad for p in params]
        finite = math.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)
        with torch.no_grad():
            slope = None
            h = (_dot(grads, [p - o for p, o in zip(params, origin, strict=True)])
                 if finite and controller.uses_scale_slope else None)
            if pending and finite:
                slope = _dot(grads, [s - p for s, p in zip(snaps, params, strict=True)])
                if diagnose and t >= steps // 2:
                    sums["Bf"] += slope
                    sums["A"] += last_A
                    sums["n"] += 1
            s = schedule(t / steps) if schedule else 1.0
            state, alpha = controller.before_step(state, Before(slope, finite, s, h))
            alphas.append(alpha)
            if not finite:
                if pending:
                    for p, sn in zip(params, snaps, strict=True):
                        p.copy_(sn)
                pending = False
                continue
            for p, sn in zip(params, snaps, strict=True):
                sn.copy_(p)
            for group in opt.param_groups:
                group["lr"] = alpha * s
            opt.step()
            disp = [sn - p for sn, p in zip(snaps, params, strict=True)]
            A = _dot(grads, disp)
        lookahead_slope = lookahead_loss = None
        if closure or (diagnose and t >= steps // 2):
            lookahead_loss = _evaluate(model, prob, batch)
            with torch.no_grad():
                lookahead_slope = _dot([p.grad for p in params], disp)
            if not closure:
                sums["Bs"] += lookahead_slope
                lookahead_loss = lookahead_slope = None
        last_A = A
        state, accept, _ = controller.after_step(
            state, After(A, lookahead_slope, loss, lookahead_loss))
        if not math.isfinite(A) or (lookahead_loss is not None
                                    and not math.isfinite(lookahead_loss)):
            accept = False
        if not accept:
            rejects += 1
            with torch.no_grad():
                for p, sn in zip(params, snaps, strict=True):
                    p.copy_(sn)
        pending = accept
    final = prob.objective_value(model)  # train loss − f* (f* known), or byte_lm's test loss
    if not math.isfinite(final):
        final = math.inf
    stats: dict[str, Any] = {"curve": curve} if checkpoints else {}
    if diagnose and sums["n"]:
        stats.update({"Bf/A": sums["Bf"] / sums["A"], "Bs/A": sums["Bs"] / sums["A"]})
    return RunOut(final, alphas, rejects, stats)


# ---------------------------------------------------------------- baselines (cached)

LR_GRID = {
    "Adam": tuple(10 ** (k / 4) for k in range(-16, 5)),  # 1e-4 … 10
    "SGD": tuple(10 ** (k / 4) for k in range(-12, 9)),  # 1e-3 … 100
    "SGDm": tuple(10 ** (k / 4) for k in range(-16, 5)),  # 1e-4 … 10
    "AdamW": tuple(10 ** (k / 2) for k in range(-8, -1)),  # 1e-4 … 1e-1, half decades (slow LM)
}
DECADE = tuple(10.0**k for k in range(-6, 1))  # the protocol's grid (benchmarks.run.GRID)
ALPHA0S = (1e-6, 1e-4, 1e-2, 1.0)
CACHE = Path(__file__).resolve().parent.parent / "results" / "alpha_controller_cache.json"


def _load_cache() -> dict[str, Any]:
    if CACHE.exists():
        return json.loads(CACHE.read_text())
    return {}


def cosine(u: float) -> float:
    """Linear warmup over the first 5% of the run, then cosine decay to 0 (BENCHMARKS.md)."""
    return u / 0.05 if u < 0.05 else 0.5 * (1 + math.cos(math.pi * (u - 0.05) / 0.95))


def baseline(prob_name: str, inner: str, evals: int, seed: int,
             verbose: bool = False, schedule: bool = False) -> dict[str, Any]:
    """The fixed-lr sweep (cached in ``benchmarks/results/``): losses per lr, best lr and loss.

    ``schedule``: the same grid with warmup + cosine (the "tuned + cosine" baseline).
    """
    key = f"{prob_name}|{inner}|{evals}|{seed}" + ("|cosine" if schedule else "")
    cache = _load_cache()
    if key not in cache:
        losses, stats = {}, {}
        for lr in LR_GRID[inner]:
            out = train(prob_name, inner, Fixed(), lr, closure=False, evals=evals, seed=seed,
                        diagnose=not schedule, schedule=cosine if schedule else None)
            losses[f"{lr:.4g}"] = out.loss
            stats[f"{lr:.4g}"] = out.stats
            if verbose:
                print(f"  {key} lr={lr:.4g} loss={out.loss:.4g} {out.stats}", file=sys.stderr)
        best = min(losses, key=lambda k: losses[k])
        decade = min((k for k in losses if any(math.isclose(float(k), g) for g in DECADE)),
                     key=lambda k: losses[k])
        cache = _load_cache()
        cache[key] = {"losses": losses, "stats": stats, "best_lr": float(best),
                      "best_loss": losses[best], "decade_lr": float(decade),
                      "decade_loss": losses[decade]}
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache, indent=1))
    return cache[key]


# ---------------------------------------------------------------- evaluation


@dataclass
class Cell:
    """The ratios of one controller on one problem, inner optimizer and mode over α₀."""

    ratios: list[float] = field(default_factory=list)
    fine: list[float] = field(default_factory=list)
    final_alpha: list[float] = field(default_factory=list)
    rejects: list[int] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.ratios)

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)


def evaluate(controller: Controller, prob_name: str, inner: str, closure: bool, evals: int,
             seeds: Iterable[int] = (0,), alpha0s: Sequence[float] = ALPHA0S,
             schedule: bool = False) -> Cell:
    cell = Cell()
    controller = for_inner(controller, inner)
    for seed in seeds:
        ref = baseline(prob_name, inner, evals, seed, schedule=schedule)
        done: dict[float, RunOut] = {}
        for a0 in alpha0s:
            init = controller.init(a0, closure)  # start-small rules share runs
            first = (init["alpha"], init.get("alpha0"))  # (anchored ones depend on α₀)
            if first not in done:
                done[first] = train(prob_name, inner, controller, a0, closure=closure,
                                    evals=evals, seed=seed,
                                    schedule=cosine if schedule else None)
            out = done[first]
            if problem(prob_name).excess:  # nats above the reference instead of a ratio
                cell.ratios.append(out.loss - ref["decade_loss"])
                cell.fine.append(out.loss - ref["best_loss"])
            else:
                cell.ratios.append(_ratio(out.loss, ref["decade_loss"]))
                cell.fine.append(_ratio(out.loss, ref["best_loss"]))
            cell.final_alpha.append(out.alphas[-1])
            cell.rejects.append(out.rejects)
    return cell


LOSS_FLOOR = 1e-12  # objective values below this are float32 round-off (CNN Adam + cosine: 0)


def _ratio(loss: float, ref: float) -> float:
    """``loss / ref``, both floored at `LOSS_FLOOR` so that a reference of exactly 0 is a ratio."""
    return max(loss, LOSS_FLOOR) / max(ref, LOSS_FLOOR)


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "div"
    if x < 1:
        return f"{x:+.3f}" if x <= 0 else f"{x:.3g}"
    return f"{x:.3g}" if x < 1e4 else f"{x:.1e}"


def table(controllers: Sequence[Controller], prob_name: str, evals: int,
          seeds: Sequence[int] = (0,), inners: Sequence[str] = ("Adam", "SGD"),
          modes: Sequence[bool] = (False, True), schedule: bool = False) -> str:
    """A Markdown table: worst / median ratio over α₀ (and seeds), final α range, per cell."""
    heads = [f"{i} {'closure' if m else 'free'}" for i in inners for m in modes]
    lines = [f"problem `{prob_name}`, {evals} evaluations, seeds {list(seeds)}, "
             f"α₀ ∈ {list(ALPHA0S)}; cell = worst / median ratio to the best lr of the "
             "decade grid (the protocol's) (worst / median to the best of the "
             "quarter-decade grid) [final α min–max]",
             "", "| controller | " + " | ".join(heads) + " |",
             "|---|" + "---|" * len(heads)]
    for c in controllers:
        row = []
        for inner in inners:
            for mode in modes:
                t0 = time.time()
                cell = evaluate(c, prob_name, inner, mode, evals, seeds, schedule=schedule)
                row.append(f"{_fmt(cell.worst)} / {_fmt(cell.median)} "
                           f"({_fmt(max(cell.fine))} / {_fmt(statistics.median(cell.fine))}) "
                           f"[{min(cell.final_alpha):.2g}–{max(cell.final_alpha):.2g}]")
                print(f"  {c.name} {prob_name} {inner} {'closure' if mode else 'free'}: "
                      f"{row[-1]} rejects={cell.rejects} ({time.time() - t0:.0f}s)",
                      file=sys.stderr)
        lines.append(f"| {c.name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def per_alpha0_table(controllers: Sequence[Controller], prob_name: str, evals: int,
                     seeds: Sequence[int], inners: Sequence[str],
                     modes: Sequence[bool]) -> str:
    """A Markdown table: the ratio to the decade grid's best lr for every α₀ and seed
    (``s0/s1/…``), with the final α's range, per controller and cell."""
    lines = [f"problem `{prob_name}`, {evals} evaluations, seeds {list(seeds)}; cell = ratio "
             "per seed (s0/s1/…) [final α min–max]", "",
             "| controller | cell | " + " | ".join(f"α₀ = {a:g}" for a in ALPHA0S) + " |",
             "|---|---|" + "---|" * len(ALPHA0S)]
    for c in controllers:
        for inner in inners:
            tuned = for_inner(c, inner)
            for mode in modes:
                cols = []
                for a0 in ALPHA0S:
                    ratios, finals = [], []
                    for seed in seeds:
                        ref = baseline(prob_name, inner, evals, seed)
                        out = train(prob_name, inner, tuned, a0, closure=mode, evals=evals,
                                    seed=seed)
                        ratios.append(_fmt(_ratio(out.loss, ref["decade_loss"])))
                        finals.append(out.alphas[-1])
                    cols.append("/".join(ratios) + f" [{min(finals):.2g}–{max(finals):.2g}]")
                lines.append(f"| {c.name} | {inner} {'closure' if mode else 'free'} | "
                             + " | ".join(cols) + " |")
    return "\n".join(lines)


def spread_table(controllers: Sequence[Controller], prob_name: str, evals: int,
                 seeds: Sequence[int], inners: Sequence[str], modes: Sequence[bool],
                 alpha0s: Sequence[float] = ALPHA0S) -> str:
    """A Markdown table of the distribution of the ratio over many seeds (H20): the bar's
    cells are heavy-tailed, so a worst case over 3–5 seeds is one draw of the tail.

    Cell = median / q75 / q90 / worst of the ratio to the decade grid's best lr over
    every (α₀, seed), the number of runs above 1.25 and above 2, and the worst of the
    ratio to the quarter-decade grid's best lr. Start-small controllers share one run
    between the α₀ below their start (as in ``evaluate``). On a problem scored by excess
    loss (byte_lm) the values are nats and the counts are of pairs above 0.02 and 0.1 nats
    (the issue's targets).
    """
    low, high = (0.02, 0.1) if problem(prob_name).excess else (1.25, 2.0)
    lines = [f"problem `{prob_name}`, {evals} evaluations, seeds 0–{max(seeds)}, "
             f"α₀ ∈ {list(alpha0s)}; cell = median / q75 / q90 / worst ratio to the decade "
             f"grid's best lr (runs > {low:g}, runs > {high:g}, of n) (fine-grid worst)", "",
             "| controller | cell | ratio | runs |", "|---|---|---|---|"]
    for c in controllers:
        for inner in inners:
            for mode in modes:
                cell = evaluate(c, prob_name, inner, mode, evals, seeds, alpha0s=alpha0s)
                ratios, fine = cell.ratios, cell.fine
                print(f"  {c.name} {inner} {'closure' if mode else 'free'}: "
                      + " ".join(_fmt(r) for r in ratios), file=sys.stderr)
                qs = " / ".join(_fmt(float(x)) for x in np.quantile(ratios, (0.5, 0.75, 0.9, 1)))
                lines.append(
                    f"| {c.name} | {inner} {'closure' if mode else 'free'} | {qs} | "
                    f"{sum(r > low for r in ratios)}, {sum(r > high for r in ratios)} of "
                    f"{len(ratios)} ({_fmt(max(fine))}) |")
    return "\n".join(lines)


def trace_table(controller: Controller, prob_name: str, inner: str, closure: bool, evals: int,
                alpha0: float, seeds: Sequence[int], checkpoints: int = 12) -> str:
    """α and the full-batch training loss at ``checkpoints`` evenly spaced steps, per seed."""
    controller = for_inner(controller, inner)
    lines = [f"`{controller.name}` on `{prob_name}`, {inner} "
             f"{'closure' if closure else 'free'}, α₀ = {alpha0}, {evals} evaluations", ""]
    for seed in seeds:
        out = train(prob_name, inner, controller, alpha0, closure=closure, evals=evals,
                    seed=seed, checkpoints=checkpoints)
        ref = baseline(prob_name, inner, evals, seed)
        ratio = _fmt(_ratio(out.loss, ref["decade_loss"]))
        fine = _fmt(_ratio(out.loss, ref["best_loss"]))
        lines.append(f"seed {seed}: final {out.loss:.3g} (ratio {ratio}, fine {fine}), "
                     f"rejects {out.rejects}; "
                     + ", ".join(f"t{t}: α {a:.2g} L {v:.2g}" for t, a, v in out.stats["curve"]))
    return "\n".join(lines)


@dataclass(frozen=True)
class FixedReject(Fixed):
    """A constant α whose closure-mode steps are undone when the batch loss rose."""

    name: str = "fixed+reject"

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        keep = obs.lookahead_loss is None or obs.lookahead_loss <= obs.loss
        return state, keep, state["alpha"]


def feasibility_table(prob_name: str, evals: int, seeds: Sequence[int]) -> str:
    """The best constant α in closure mode (half the steps), with and without reject."""
    lines = [f"`{prob_name}`, closure mode at {evals} evaluations ({evals // 2} steps); "
             "ratio = loss / the closure-free fixed-lr reference (decade grid; quarter-decade)",
             "", "| inner | seed | α | closure, fixed α | closure, fixed α + reject |",
             "|---|---|---|---|---|"]
    grids = {"Adam": (0.01, 0.0178, 0.0316, 0.0562, 0.1), "SGD": (0.316, 0.562, 1.0, 1.78)}
    for inner, grid in grids.items():
        for seed in seeds:
            ref = baseline(prob_name, inner, evals, seed)
            for lr in grid:
                a = train(prob_name, inner, Fixed(), lr, closure=True, evals=evals, seed=seed)
                b = train(prob_name, inner, FixedReject(), lr, closure=True, evals=evals,
                          seed=seed)
                lines.append(
                    f"| {inner} | {seed} | {lr:.3g} | {_fmt(a.loss / ref['decade_loss'])}; "
                    f"{_fmt(a.loss / ref['best_loss'])} | {_fmt(b.loss / ref['decade_loss'])}; "
                    f"{_fmt(b.loss / ref['best_loss'])} ({b.rejects} undone) |")
    return "\n".join(lines)


def baselines_table(prob_names: Sequence[str], evals: int, seeds: Sequence[int]) -> str:
    lines = ["| problem | inner | evals | seed | best lr | best loss | "
             "Bf/A at best | Bs/A at best | loss at lr/2, 2·lr |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in prob_names:
        for inner in ("Adam", "SGD", "SGDm"):
            for seed in seeds:
                b = baseline(name, inner, evals, seed, verbose=True)
                lrs = sorted(b["losses"], key=float)
                i = lrs.index(next(k for k in lrs if float(k) == b["best_lr"]))
                st = b["stats"][lrs[i]]
                near = [b["losses"][lrs[j]] for j in (i - 1, i + 1) if 0 <= j < len(lrs)]
                lines.append(
                    f"| {name} | {inner} | {evals} | {seed} | {b['best_lr']:.3g} | "
                    f"{b['best_loss']:.4g} | {st.get('Bf/A', math.nan):.3f} | "
                    f"{st.get('Bs/A', math.nan):.3f} | "
                    + ", ".join(_fmt(x) for x in near) + " |")
    return "\n".join(lines)


def sweep_table(prob_name: str, inner: str, evals: int, seed: int) -> str:
    b = baseline(prob_name, inner, evals, seed, verbose=True)
    lines = [f"`{prob_name}` {inner}, {evals} evaluations, seed {seed}", "",
             "| lr | loss | ratio | Σ B_fresh / Σ A | Σ B_same / Σ A |", "|---|---|---|---|---|"]
    for lr in sorted(b["losses"], key=float):
        st = b["stats"].get(lr, {})
        lines.append(f"| {float(lr):.3g} | {_fmt(b['losses'][lr])} | "
                     f"{_fmt(b['losses'][lr] / b['best_loss'])} | "
                     f"{st.get('Bf/A', math.nan):.3f} | {st.get('Bs/A', math.nan):.3f} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class _ScaleLog(Controller):
    """Wraps a controller and records the scale slope h of every step (H26)."""

    name: str = "scale_log"
    inner_controller: Controller = field(default_factory=Fixed)
    log: list = field(default_factory=list)

    @property
    def uses_scale_slope(self) -> bool:
        return True

    def init(self, alpha0: float, closure: bool) -> State:
        return self.inner_controller.init(alpha0, closure)

    def before_step(self, state: State, obs: Before) -> tuple[State, float]:
        state, alpha = self.inner_controller.before_step(state, obs)
        self.log.append((obs.scale_slope, alpha))
        return state, alpha

    def after_step(self, state: State, obs: After) -> tuple[State, bool, float]:
        return self.inner_controller.after_step(state, obs)


def scale_table(prob_name: str, inner: str, evals: int, lrs: Sequence[float],
                controllers: Sequence[Controller], windows: int = 8, seed: int = 0,
                origin_every: int = 0) -> str:
    """H26: the t-statistic of the mean scale slope h = ⟨g_t, θ_t − θ_0⟩ per window of the
    run (closure-free), at fixed lrs and along the controllers' runs from α₀ = 1e-6;
    ``origin_every`` > 0: θ_0 moves to θ_t every that many steps."""
    runs = [(f"lr {lr:.3g}", Fixed(), lr) for lr in lrs]
    runs += [(c.name, for_inner(c, inner), 1e-6) for c in controllers]
    w = evals // windows
    lines = [f"`{prob_name}` {inner}, {evals} evaluations closure-free, seed {seed}: t = mean h "
             f"/ its s.e. over windows of {w} steps (α at each window's end for controllers)",
             "", "| run | final | " + " | ".join(f"{k * w}–{(k + 1) * w}" for k in range(windows))
             + " |", "|---|---|" + "---|" * windows]
    for label, ctl, a0 in runs:
        logged = _ScaleLog(inner_controller=ctl, log=[])
        out = train(prob_name, inner, logged, a0, closure=False, evals=evals, seed=seed,
                    origin_every=origin_every)
        cells = []
        for k in range(windows):
            part = logged.log[k * w:(k + 1) * w]
            hs = [h for i, (h, _) in enumerate(part, k * w)
                  if h is not None and not (origin_every and i % origin_every == 0)]
            m = sum(hs) / len(hs)
            se = math.sqrt(sum((h - m) ** 2 for h in hs) / (len(hs) - 1) / len(hs))
            cells.append(f"{m / se:+.1f}" if se > 0 else "–")
            if not isinstance(ctl, Fixed):
                cells[-1] += f" ({part[-1][1]:.2g})"
        lines.append(f"| {label} | {out.loss:.4g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line

EXPERIMENTS: dict[str, str] = {
    "baselines": "fixed-lr sweeps with the slope ratios at each lr (bar, 1200 evaluations)",
    "sweep": "one fixed-lr sweep in full: --problem, --inner, --evals",
    "bar": "controllers on the bar, 1200 evaluations (--controllers)",
    "untuned": "controllers on the untuned problems (--problems), 1200 evaluations",
    "long": "controllers on the bar at 3600 evaluations",
    "cosine": "controllers × warmup+cosine on --problem (the bar by default) against the "
              "tuned lr + the same cosine",
    "lm": "controllers on byte_lm with AdamW, 600 evaluations: excess test loss in nats",
    "feasibility": "best constant α in closure mode (half the steps) against the references",
    "trace": "α and loss along runs of --controllers on --problem/--inner/--modes, α₀ 1e-2",
    "per-alpha0": "the bar's ratio for every α₀ and seed (--controllers, --inners, --modes)",
    "spread": "quantiles of the ratio over many seeds and α₀ (--problem, --alpha0s, --seeds)",
    "scale": "H26: the scale slope ⟨g, θ − θ_0⟩ per window at --lrs and along --controllers",
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ablations.alpha_controller",
        description="Ablations of the α controller (docs/design/alpha.md).")
    parser.add_argument("--experiment", choices=sorted(EXPERIMENTS), default=None)
    parser.add_argument("--list", action="store_true", help="list experiments and controllers")
    parser.add_argument("--controllers", default="today,asym",
                        help="comma-separated controller names (see --list)")
    parser.add_argument("--problems", default="digits_logreg,digits_cnn,quadratic_deep")
    parser.add_argument("--problem", default="bar")
    parser.add_argument("--inner", default="Adam", choices=sorted(INNER))
    parser.add_argument("--inners", default="Adam,SGD")
    parser.add_argument("--modes", default="free,closure")
    parser.add_argument("--evals", type=int, default=None)
    parser.add_argument("--checkpoints", type=int, default=12, help="trace: points per run")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 … n−1")
    parser.add_argument("--alpha0s", default=None,
                        help="comma-separated α₀ for --experiment spread (default: all four)")
    parser.add_argument("--lrs", default="0.01,0.0316,0.0562,0.1",
                        help="comma-separated fixed lrs for --experiment scale")
    parser.add_argument("--origin-every", type=int, default=0,
                        help="scale: move θ_0 to θ_t every this many steps (0: the start)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    if args.list or args.experiment is None:
        for name, text in EXPERIMENTS.items():
            print(f"{name:10s} {text}")
        print("controllers:", ", ".join(CONTROLLERS))
        return
    seeds = tuple(range(args.seeds))
    inners = tuple(args.inners.split(","))
    modes = tuple(m == "closure" for m in args.modes.split(","))
    controllers = [CONTROLLERS[n] for n in args.controllers.split(",")]
    t0 = time.time()
    if args.experiment == "baselines":
        print(baselines_table(["bar"], args.evals or 1200, seeds))
    elif args.experiment == "sweep":
        print(sweep_table(args.problem, args.inner, args.evals or 1200, 0))
    elif args.experiment == "bar":
        print(table(controllers, "bar", args.evals or 1200, seeds, inners, modes))
    elif args.experiment == "long":
        print(table(controllers, "bar", args.evals or 3600, seeds, inners, modes))
    elif args.experiment == "cosine":
        print(table(controllers, args.problem, args.evals or 1200, seeds, inners, modes,
                    schedule=True))
    elif args.experiment == "lm":
        print(table(controllers, "byte_lm", args.evals or 600, seeds, ("AdamW",), modes))
    elif args.experiment == "feasibility":
        print(feasibility_table(args.problem, args.evals or 1200, seeds))
    elif args.experiment == "trace":
        for c in controllers:
            for mode in modes:
                print(trace_table(c, args.problem, args.inner, mode, args.evals or 1200, 1e-2,
                                  seeds, args.checkpoints))
    elif args.experiment == "per-alpha0":
        print(per_alpha0_table(controllers, "bar", args.evals or 1200, seeds, inners, modes))
    elif args.experiment == "scale":
        print(scale_table(args.problem, args.inner, args.evals or 1200,
                          [float(x) for x in args.lrs.split(",")], controllers,
                          origin_every=args.origin_every))
    elif args.experiment == "spread":
        alpha0s = (tuple(float(a) for a in args.alpha0s.split(",")) if args.alpha0s
                   else ALPHA0S)
        print(spread_table(controllers, args.problem, args.evals or 1200, seeds, inners,
                           modes, alpha0s))
    elif args.experiment == "untuned":
        for name in args.problems.split(","):
            print(table(controllers, name, args.evals or 1200, seeds, inners, modes))
            print()
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
