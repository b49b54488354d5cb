r"""`NewtOptimizer`: wrap any optimizer and learn each group's step size α.

The inner optimizer proposes the update; newt moves the step size of each
parameter group with a Newton step on $g_t(\alpha) = L(\theta_t - \alpha u_t)$:

$$
\theta_{t+1} = \theta_t - \alpha_t u_t, \qquad
\alpha_{t+1} = \alpha_t - \frac{g_t'(\alpha_t)}{g_t''(\alpha_t)}.
$$

This module is plumbing. A step gathers each group's parameters, evaluates,
lets the inner optimizer step, measures the inner products along the
displacement, and carries out what the controller (`newt.rule`) decides:

1. **probe**: at $\theta_t$, this batch's gradient along the pending
   displacement (the fresh slope) → `newt.rule.before_step` gives $\alpha_t$;
2. **inner step** at $\alpha_t$ (times the schedule's factor, if an LR
   scheduler is attached);
3. **lookahead** (closure mode): the closure again at $\theta_{t+1}$;
4. **decide**: `newt.rule.after_step` keeps or undoes the step;
5. **restore** $\theta_t$ where a step is undone.

Without a closure (`step()` after the user's `backward()`) step 3 is absent:
the next batch's gradient is the lookahead. With `reuse_lookahead=True` the
evaluation at $\theta_{t+1}$ is the next step's first evaluation.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from newt import distributed as D
from newt import functional as F
from newt import lookahead as _lookahead
from newt import rule, scalars
from newt.options import OPTION_NAMES, NewtOptions
from newt.rule import Outcome, Probe, Safeguard
from newt.scalars import Scalar
from newt.state import FORMAT_VERSION, GroupState, check_shapes

__all__ = ["NewtOptimizer", "NewtStats"]

NEWT_KEY = "newt"
"""The key of newt's options in each group dict (the inner optimizer's keys are its own)."""


@dataclass(frozen=True)
class NewtStats:
    r"""What newt saw and decided for one parameter group at its last α decision.

    Attributes:
        alpha: the learned α now (on the unscheduled scale).
        step_size: the step size the next inner step uses: α times the
            attached scheduler's factor lr / initial_lr (α without a scheduler).
        used_alpha: the α of the step this decision describes ($\alpha_t$).
        slope: $g_t'(\alpha_t) = -B/\alpha_t$ (NaN if the decision had no slope).
        curvature: the estimate of $g_t''(\alpha_t)$, $C/\alpha_t^2$.
        loss: $L(\theta_t)$ (closure mode; `None` otherwise).
        lookahead_loss: $L(\theta_{t+1})$ on the same batch (closure mode).
        safeguard: the name of the `newt.rule.Safeguard` that decided.
        step: how many Newton updates α has had.
    """

    alpha: float
    step_size: float
    used_alpha: float
    slope: float
    curvature: float
    loss: float | None
    lookahead_loss: float | None
    safeguard: str
    step: int


def _momentum(group: dict[str, Any]) -> float:
    """β₁ of the inner optimizer's group (``betas[0]``, else ``momentum``, else 0): the one
    inner key newt reads, for the gated controller only (``controller="gated"`` or
    ``"auto"``; its slope shift is τ₀(1 − β₁), or 0.4 after a closure step with β₁ = 0))."""
    betas = group.get("betas")
    if isinstance(betas, (tuple, list)) and betas:
        return float(betas[0])
    momentum = group.get("momentum")
    if isinstance(momentum, (numbers.Real, Tensor)) and not isinstance(momentum, bool):
        return float(momentum)
    return 0.0


def _value(x: Tensor, host: bool) -> Scalar:
    """A measured scalar as the controller takes it: a float for a host group (a CPU read)."""
    return x.item() if host else x


def _all(flags: list[Scalar]) -> Tensor:
    """The AND of per-group flags (bools or 0-d tensors) as one 0-d tensor (no host read)."""
    out = next(f for f in flags if isinstance(f, Tensor))
    for f in flags:
        out = out & (f.to(out.device) if isinstance(f, Tensor) else f)
    return out


@dataclass
class _Active:
    """One group as a step sees it: the parameters it moves and what newt keeps of them."""

    index: int
    group: dict[str, Any]
    options: NewtOptions
    state: GroupState
    params: list[Tensor]
    """This rank's part of each parameter (`newt.distributed.local_tensor`)."""
    snapshots: list[Tensor]
    sources: list[Tensor]
    """The parameters themselves (DTensors under FSDP2), whose ``.grad`` is read."""
    weights: list[float]
    """Each parameter's weight in a sum over the process group (1 without one)."""

    def grads(self) -> list[Tensor | None]:
        return [None if p.grad is None else D.local_tensor(p.grad) for p in self.sources]

    @functools.cached_property
    def one_piece(self) -> bool:
        """Whether its inner products take the fused path (`newt.functional.one_piece`):
        found once per step, for every phase of the step."""
        return F.one_piece(self.snapshots, self.params)

    @functools.cached_property
    def dtype(self) -> torch.dtype:
        """The inner products' dtype: the widest parameter dtype of the group, ≥ float32
        (found once per step: every phase of the step reuses it)."""
        params = self.params or self.group["params"]
        dtype = torch.promote_types(torch.float32, max(
            (p.dtype for p in params), key=lambda d: d.itemsize, default=torch.float32))
        return dtype.to_real() if dtype.is_complex else dtype


@dataclass
class _InProgress:
    """A step between its phases: the groups it moves, whether it is taken, their slopes A."""

    active: list[_Active]
    taken: bool
    slopes: list[Tensor] | None
    take: Any = True
    """A device flag: false undoes the step (taken on zeroed non-finite gradients)."""
    scales: list[Scalar] = field(default_factory=list)
    """Each group's schedule factor s = lr / initial_lr of this step (`_scale`)."""


