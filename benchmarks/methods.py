"""The methods compared, as small picklable specs, and how to build each optimizer.

A :class:`Method` names an optimizer, the inner optimizer whose tuned
fixed-LR baseline it is judged against, how it takes a step (its ``mode``),
which hyperparameter the sweep varies (``swept``: the initial learning
rate, or the peer's equivalent: Prodigy's and D-Adapt's ``d0``, DoG's
``reps_rel``), the learning-rate schedule attached to it (``schedule``) and
the iterate averaging it is evaluated with (``average``).

Schedules: ``""`` (none) or ``"cosine"``: linear warmup over the first 5% of
the run's steps, then cosine decay to 0 at its last step
(:func:`warmup_cosine`), attached as a ``LambdaLR``. A method with a schedule
is judged against the *tuned + cosine* baseline: the best point of the
inner optimizer's lr grid run with the same schedule (method ``"Adam+cos"``
etc.). Attached to newt, the schedule scales the learned α (the inner step
uses α · lr/initial_lr).

Peers as their authors recommend them: Prodigy (``lr=1``) and D-Adapt Adam
(``lr=1``) with and without the cosine schedule (Prodigy with
``safeguard_warmup=True`` under warmup, as its README advises); DoG with and
without its polynomial iterate averager (``PolynomialDecayAverager``,
γ = 8, evaluated at the averaged weights); Schedule-Free AdamW over its lr
grid with 5% warmup and AdamW's weight decay 0.01, evaluated at its averaged
point (``opt.eval()`` before a measurement, ``opt.train()`` after).

Step modes (what a step costs in closure calls, "evaluations"):

- ``backward``: ``loss.backward(); opt.step()``: one evaluation per step
  (fixed-LR optimizers, peers, SGD-HD, newt's closure-free mode ``free``);
- ``closure``: ``opt.step(closure)``: newt evaluates twice per step;
- ``reuse``: newt with ``reuse_lookahead=True``: one per step, deterministic
  problems only;
- ``lbfgs``: L-BFGS with strong-Wolfe line search (a varying number per
  iteration), deterministic problems only.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

import newt
from benchmarks.baselines import SGDHD

__all__ = [
    "INNER",
    "MODES",
    "PEERS",
    "SCHEDULES",
    "WARMUP",
    "Method",
    "catalog",
    "effective_lr",
    "make_averager",
    "make_optimizer",
    "make_scheduler",
    "missing_peers",
    "warmup_cosine",
]

# name: (class, fixed keyword arguments); the learning rate is swept.
INNER: dict[str, tuple[type[Optimizer], dict[str, Any]]] = {
    "SGD": (torch.optim.SGD, {}),
    "SGDm": (torch.optim.SGD, {"momentum": 0.9}),
    "Adam": (torch.optim.Adam, {}),
    "AdamW": (torch.optim.AdamW, {}),
}

# newt's step modes, in the order they appear in tables.
MODES = ("closure", "free", "reuse")

# Learning-rate schedules a method can run with ("" = constant), in table order.
SCHEDULES = ("", "cosine")
WARMUP = 0.05  # fraction of the run's steps with linear warmup (cosine schedule, SF-AdamW)
DOG_GAMMA = 8.0  # DoG's polynomial-decay iterate averager (Ivgi et al., 2023)

# Learning-rate-free peers: name -> (module, class, swept argument, inner baseline, fixed kwargs,
# schedules run, iterate-averager γ (0: none)).
PEERS: dict[str, tuple[str, str, str, str, dict[str, Any], tuple[str, ...], float]] = {
    "Prodigy": ("prodigyopt", "Prodigy", "d0", "Adam", {"lr": 1.0}, SCHEDULES, 0.0),
    "D-Adapt Adam": ("dadaptation", "DAdaptAdam", "d0", "Adam", {"lr": 1.0}, SCHEDULES, 0.0),
    "DoG": ("dog", "DoG", "reps_rel", "SGD", {"lr": 1.0}, ("",), 0.0),
    "DoG+avg": ("dog", "DoG", "reps_rel", "SGD", {"lr": 1.0}, ("",), DOG_GAMMA),
    "SF-AdamW": ("schedulefree", "AdamWScheduleFree", "lr", "AdamW", {"weight_decay": 0.01},
                 ("",), 0.0),
}
# Extra arguments of a peer under the cosine schedule (its authors' advice for warmup).
PEER_SCHEDULED: dict[str, dict[str, Any]] = {"Prodigy": {"safeguard_warmup": True}}

HD_BETA = 1e-3  # SGD-HD's hypergradient step β (Baydin et al. use 1e-3 for SGD-HD)


@dataclass(frozen=True)
class Method:
    """One method of the comparison.

    Attributes:
        name: display name, e.g. ``"Adam+newt[closure]"``.
        kind: ``"fixed"``, ``"newt"``, ``"peer"``, ``"hd"`` or ``"lbfgs"``.
        inner: the inner optimizer (a key of :data:`INNER`) whose tuned
            fixed-LR run is the reference; ``None`` compares with the best of all.
        mode: ``"backward"``, ``"closure"``, ``"reuse"`` or ``"lbfgs"`` (module docstring).
        swept: the hyperparameter the sweep varies, ``""`` for none.
        preset: newt's preset.
        options: newt's option overrides, as sorted (name, value) pairs.
        variant: label of a newt variant (``--newt-variants``), part of ``name``.
        schedule: ``""`` or ``"cosine"`` (:func:`warmup_cosine`); ``"+cos"`` in ``name``.
        average: γ of a polynomial-decay iterate averager the method is evaluated
            with (0: none).
        peer: the key of :data:`PEERS` for a peer.
    """

    name: str
    kind: str
    inner: str | None
    mode: str = "backward"
    swept: str = "lr"
    preset: str = "default"
    options: tuple[tuple[str, Any], ...] = field(default=())
    variant: str = ""
    schedule: str = ""
    average: float = 0.0
    peer: str = ""

    @property
    def baseline(self) -> str | None:
        """The fixed-LR method whose best point is this method's reference (``None``: all)."""
        if self.inner is None:
            return None
        return self.inner + ("+cos" if self.schedule else "")

    @property
    def evals_per_step(self) -> int:
        """Closure calls per step (L-BFGS: varies; counted as 1)."""
        return 2 if self.mode == "closure" else 1

    @property
    def controller(self) -> str | None:
        """newt's controller for this method (``None`` for the other kinds)."""
        if self.kind != "newt":
            return None
        merged = {**newt.PRESETS[self.preset], **dict(self.options)}
        if merged.get("gamma", 1.0) == 0:  # γ = 0 is the Newton rule (`NewtOptions.resolve`)
            return "newton"
        return str(merged.get("controller", "auto"))

    def start_invariant(self, stochastic: bool) -> bool:
        """Whether the run is the same at every swept lr ≥ ``newt.rule.GATED_START``: the
        gated controller starts at min(lr, ``GATED_START``) and sets the inner lr itself from
        then on, so the benchmark runs it once per seed. ``controller="auto"`` is the gated
        controller bit for bit where its first measurement is noisy, which it is on every
        stochastic problem of the benchmark (``newt.rule.AUTO_QUIET``; docs/design/alpha.md,
        H15); on a deterministic one it hands over at the user's lr. ``tests/test_benchmarks.py``
        checks that two lrs give the same run, with and without the cosine schedule, and
        that the first measurement of ``auto`` ends its watch on every stochastic problem."""
        if self.swept != "lr":
            return False
        return self.controller == "gated" or (stochastic and self.controller == "auto")

    @property
    def deterministic_only(self) -> bool:
        return self.mode in ("reuse", "lbfgs")

    @property
    def newt_mode(self) -> str:
        """newt's mode as a user sees it: ``closure``, ``free`` or ``reuse``."""
        return "free" if self.mode == "backward" else self.mode

    def key(self) -> str:
        """A string that identifies the method and its options (for caching runs)."""
        key = self.name + (json.dumps(dict(self.options), sort_keys=True) if self.options else "")
        if self.average and self.kind == "newt":  # a variant measured at an iterate average
            key += f"|average={self.average}"
        if self.peer:  # the peer's fixed arguments: a changed set-up is not reused
            key += "|" + json.dumps(PEERS[self.peer][4], sort_keys=True)
        return key