class NewtOptimizer(Optimizer):
    r"""Learn the step size of any optimizer with a Newton step on α.

    Two controllers move α, chosen per group by the default ``controller="auto"``: on
    full batches (three quiet first measurements, $|1 - B/A| < 10^{-3}$) the damped Newton
    rule below, from the group's lr; on mini-batches the gated controller
    (`newt.rule.gated_before_step`, `docs/design/alpha.md`), which starts at
    min(lr, 1e-6), doubles while the fresh slope stays above half the step's own and
    then moves α only on a significant averaged Newton factor. The Newton rule:

    $$
    \theta_{t+1} = \theta_t - s_t\alpha_t u_t, \qquad
    \alpha_{t+1} = \operatorname{clamp}\big(\alpha_t\, \hat f_t,\
        \text{lr\_min},\ \text{lr\_max}\big), \qquad
    \hat f_t = \Big(s_t\big(1 + \frac{B_t}{C_t}\big)\Big)^{\gamma \min(1, s_t)}
    $$

    where

    - $u_t$ is the inner optimizer's update direction at unit step size;
    - $s_t$ is the factor lr / initial_lr of an attached LR scheduler (1 without
      one): under this rule the schedule scales the learned α and is not compensated
      by it (the gated controller aims at the step taken, α·s);
    - $d_t = \theta_t - \theta_{t+1}$, $A_t = \langle\nabla L(\theta_t), d_t\rangle$
      and $B_t = \langle\nabla L(\theta_{t+1}), d_t\rangle$ the lookahead slope;
    - $C_t = A_t - B_t$ (`curvature="gradient"`) or
      $2(L(\theta_t) - L(\theta_{t+1}) - B_t)$ (`curvature="loss"`);
    - the factor is clamped to `[factor_min, factor_max]`, damped by γ and
      replaced by the safeguards of `newt.rule` (loss increase, non-positive
      curvature, no information, non-finite values).

    `NewtOptimizer` shares `param_groups` (the same list) with the inner
    optimizer. Without a scheduler the α of a group is its `lr`. newt's options
    can be overridden per group under the group's `"newt"` key, e.g.
    `SGD([{"params": head, "lr": 0.1, "newt": {"gamma": 0.3}}])`; the inner
    optimizer's own keys are never read. A group with `lr=0` is frozen.

    Args:
        inner: the optimizer that proposes the update direction.
        preset: `"default"` or `"seed"` (the seed project's constants);
            keyword options override it.
        reuse_lookahead: with a deterministic closure (full batch), reuse the
            evaluation at $\theta_{t+1}$ as the next step's first one: one
            closure call per step instead of two.
        interval: measure and update α on one step in ``interval`` (default 1: every
            step). That step and the next read the inner products along its
            displacement (the measured step also evaluates the lookahead in closure
            mode); the steps between are the inner optimizer's own at the current α,
            after a check that the gradients are finite (one read of them), and call a
            closure once. newt's cost per step then falls towards that read, and α
            adapts once per ``interval`` steps.
        foreach: use the multi-tensor kernels (default: on).
        process_group: a `torch.distributed` process group over which the ranks
            train one model (DDP, FSDP2, ZeRO-style shards): the losses are
            averaged and the inner products summed over it (`newt.distributed`),
            so every rank takes the same decisions. Needed in closure mode under
            DDP and always with sharded parameters; see the "Distributed
            training" page.
        **options: the keyword options below.

    Keyword Args:
        curvature (str): `"gradient"` ($C = A - B$) or `"loss"`
            ($C = 2(L_t - L_{t+1} - B)$, closure mode only; with several groups
            the loss change mixes all groups' steps, so use it with one group).
        slope (str): `"next_batch"` (closure mode reads $B$ from the next
            step's batch) or `"same_batch"` (the seed's rule; closure mode only).
        reject (bool): closure mode: undo a step that raised the batch's loss (the
            group's share of it, by the trapezoid rule, when several groups step)
            and multiply α by `backoff**gamma` (`backoff` with `update="linear"`).
            Off when `gamma=0`, so that γ = 0 is exactly the inner optimizer.
        update (str): `"log"` (a step of γ in log α), `"exp"` (the same with the
            Newton factor $1 + B/C$ replaced by $e^{B/C}$) or `"linear"` (the seed's).
        gamma (float): damping of the Newton step, in [0, 1]; 0 never changes α, whatever
            the controller (newt is then the inner optimizer).
        eps (float): relative threshold under which the curvature counts as
            non-positive: $C \le \varepsilon(|A| + |B|)$.
        lr_min (float): lower clamp on α, > 0.
        lr_max (float): upper clamp on α.
        factor_min (float): lower clamp on the Newton factor (before damping).
        factor_max (float): upper clamp on the Newton factor (before damping).
        backoff (float): cap on the factor when the lookahead loss rose.
        nonconvex_factor (float): factor when the curvature is not positive.
        nonfinite_factor (float): factor after a non-finite step, which is undone.
        controller (str): `"auto"` (the default): per group, the gated controller,
            which hands over to the Newton rule (and all its options) at the user's lr
            when three fresh measurements at its tiny start give |1 − B/A| < 1e-3, a
            gradient without measurable batch noise (`docs/design/alpha.md`, H15, H36);
            the inner optimizer's state of that group then starts afresh (its momentum
            and moments forget the three tiny steps, H38).
            `"gated"`: the significance-gated controller of `docs/design/alpha.md`,
            section 4, on every batch kind (α starts at min(lr, 1e-6), doubles while
            the fresh slope stays above half the step's own, then follows an averaged
            Newton factor on a slope shifted by 0.2(1 − β₁) (0.4 after a closure step
            with β₁ = 0 and `reject`), changed only when significant; it reads the
            inner group's `betas[0]` or `momentum` as β₁). The Newton rule's other
            options do not apply to it, except `reject` and `gamma=0`. `"newton"`:
            the rule above from the first step (the default before H36), which starts
            at the user's lr: on full batches, or for a short run from a working lr.

    Examples:
        >>> import torch, newt
        >>> w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
        >>> opt = newt.NewtOptimizer(torch.optim.SGD([w], lr=0.01))
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = (w ** 2).sum()
        ...     loss.backward()
        ...     return loss
        >>> for _ in range(30):
        ...     loss = opt.step(closure)
        >>> bool(loss < 1e-6)
        True

    References:
        G. Retsinas, G. Sfikas, P. Filntisis, P. Maragos. Newton-Based
        Trainable Learning Rate. ICASSP 2023.
    """

    def __init__(
        self,
        inner: Optimizer,
        *,
        preset: str = "default",
        reuse_lookahead: bool = False,
        interval: int = 1,
        foreach: bool | None = None,
        process_group: Any = None,
        **options: Any,
    ) -> None:
        if not isinstance(inner, Optimizer):
            raise TypeError(
                f"NewtOptimizer(inner=...) must be a torch.optim.Optimizer, got "
                f"{type(inner).__name__}; build the inner optimizer first, e.g. "
                "NewtOptimizer(torch.optim.Adam(model.parameters()))"
            )
        if isinstance(inner, NewtOptimizer):
            raise TypeError("NewtOptimizer(inner=...) is already a NewtOptimizer; wrap it once")
        if not isinstance(reuse_lookahead, bool):
            raise TypeError(f"NewtOptimizer(reuse_lookahead={reuse_lookahead!r}): pass True or "
                            "False")
        if foreach is not None and not isinstance(foreach, bool):
            raise TypeError(f"NewtOptimizer(foreach={foreach!r}): pass True, False or None")
        if isinstance(interval, bool) or not isinstance(interval, numbers.Integral):
            raise TypeError(f"NewtOptimizer(interval={interval!r}): pass a whole number of "
                            "steps, e.g. interval=8")
        if interval < 1:
            raise ValueError(f"NewtOptimizer(interval={interval}): must be ≥ 1 (1: measure "
                             "and update α at every step)")
        self.inner = inner
        self.interval = int(interval)
        self._steps = 0
        self.reuse_lookahead = reuse_lookahead
        self.foreach = True if foreach is None else foreach
        self.process_group = D.resolve_process_group(process_group)
        self._warned_unreduced = False
        self._options = NewtOptions.resolve(preset, options)
        self._reuse: tuple[Callable[[], Any], Tensor, list[int]] | None = None
        self._states: list[GroupState | None] = []
        self._resolved: dict[int, tuple[dict[str, Any], NewtOptions]] = {}
        self._in_progress: _InProgress | None = None
        self._last_lookahead_loss: Tensor | None = None
        self._host_scalars: bool | None = None  # None: host scalars for CPU parameters
        # What schedulers read of the optimizer (OneCycleLR looks for momentum/betas).
        super().__init__(inner.param_groups, {**inner.defaults, NEWT_KEY: self._options.as_dict()})
        self.param_groups = inner.param_groups  # one list: a group added to either is in both
        D.check_sharded_without_group([p for g in self.param_groups for p in g["params"]],
                                      self.process_group)
        if len(self.param_groups) > 1 and any(o.curvature == "loss" for o in self._all_options()):
            warnings.warn(
                "NewtOptimizer(curvature='loss') with several parameter groups: the loss change "
                "L(θ_t) − L(θ_{t+1}) mixes every group's step, so each group's curvature "
                "estimate is biased; use curvature='gradient' for per-group α",
                UserWarning, stacklevel=2,
            )

    # ------------------------------------------------------------------ groups
    def _resolve(self, group: dict[str, Any], where: str) -> NewtOptions:
        """Check a group (newt's options and its lr) before newt accepts it."""
        options = NewtOptions.resolve("default", self._options.as_dict(),
                                      group.get(NEWT_KEY, {}), where=f"{where}['newt']")
        stray = sorted(k for k in set(group) & set(OPTION_NAMES) if k not in self.inner.defaults)
        if stray:
            warnings.warn(
                f"{where} has {stray} at the top level, where newt does not read them (the "
                f"inner optimizer's keys are its own); newt's per-group options go under the "
                f"group's 'newt' key, e.g. {{'params': ..., 'newt': {{{stray[0]!r}: ...}}}}",
                UserWarning, stacklevel=4,
            )
        merged = {**self.inner.defaults, **group}
        if merged.get("maximize", False):
            raise RuntimeError(f"{where}: maximize=True inner optimizers are not supported; "
                               "minimise the negated objective instead")
        if merged.get("differentiable", False):
            raise RuntimeError(f"{where}: differentiable=True inner optimizers are not "
                               "supported; newt's step runs under torch.no_grad()")
        if merged.get("fused", False):
            raise RuntimeError(f"{where}: fused=True inner optimizers are not supported; use "
                               "foreach=True")
        lr = merged.get("lr")
        value = float(lr) if isinstance(lr, (Tensor, numbers.Real)) else math.nan
        if isinstance(lr, Tensor) and options.lr_min > 0 and float(
                torch.tensor(options.lr_min, dtype=lr.dtype)) == 0:
            raise ValueError(f"{where}: lr is a {lr.dtype} tensor, which cannot hold "
                             f"lr_min={options.lr_min:g}; use a float32 or float64 tensor lr")
        if value != 0 and not options.lr_min <= value <= options.lr_max:
            raise ValueError(
                f"{where}: lr={lr!r} must be 0 (a frozen group) or lie in [lr_min, lr_max] = "
                f"[{options.lr_min:g}, {options.lr_max:g}]; pass a starting lr in that range "
                "or widen lr_min/lr_max"
            )
        return options

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to both newt and the inner optimizer (one dict object).

        The group is checked first, so a bad option leaves nothing added.
        """
        index = len(self.inner.param_groups)
        in_inner = any(param_group is g for g in self.inner.param_groups)
        if in_inner:
            index = next(i for i, g in enumerate(self.inner.param_groups) if g is param_group)
        options = self._resolve(param_group, f"param_groups[{index}]")
        if not in_inner:
            self.inner.add_param_group(param_group)
            param_group = self.inner.param_groups[-1]
        param_group[NEWT_KEY] = options.as_dict()
        if self.param_groups is not self.inner.param_groups:  # during __init__
            self.param_groups.append(param_group)

    def _all_options(self) -> list[NewtOptions]:
        return [NewtOptions.resolve("default", g[NEWT_KEY]) for g in self.param_groups
                if NEWT_KEY in g]

    def _group_options(self, index: int, group: dict[str, Any]) -> NewtOptions:
        """The group's options, checked again only when its ``"newt"`` entry changed."""
        if NEWT_KEY not in group:  # added with opt.inner.add_param_group: newt shares it
            group[NEWT_KEY] = self._resolve(group, f"param_groups[{index}]").as_dict()
        cached = self._resolved.get(index)
        if cached is None or cached[0] != group[NEWT_KEY]:
            options = NewtOptions.resolve("default", group[NEWT_KEY],
                                          where=f"param_groups[{index}]['newt']")
            cached = self._resolved[index] = (dict(group[NEWT_KEY]), options)
        return cached[1]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(inner=self.inner, reuse_lookahead=self.reuse_lookahead,
                     interval=self.interval, _steps=self._steps,
                     foreach=self.foreach, _options=self._options, _states=self._states)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_reuse", None)
        self.__dict__.setdefault("_resolved", {})
        self.__dict__.setdefault("_in_progress", None)
        self.__dict__.setdefault("process_group", None)
        self.__dict__.setdefault("_warned_unreduced", False)
        self.__dict__.setdefault("_last_lookahead_loss", None)
        self.__dict__.setdefault("_host_scalars", None)
        self.__dict__.setdefault("interval", 1)
        self.__dict__.setdefault("_steps", 0)
        self.param_groups = self.inner.param_groups

    def _host(self, device: torch.device) -> bool:
        """Run the controller on Python floats for parameters on ``device``: on the CPU a
        read of a value is a memory load, elsewhere it waits for the device
        (`newt.scalars`). ``_host_scalars`` overrides it (the tests run both on the CPU)."""
        return device.type == "cpu" if self._host_scalars is None else self._host_scalars

    def _state_of(self, index: int) -> GroupState | None:
        return self._states[index] if index < len(self._states) else None

    def __repr__(self) -> str:
        return f"NewtOptimizer({self.inner!r})".replace("\n", "\n    ")

    # ------------------------------------------------------------------ α storage
    @staticmethod
    def _scheduled(group: dict[str, Any]) -> bool:
        # An LR scheduler attached to this optimizer records "initial_lr" and then owns
        # group["lr"]; α lives in newt's state and the inner step uses α · lr / initial_lr.
        return "initial_lr" in group

    def _scale(self, group: dict[str, Any], host: bool = False) -> Scalar:
        """The scheduler's factor s = lr / initial_lr (1 without one; 0 for a frozen group),
        a float for ``host`` groups."""
        if not self._scheduled(group):
            return 1.0 if host else torch.ones((), dtype=torch.float64)
        lr, initial = group["lr"], group["initial_lr"]
        if host:
            lr, initial = float(lr), float(initial)
            return 0.0 if initial == 0 else lr / initial
        lr = lr.detach().double() if isinstance(lr, Tensor) else torch.tensor(float(lr),
                                                                              dtype=torch.float64)
        initial = (initial.detach().double().to(lr.device) if isinstance(initial, Tensor)
                   else torch.tensor(float(initial), dtype=torch.float64, device=lr.device))
        return torch.where(initial == 0, torch.zeros_like(lr), lr / torch.where(
            initial == 0, torch.ones_like(initial), initial))

    def _alpha(self, group: dict[str, Any], state: GroupState, device: torch.device) -> Scalar:
        """The group's α: a float for a host group (its state of Python numbers)."""
        if state.host:
            if self._scheduled(group):
                if state.alpha is None:
                    state.alpha = float(group["initial_lr"])
                return state.alpha
            return float(group["lr"])
        if self._scheduled(group):
            if state.alpha is None:
                initial = group["initial_lr"]
                state.alpha = (initial.detach().clone().double().to(device)
                               if isinstance(initial, Tensor)
                               else torch.tensor(float(initial), dtype=torch.float64,
                                                 device=device))
            return state.alpha
        lr = group["lr"]
        if isinstance(lr, Tensor):
            return lr.detach()
        return torch.tensor(lr, dtype=torch.float64, device=device)

    def _set_alpha(self, group: dict[str, Any], state: GroupState, alpha: Scalar) -> None:
        if self._scheduled(group):
            state.alpha = alpha if state.host else alpha.double()
        elif isinstance(group["lr"], Tensor):
            group["lr"].fill_(alpha)  # a device tensor α is copied on the device: no host sync
        else:
            group["lr"] = alpha if not isinstance(alpha, Tensor) else alpha.item()

    @property
    def alphas(self) -> list[float]:
        """The learned α of each group, on the unscheduled scale."""
        out = []
        for i, group in enumerate(self.param_groups):
            state = self._state_of(i)
            if self._scheduled(group):
                alpha = state.alpha if state is not None and state.alpha is not None else \
                    group["initial_lr"]
                out.append(float(alpha))
            else:
                out.append(float(group["lr"]))
        return out

    @property
    def step_sizes(self) -> list[float]:
        """The step size the next inner step uses per group: α · lr / initial_lr under an
        LR scheduler, α without one."""
        return [a * float(self._scale(g)) for a, g in zip(self.alphas, self.param_groups,
                                                          strict=True)]

    def _inner_step(self) -> None:
        """One inner step; where a scheduler is attached, with lr = α · s."""
        saved: list[tuple[dict[str, Any], Any]] = []
        for i, group in enumerate(self.param_groups):
            state = self._state_of(i)
            if not self._scheduled(group) or state is None or state.alpha is None:
                continue
            lr = group["lr"]
            if state.host:
                step_size: Scalar = state.alpha * self._scale(group, host=True)
            else:
                step_size = state.alpha * self._scale(group).to(state.alpha.device)
            if isinstance(lr, Tensor):
                saved.append((group, lr.clone()))
                lr.fill_(step_size)
            else:
                saved.append((group, lr))
                group["lr"] = float(step_size)
        try:
            self.inner.step()
        finally:
            for group, lr in saved:
                if isinstance(group["lr"], Tensor):
                    group["lr"].copy_(lr)
                else:
                    group["lr"] = lr

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """newt's state (snapshots, per-group records) plus ``"inner"``."""
        state = super().state_dict()
        state["inner"] = self.inner.state_dict()
        state[NEWT_KEY] = {"version": FORMAT_VERSION, "steps": self._steps,
                           "groups": [None if (s := self._state_of(i)) is None else s.to_dict()
                                      for i in range(len(self.param_groups))]}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a `state_dict`; newt's and the inner optimizer's groups stay one list."""
        if "inner" not in state_dict:
            raise ValueError(
                "NewtOptimizer.load_state_dict: no 'inner' entry; this is not a "
                "NewtOptimizer state_dict (load the inner optimizer's own with .inner)"
            )
        saved = state_dict.get(NEWT_KEY)
        if not isinstance(saved, dict) or saved.get("version") != FORMAT_VERSION:
            raise ValueError(
                "NewtOptimizer.load_state_dict: this state_dict was saved by newt 0.1.0, whose "
                "format (newt's state in the group dicts) this version does not read; resume "
                "the model weights with a new NewtOptimizer, or load only the inner "
                "optimizer's state with opt.inner.load_state_dict(state_dict['inner'])"
            )
        check_shapes(state_dict, self.param_groups)
        lrs = [g["lr"] for g in self.param_groups]
        self.inner.load_state_dict(state_dict["inner"])
        super().load_state_dict({k: v for k, v in state_dict.items()
                                 if k not in ("inner", NEWT_KEY)})
        for mine, theirs, lr in zip(self.param_groups, self.inner.param_groups, lrs, strict=True):
            theirs.update({k: v for k, v in mine.items() if k != "params"})
            if isinstance(lr, Tensor) and isinstance(theirs["lr"], Tensor):
                lr.copy_(theirs["lr"])  # keep the user's tensor object
                theirs["lr"] = lr
        self.param_groups = self.inner.param_groups
        self._states = []
        for i, (group, entry) in enumerate(zip(self.param_groups, saved["groups"], strict=True)):
            device = group["params"][0].device if group["params"] else torch.device("cpu")
            self._states.append(None if entry is None else GroupState.from_dict(
                entry, None if self._host(device) else device, f"param_groups[{i}]"))
        self._reuse = None
        self._steps = int(saved.get("steps", 0))

    # ------------------------------------------------------------------ inspection
    def last_stats(self) -> list[NewtStats | None]:
        """Per group, the last α decision: α, g′, g″, losses and safeguard (``None`` before any).

        Reading converts tensors to Python numbers (a host sync); a step that
        is not read pays nothing for it.
        """
        out: list[NewtStats | None] = []
        for i, (alpha, step_size) in enumerate(zip(self.alphas, self.step_sizes, strict=True)):
            state = self._state_of(i)
            if state is None:
                out.append(None)
                continue
            rec = state.record
            used = float(rec.used_alpha)
            used = alpha if math.isnan(used) else used

            def number(t: Tensor) -> float | None:
                value = float(t)
                return None if math.isnan(value) else value

            out.append(NewtStats(
                alpha=alpha, step_size=step_size, used_alpha=used,
                # g'(α) = −B/α and g''(α) ≈ C/α² (newt.rule).
                slope=-float(rec.lookahead_slope) / used if used else math.nan,
                curvature=float(rec.curvature) / used**2 if used else math.nan,
                loss=number(rec.loss), lookahead_loss=number(rec.lookahead_loss),
                safeguard=Safeguard(int(rec.safeguard)).name.lower(),
                step=int(state.rule.updates),
            ))
        return out

    # ------------------------------------------------------------------ the phases of a step
    def _gather(self) -> list[_Active]:
        """The groups that move this step: parameters with a gradient, their snapshots."""
        active = []
        for index, group in enumerate(self.param_groups):
            options = self._group_options(index, group)
            params, snapshots, sources = [], [], []
            for p in group["params"]:
                if p.grad is None or not p.requires_grad:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "NewtOptimizer does not support sparse gradients; use a dense "
                        "embedding (sparse=False) or torch.optim.SparseAdam without newt"
                    )
                state = self.state[p]
                local = D.local_tensor(p)
                if "snapshot" not in state:
                    state["snapshot"] = local.detach().clone(memory_format=torch.preserve_format)
                params.append(local)
                sources.append(p)
                snapshots.append(state["snapshot"])
            while len(self._states) <= index:
                self._states.append(None)
            if not params:
                continue
            if self._states[index] is None:
                device = params[0].device
                self._states[index] = GroupState.new(None if self._host(device) else device,
                                                     options.controller)
            state = self._states[index]
            assert state is not None
            weights = [D.reduction_weight(p, self.process_group) for p in sources]
            active.append(_Active(index, group, options, state, params, snapshots, sources,
                                  weights))
        return active

    def _everywhere(self, active: list[_Active], values: list[Tensor]
                    ) -> tuple[list[_Active], list[Tensor]]:
        """Sum one scalar per group over the process group (one collective), and add the
        groups that move on another rank but have no gradient here (they contribute 0)."""
        if self.process_group is None:
            return active, values
        n = len(self.param_groups)
        local = dict(zip((a.index for a in active), values, strict=True))
        zero = torch.zeros((), dtype=torch.float64)
        sums, _, _ = D.reduce_phase(
            [local.get(i, zero) for i in range(n)]
            + [torch.tensor(float(i in local)) for i in range(n)],
            process_group=self.process_group)
        by_index = {a.index: a for a in active}
        out_active, out_values = [], []
        for i in range(n):
            if i not in by_index and not bool(sums[n + i]):
                continue  # no rank moves this group
            a = by_index.get(i) or self._placeholder(i)
            out_active.append(a)
            out_values.append(sums[i].to(sums.device if a.state.host else a.state.device,
                                         a.dtype))
        return out_active, out_values

    def _placeholder(self, index: int) -> _Active:
        """A group that moves on another rank only: no local parameters, same decisions."""
        group = self.param_groups[index]
        if self._states[index] is None:
            device = group["params"][0].device if group["params"] else torch.device("cpu")
            self._states[index] = GroupState.new(
                None if self._host(device) else device,
                self._group_options(index, group).controller)
        state = self._states[index]
        assert state is not None
        return _Active(index, group, self._group_options(index, group), state, [], [], [], [])

    def _inner_product(self, a: _Active, grads: list[Tensor | None],
                       refresh: bool = False) -> Tensor:
        """⟨g, s − p⟩ over a group (``None`` grads count as zero); ``refresh`` then sets s ← p.

        With a process group, each parameter's term is weighted for the sum over the ranks
        (`newt.distributed.reduction_weight`); the caller reduces the result.
        """
        dtype = a.dtype
        weights = sorted(set(a.weights))
        if len(weights) <= 1:
            total = F.group_inner_product(grads, a.snapshots, a.params, out_dtype=dtype,
                                          foreach=self.foreach, refresh_snapshots=refresh,
                                          fused=a.one_piece)
            return total if not weights or weights[0] == 1.0 else total * weights[0]
        total = torch.zeros((), dtype=dtype, device=a.params[0].device)
        for w in weights:  # replicated and sharded parameters in one group
            idx = [i for i, x in enumerate(a.weights) if x == w]
            total = total + w * F.group_inner_product(
                [grads[i] for i in idx], [a.snapshots[i] for i in idx],
                [a.params[i] for i in idx], out_dtype=dtype, foreach=self.foreach,
                refresh_snapshots=refresh)
        return total

    def _inner_products(self, active: list[_Active], grads: list[list[Tensor | None]],
                        refresh: bool = False) -> list[Tensor]:
        """`_inner_product` of every group: one fused call where no group is weighted
        (`newt.functional.inner_products`: a small model's groups share their kernels)."""
        if len(active) > 1 and all(a.params and all(w == 1.0 for w in a.weights)
                                   for a in active):
            return F.inner_products(grads, [a.snapshots for a in active],
                                    [a.params for a in active],
                                    out_dtypes=[a.dtype for a in active],
                                    foreach=self.foreach, refresh_snapshots=refresh,
                                    fused=[a.one_piece for a in active])
        return [self._inner_product(a, g, refresh) for a, g in zip(active, grads, strict=True)]

    def _restart_inner(self, group: dict[str, Any]) -> None:
        """Drop the inner optimizer's state of ``group``'s parameters, which it creates
        afresh at its next step (as torch.optim optimizers do at their first).

        ``controller="auto"`` does this where it hands a group over to the Newton rule
        (`newt.rule.auto_before_step`): the watch's probe steps (α ≤ 4e-6) barely moved θ,
        but the inner optimizer's averages would keep their gradients (Adam's second
        moment for about 1/(1 − β₂) steps) and its step count would be
        `newt.rule.AUTO_CHECKS` ahead. Afresh, the run from there is the Newton rule's
        from α₀, as with ``controller="newton"`` (docs/design/alpha.md, H38). State the
        inner optimizer had before newt's first step is dropped as well."""
        for p in group["params"]:
            self.inner.state.pop(p, None)

    def _carry_out(self, a: _Active, decision: rule.Decision) -> None:
        self._set_alpha(a.group, a.state, decision.alpha)
        a.state.record = a.state.record.merged(decision)

    def _judge(self, progress: _InProgress, slopes: list[Tensor],
               lookahead_slopes: list[Tensor] | None, loss: Tensor | None,
               lookahead_loss: Tensor | None) -> list[Scalar]:
        """Decide and restore: keep or undo each group's step. Returns each group's
        "kept" flag (a bool for host groups, else a 0-d tensor: nothing is read).
        ``progress.take`` false (a device flag) undoes every group's step: a gradient was
        not finite, so the step was taken on zeroed gradients only to keep the flag unread."""
        active, take = progress.active, progress.take
        kept: list[Scalar] = []
        for i, a in enumerate(active):
            host = a.state.host
            outcome = Outcome(
                slope=_value(slopes[i], host),
                lookahead_slope=None if lookahead_slopes is None else _value(
                    lookahead_slopes[i], host),
                loss=None if loss is None else _value(loss, host),
                lookahead_loss=None if lookahead_loss is None else _value(lookahead_loss, host),
                own_loss=len(active) == 1, scale=progress.scales[i])
            alpha = self._alpha(a.group, a.state, a.state.device)
            a.state.rule, decision = rule.after_step(a.state.rule, outcome, alpha, a.options)
            self._carry_out(a, decision)
            keep = decision.accept if take is True else decision.accept & take
            F.restore_where(keep, a.params, a.snapshots)
            kept.append(keep)
        return kept

    # ------------------------------------------------------------------ the phases of a step
    # `step` runs them in order; a loop that calls the inner optimizer itself (the seed's
    # API, `newt.Newt`) calls them around its own inner step.
    @torch.no_grad()
    def before_inner_step(self, *, _refresh: bool = True) -> bool:
        """Probe at θ_t, with the gradients in ``.grad``: α_t of every group, θ_t recorded.

        For each group the fresh slope $B = \\langle\nabla L(\theta_t), d_{t-1}\rangle$ of
        the pending step goes to `newt.rule.before_step`, and the snapshot is set to
        θ_t in the same pass. Returns ``False`` when a gradient is not finite: the step
        must then be skipped (`after_inner_step` undoes it if it was taken anyway).
        """
        active = self._gather()
        # With nothing pending s = θ_t already and B = ⟨g, 0⟩: NaN iff g is not finite.
        # With a process group the sum over the ranks is NaN if any rank's is.
        active, probes = self._everywhere(
            active, self._inner_products(active, [a.grads() for a in active], refresh=_refresh))
        flags: list[Scalar] = []
        scales: list[Scalar] = []
        for a, fresh in zip(active, probes, strict=True):
            host = a.state.host
            fresh_value = _value(fresh, host)
            xp = scalars.ops(fresh_value)
            alpha = self._alpha(a.group, a.state, a.state.device)
            momentum = _momentum(a.group) if a.options.controller != "newton" else 0.0
            scale = self._scale(a.group, host)  # this step's, kept for `_judge`
            scales.append(scale)
            watching = isinstance(a.state.rule, rule.GatedState)
            a.state.rule, decision = rule.before_step(
                a.state.rule, Probe(fresh_value, xp.isfinite(fresh_value), momentum, scale),
                alpha, a.options)
            if (watching and a.options.controller == "auto"
                    and isinstance(a.state.rule, rule.RuleState)):
                self._restart_inner(a.group)
            self._carry_out(a, decision)
            flags.append(decision.accept)
        take: Scalar = True
        if all(not isinstance(f, Tensor) for f in flags):
            taken = all(flags)
        else:
            # On a device the flag is never read: the step is taken, a non-finite gradient is
            # zeroed first, and the step is undone where a group's flag is false.
            take = _all(flags)
            for a in active:
                F.zero_where(take, a.grads())
            taken = True
        self._in_progress = _InProgress(active, taken, None, take, scales)
        return taken

    @torch.no_grad()
    def after_inner_step(self, *, lookahead: bool) -> None:
        """Measure $A = \\langle\nabla L(\theta_t), d_t\rangle$ per group after the inner step.

        Without a lookahead (``lookahead=False``, the closure-free mode) the step is judged
        at once; otherwise `after_lookahead` must follow.
        """
        progress = self._require("after_inner_step", "before_inner_step")
        if not progress.taken:  # a non-finite gradient: the step is skipped
            for a in progress.active:
                F.restore_where(False, a.params, a.snapshots)
            self._in_progress = None
            return
        progress.slopes = self._inner_products(progress.active,
                                               [a.grads() for a in progress.active])
        if not lookahead:
            progress.slopes = self._reduce(progress.slopes)
            self._judge(progress, progress.slopes, None, None, None)
            self._in_progress = None

    @torch.no_grad()
    def after_lookahead(self, loss: Tensor, lookahead_loss: Tensor,
                        grads: list[Tensor | None] | None = None) -> bool:
        """Judge the step from the evaluation at θ_{t+1} on the same batch; undo it if rejected.

        Args:
            loss: $L(\theta_t)$ on the batch.
            lookahead_loss: $L(\theta_{t+1})$ on the same batch.
            grads: the gradients at θ_{t+1}, one per parameter of the groups that moved,
                in group order; by default each parameter's ``.grad``.

        Returns:
            Whether every group's step was kept.
        """
        progress = self._require("after_lookahead", "after_inner_step")
        self._in_progress = None
        if not progress.taken:
            return False
        assert progress.slopes is not None
        it = iter(grads) if grads is not None else None
        lookahead_slopes = self._inner_products(progress.active, [
            a.grads() if it is None else [
                None if g is None else D.local_tensor(g) for g in (next(it) for _ in a.params)]
            for a in progress.active])
        lookahead_loss = lookahead_loss.detach().reshape(())
        if self.process_group is not None:  # A, B and L(θ_{t+1}) in one collective
            n = len(progress.slopes)
            sums, means, _ = D.reduce_phase(progress.slopes + lookahead_slopes, [lookahead_loss],
                                            process_group=self.process_group)
            progress.slopes = self._reduce(progress.slopes, sums[:n])
            lookahead_slopes = self._reduce(lookahead_slopes, sums[n:])
            lookahead_loss = means[0].to(lookahead_loss.device, lookahead_loss.dtype)
        self._last_lookahead_loss = lookahead_loss
        kept = self._judge(progress, progress.slopes, lookahead_slopes,
                           loss.detach().reshape(()), lookahead_loss)
        return all(bool(k) for k in kept)  # closure mode reads the flags (see `step`)

    def _reduce(self, values: list[Tensor], reduced: Tensor | None = None) -> list[Tensor]:
        """Per-group scalars summed over the process group (one collective unless
        ``reduced`` already holds the sums), each back in its own dtype and device."""
        if self.process_group is None:
            return values
        if reduced is None:
            reduced, _, _ = D.reduce_phase(values, process_group=self.process_group)
        return [r.to(v.device, v.dtype) for r, v in zip(reduced.unbind(), values, strict=True)]

    def _mean_loss(self, loss: Tensor) -> Tensor:
        """The loss averaged over the process group (the closure's, without one)."""
        if self.process_group is None:
            if not self._warned_unreduced:
                self._warned_unreduced = D.warn_if_losses_unreduced(None)
            return loss
        _, means, _ = D.reduce_phase(means=[loss.detach().reshape(())],
                                     process_group=self.process_group)
        return means[0].to(loss.device, loss.dtype)

    def _moving(self) -> bool:
        return self._in_progress is not None and bool(self._in_progress.active)

    def _require(self, phase: str, before: str) -> _InProgress:
        progress = self._in_progress
        if progress is None or (phase == "after_lookahead" and progress.taken
                                and progress.slopes is None) or (
                phase == "after_inner_step" and progress.slopes is not None):
            raise RuntimeError(f"NewtOptimizer.{phase}() must follow {before}()")
        return progress

    @torch.no_grad()
    def abandon_step(self) -> None:
        """Restore θ_t of every group and drop what was pending (after an exception)."""
        progress, self._in_progress, self._reuse = self._in_progress, None, None
        for a in progress.active if progress is not None else []:
            F.restore_where(False, a.params, a.snapshots)
            pending = a.state.rule.pending
            a.state.rule = a.state.rule._replace(
                pending=torch.zeros_like(pending) if isinstance(pending, Tensor) else False)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        r"""Take one step: with ``closure`` (two evaluations, or one with
        ``reuse_lookahead``), or without (after the user's ``backward()``).

        Returns:
            The loss at $\theta_t$ returned by the closure (detached; averaged over the
            ranks when a ``process_group`` is given), or ``None``.
        """
        if closure is not None and not callable(closure):
            raise TypeError(
                f"NewtOptimizer.step(closure=...) must be callable, got {type(closure).__name__}"
            )
        cycle = self._steps % self.interval
        self._steps += 1
        if cycle:  # between measurements (interval > 1): one evaluation, the inner step
            return self._light_step(closure, probe=cycle == 1)
        if closure is None:
            self._reuse = None
            self._check_closure_free()
            if self.before_inner_step():
                self._inner_step()
            self.after_inner_step(lookahead=False)
            return None
        loss = self._cached_loss(closure)
        self._reuse = None
        saved = None  # the model state before the step (newt.lookahead)
        if loss is None:
            with _lookahead.capture() as saved:
                loss = self._evaluate(closure)
            loss = self._mean_loss(loss)
        if not math.isfinite(float(loss)):
            return loss.detach()  # nothing sound to step from; parameters are left as they are
        taken = self.before_inner_step()
        if not taken or not self._moving():
            self._in_progress = None  # skipped (a gradient is not finite), or nothing moves
            return loss.detach()
        self._inner_step()
        self.after_inner_step(lookahead=True)
        try:
            if saved is None:  # a reused step: the lookahead is the only evaluation
                with _lookahead.capture() as saved, _lookahead.lookahead(
                        saved, replay_rng=False, freeze_buffers=False):
                    lookahead_loss = self._evaluate(closure)
            else:
                # The first evaluation's dropout masks; BatchNorm statistics updated once
                # (by the lookahead itself when it is reused as the next step's evaluation).
                with _lookahead.lookahead(saved, freeze_buffers=not self.reuse_lookahead):
                    lookahead_loss = self._evaluate(closure)
        except BaseException:
            self.abandon_step()  # θ_t back, nothing pending; the inner optimizer has stepped
            raise
        kept = self.after_lookahead(loss, lookahead_loss)
        if not kept:  # an undone step leaves the running statistics as before it
            _lookahead.restore_model_state(saved)
        if self.reuse_lookahead and kept and math.isfinite(float(lookahead_loss)):
            # θ_{t+1} was kept: its loss and gradients are the next step's first evaluation.
            self._reuse = (closure, self._last_lookahead_loss, self._versions())
        return loss.detach()

    def _light_step(self, closure: Callable[[], Any] | None, probe: bool) -> Any:
        r"""A step between two measurements (``interval`` > 1): the inner step at the current α.

        With ``probe`` (the step right after a measured one) the fresh slope
        $B = \langle\nabla L(\theta_{t+1}), d_t\rangle$ of the measured step is read first
        and updates α (`newt.rule.before_step`), the snapshot kept; otherwise only the
        gradients' finiteness is checked (one read of them). A non-finite gradient skips
        the inner step on the host; on a device it is zeroed (no host read), so the inner
        step moves by its momentum only.
        """
        loss = None
        if closure is not None:
            loss = self._cached_loss(closure)
            self._reuse = None
            if loss is None:
                loss = self._mean_loss(self._evaluate(closure))
            if not math.isfinite(float(loss)):
                return loss.detach()
        if probe:
            taken = self.before_inner_step(_refresh=False)
            self._in_progress = None
        else:
            grads = [D.local_tensor(p.grad) for g in self.param_groups for p in g["params"]
                     if p.grad is not None and p.requires_grad]
            host = not grads or self._host(grads[0].device)
            if host and self.process_group is None:
                taken = F.all_finite(grads, read=True)  # one read of one number
            else:
                finite = F.all_finite(grads)
                if self.process_group is not None:
                    _, _, flags = D.reduce_phase(all_true=[finite],
                                                 process_group=self.process_group)
                    finite = flags[0]
                taken = bool(finite) if host else True
                if not host:
                    F.zero_where(finite.to(grads[0].device), grads)
        if taken:
            self._inner_step()
        return None if loss is None else loss.detach()

    def _check_closure_free(self) -> None:
        for index, group in enumerate(self.param_groups):
            options = self._group_options(index, group)
            if options.curvature == "loss" or options.slope == "same_batch":
                option = ("curvature='loss'" if options.curvature == "loss"
                          else "slope='same_batch'")
                raise RuntimeError(
                    f"param_groups[{index}]: {option} needs a second evaluation on the same "
                    "batch, which only step(closure) provides; pass a closure, or use "
                    "curvature='gradient' and slope='next_batch' for closure-free steps"
                )

    def _cached_loss(self, closure: Callable[[], Any]) -> Tensor | None:
        if not (self.reuse_lookahead and self._reuse is not None):
            return None
        cached_closure, cached_loss, versions = self._reuse
        same = cached_closure == closure  # bound methods are new objects at each access
        if not same:
            warnings.warn(
                "NewtOptimizer(reuse_lookahead=True): step() got a different closure than "
                "the last step, so the cached lookahead evaluation cannot be reused; "
                "evaluating again (pass the same closure every step to save this call)",
                RuntimeWarning, stacklevel=4,
            )
        # Parameters or gradients changed since (e.g. zero_grad): evaluate again.
        same = same and versions == self._versions()
        if self.process_group is not None:  # every rank reuses, or none (DDP would hang)
            _, _, flags = D.reduce_phase(all_true=[torch.tensor(same)],
                                         process_group=self.process_group)
            same = bool(flags[0])
        return cached_loss if same else None

    def _versions(self) -> list[int]:
        """Version counters of every parameter and gradient (-1 for a missing gradient)."""
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                out.append(p._version)
                out.append(-1 if p.grad is None else p.grad._version)
        return out

    def _evaluate(self, closure: Callable[[], Any]) -> Tensor:
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise TypeError(
                "NewtOptimizer.step(closure): the closure returned None; it must zero the "
                "gradients, compute the loss, call loss.backward() and return the loss"
            )
        if not isinstance(loss, Tensor):
            if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
                raise TypeError(
                    f"NewtOptimizer.step(closure): the closure returned {type(loss).__name__}; "
                    "return the loss as a scalar tensor"
                )
            loss = torch.tensor(float(loss))
        if loss.numel() != 1:
            raise ValueError(
                f"NewtOptimizer.step(closure): the closure returned a tensor of shape "
                f"{tuple(loss.shape)}; return a scalar loss (e.g. loss.mean())"
            )
        return loss