def _suffix(schedule: str) -> str:
    return "+cos" if schedule == "cosine" else ""


def _newt(inner: str, mode: str, preset: str, options: dict[str, Any], variant: str,
          schedule: str = "") -> Method:
    label = "newt" + ("-seed" if preset == "seed" else "") + (f":{variant}" if variant else "")
    options = dict(options)
    average = float(options.pop("average", 0.0))  # measured at an iterate average (γ)
    return Method(
        name=f"{inner}+{label}[{mode}]{_suffix(schedule)}",
        kind="newt",
        inner=inner,
        mode="backward" if mode == "free" else mode,
        preset=preset,
        options=tuple(sorted(options.items())),
        variant=variant,
        schedule=schedule,
        average=average,
    )


def _closure_free_ok(preset: str, options: dict[str, Any]) -> bool:
    """Whether these options allow ``step()`` without a closure (one batch per step)."""
    merged = {**newt.PRESETS[preset], **options}
    return merged.get("curvature") != "loss" and merged.get("slope") != "same_batch"


def catalog(
    newt_options: dict[str, Any] | None = None,
    variants: dict[str, dict[str, Any]] | None = None,
    inners: Sequence[str] = tuple(INNER),
    modes: Sequence[str] = MODES,
    presets: Sequence[str] = ("default", "seed"),
    schedules: Sequence[str] = SCHEDULES,
) -> list[Method]:
    """Every method, in table order: per inner optimizer, fixed LR, newt, peers; then L-BFGS.

    Each fixed-LR row and each newt row of the default preset (and its
    variants) comes once per schedule in ``schedules`` (``"+cos"`` rows with
    the cosine schedule); the seed preset runs unscheduled only. Peers come
    with the schedules and averaging of :data:`PEERS` that ``schedules`` allows.
    newt's closure-free mode is left out for options that need a closure
    (``curvature="loss"``, ``slope="same_batch"``, as in the seed preset).

    Args:
        newt_options: overrides of newt's options for the default preset.
        variants: extra newt variants, label -> options (on top of ``newt_options``).
        inners, modes, presets: restrict the inner optimizers, newt's modes and presets.
        schedules: restrict the schedules (``""`` for none, ``"cosine"``).
    """
    unknown = set(schedules) - set(SCHEDULES)
    if unknown:
        raise ValueError(f"schedules={sorted(unknown)} unknown; use a subset of {SCHEDULES}")
    newt_options = dict(newt_options or {})
    methods: list[Method] = []
    for inner in inners:
        methods.extend(Method(name=inner + _suffix(schedule), kind="fixed", inner=inner,
                              schedule=schedule) for schedule in schedules)
        newt_rows = [(preset, newt_options if preset == "default" else {}, "")
                     for preset in presets]
        newt_rows += [("default", {**newt_options, **extra}, label)
                      for label, extra in (variants or {}).items()]
        for schedule in schedules:
            for preset, options, label in newt_rows:
                if schedule and preset != "default":
                    continue
                methods.extend(_newt(inner, mode, preset, options, label, schedule)
                               for mode in modes
                               if mode != "free" or _closure_free_ok(preset, options))
        if inner == "SGD" and "" in schedules:
            methods.append(Method(name="SGD-HD", kind="hd", inner="SGD"))
        for peer, (_, _, swept, peer_inner, _, peer_schedules, gamma) in PEERS.items():
            if peer_inner == inner:
                methods.extend(Method(name=peer + _suffix(schedule), kind="peer", inner=inner,
                                      swept=swept, schedule=schedule, average=gamma, peer=peer)
                               for schedule in schedules if schedule in peer_schedules)
    if "" in schedules:
        methods.append(Method(name="L-BFGS", kind="lbfgs", inner=None, mode="lbfgs", swept=""))
    return methods


def missing_peers() -> list[str]:
    """Peers whose package is not installed (they are skipped, with a note)."""
    return [name for name, (module, *_) in PEERS.items()
            if importlib.util.find_spec(module) is None]


def warmup_cosine(step: int, total: int, warmup: float = WARMUP) -> float:
    r"""The lr factor of the cosine schedule at 0-based ``step`` of a ``total``-step run.

    With :math:`w = \max(1, \operatorname{round}(\text{warmup} \cdot T))` warmup steps:

    .. math::

        s_t = \frac{t + 1}{w} \quad (t < w), \qquad
        s_t = \tfrac12 \Bigl(1 + \cos \frac{\pi (t - w)}{T - w}\Bigr) \quad (w \le t \le T),

        s_t = 0 \quad (t > T).

    The factor rises linearly to 1 at step ``w − 1``, stays 1 at ``w`` and
    decays to 0, reached after the last step (``step == total``).
    """
    if total < 1:
        raise ValueError(f"warmup_cosine: total={total} must be >= 1")
    w = min(max(1, round(warmup * total)), total)
    if step < w:
        return (step + 1) / w
    if step >= total:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - w) / (total - w)))


def make_scheduler(method: Method, optimizer: Optimizer,
                   horizon: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The LR scheduler of ``method``'s schedule over ``horizon`` steps, or ``None``."""
    if not method.schedule:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, total=horizon))


def make_averager(method: Method, model: torch.nn.Module) -> Any:
    """DoG's ``PolynomialDecayAverager`` (γ = ``method.average``) of ``model``, or ``None``."""
    if not method.average:
        return None
    from dog import PolynomialDecayAverager

    return PolynomialDecayAverager(model, gamma=method.average)


def make_optimizer(method: Method, params: Iterable[torch.Tensor], x: float,
                   horizon: int | None = None) -> Optimizer:
    """Build ``method``'s optimizer with its swept hyperparameter set to ``x``.

    ``horizon`` (the run's steps) sets Schedule-Free AdamW's 5% warmup.
    """
    params = list(params)
    if method.kind == "lbfgs":
        return torch.optim.LBFGS(params, lr=1.0, history_size=20, tolerance_grad=1e-12,
                                 tolerance_change=1e-16, line_search_fn="strong_wolfe")
    if method.kind == "hd":
        return SGDHD(params, lr=x, hypergrad_lr=HD_BETA)
    if method.kind == "peer":
        module, cls, swept, _, fixed, _, _ = PEERS[method.peer]
        optimizer_class = getattr(importlib.import_module(module), cls)
        extra = PEER_SCHEDULED.get(method.peer, {}) if method.schedule else {}
        if method.peer == "SF-AdamW":
            extra = {"warmup_steps": round(WARMUP * horizon) if horizon else 0}
        return optimizer_class(params, **{**fixed, **extra, swept: x})
    inner_class, fixed = INNER[method.inner]
    inner = inner_class(params, lr=x, **fixed)
    if method.kind == "fixed":
        return inner
    return newt.NewtOptimizer(inner, preset=method.preset,
                              reuse_lookahead=method.mode == "reuse", **dict(method.options))


def effective_lr(optimizer: Optimizer) -> float:
    """The step size the optimizer is using now (first group): α (times the schedule), d·lr or η."""
    step_sizes = getattr(optimizer, "step_sizes", None)
    if step_sizes is not None:  # newt: α · lr/initial_lr under a scheduler
        return float(step_sizes[0])
    group = optimizer.param_groups[0]
    if "d" in group:  # Prodigy, D-Adaptation: the step is d·lr
        return float(group["d"]) * float(group["lr"])
    if "eta" in group:  # DoG: one η per parameter
        eta = group["eta"]
        return float(eta[0]) if isinstance(eta, (list, tuple)) else float(eta)
    return float(group["lr"])
