r"""`NewtOptimizer`: wrap any optimizer and learn each group's step size α.

The inner optimizer proposes the update; newt moves the step size of each
parameter group with a Newton step on $g_t(\alpha) = L(\theta_t - \alpha u_t)$:

$$
\theta_{t+1} = \theta_t - \alpha_t u_t, \qquad
\alpha_{t+1} = \alpha_t - \frac{g_t'(\alpha_t)}{g_t''(\alpha_t)},
$$

with $g_t'$ from the gradient at the shifted point $\theta_{t+1}$ (the
*lookahead*) and $g_t''$ from a difference of gradients or of losses
(`newt.rule`). Where the lookahead comes from is the step mode:

- `step(closure)`: the closure is evaluated at $\theta_t$ and again at
  $\theta_{t+1}$ on the same batch (two evaluations per step). The second
  evaluation gives the curvature, the loss-increase check and the undo of a
  non-finite step; the slope $g_t'(\alpha_t)$ is read from the *next* step's
  first evaluation (a fresh batch at $\theta_{t+1}$), so α is updated at the
  start of the next step (`slope="next_batch"`, the default;
  `slope="same_batch"` updates it at once from the same batch, as the seed did);
- `step(closure)` with `reuse_lookahead=True`: for a deterministic closure,
  the evaluation at $\theta_{t+1}$ is the next step's first evaluation (one
  per step);
- `step()` after the user's `backward()`: the gradient of the next batch at
  $\theta_{t+1}$ is the lookahead of the previous step (no extra evaluation;
  the curvature estimate then carries batch-to-batch noise).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from newt import functional as F
from newt.presets import PRESETS
from newt.rule import (
    Safeguard,
    average_derivatives,
    curvature_estimate,
    gradient_difference,
    newton_update,
)

__all__ = ["NewtOptimizer", "NewtStats"]

_RULE_OPTIONS = (
    "update", "gamma", "eps", "lr_min", "lr_max", "factor_min", "factor_max", "backoff",
    "nonconvex_factor", "nonfinite_factor",
)
_OPTIONS = (
    "curvature", "slope", "reject", "beta", "update", "gamma", "eps", "lr_min", "lr_max",
    "factor_min", "factor_max", "backoff", "nonconvex_factor", "nonfinite_factor",
)
_STATE_KEY = "newt"  # per-group state lives in group["newt"], so state_dict() carries it


@dataclass(frozen=True)
class NewtStats:
    r"""What newt saw and decided for one parameter group at its last α update.

    Attributes:
        lr: the α of the step this update describes ($\alpha_t$).
        next_lr: the α this update produced, i.e. the group's α now. In the
            closure mode with `slope="next_batch"` the update of step $t$ runs at
            the start of step $t+1$, so after `step()` returns this is the α
            that step used; the next step will update it first.
        slope: $g_t'(\alpha_t) = -B/\alpha_t$.
        curvature: the estimate of $g_t''(\alpha_t)$, $C/\alpha_t^2$.
        loss: $L(\theta_t)$ (closure mode; `None` otherwise).
        lookahead_loss: $L(\theta_{t+1})$ on the same batch (closure mode).
        safeguard: the name of the `newt.rule.Safeguard` that decided α.
        step: how many α updates this group has had.
    """

    lr: float
    next_lr: float
    slope: float
    curvature: float
    loss: float | None
    lookahead_loss: float | None
    safeguard: str
    step: int


def _check_options(options: dict[str, Any], where: str) -> None:
    def fail(name: str, fix: str) -> None:
        raise ValueError(f"{where}: invalid {name}={options[name]!r}; {fix}")

    for name in _OPTIONS:
        if name in ("curvature", "slope", "update"):
            continue
        if name == "reject":
            if not isinstance(options[name], bool):
                raise TypeError(f"{where}: reject must be True or False, got {options[name]!r}")
            continue
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__}")
        if math.isnan(value):
            fail(name, "it must not be NaN")
    if options["curvature"] not in ("gradient", "loss"):
        fail("curvature", "use 'gradient' (gradient difference) or 'loss' (loss difference)")
    if options["slope"] not in ("next_batch", "same_batch"):
        fail("slope", "use 'next_batch' (lookahead slope from the next batch) or 'same_batch'")
    if options["update"] not in ("log", "exp", "linear"):
        fail("update", "use 'log' (damped Newton factor in log α), 'exp' (its first-order, "
             "noise-unbiased form) or 'linear' (the seed's rule)")
    if not 0.0 <= options["gamma"] <= 1.0:
        fail("gamma", "the damping must lie in [0, 1] (0 freezes α, 1 is a full Newton step)")
    if not 0.0 <= options["beta"] < 1.0:
        fail("beta", "the averaging coefficient must lie in [0, 1) (0 turns averaging off)")
    if options["eps"] < 0:
        fail("eps", "it must be >= 0")
    if not options["lr_min"] >= 0:
        fail("lr_min", "it must be >= 0")
    if not options["lr_max"] > 0:
        fail("lr_max", "it must be > 0")
    if options["lr_min"] > options["lr_max"]:
        fail("lr_min", f"it must not exceed lr_max={options['lr_max']!r}")
    if options["factor_min"] < 0:
        fail("factor_min", "it must be >= 0")
    if options["factor_max"] < 1:
        fail("factor_max", "it must be >= 1 (α must be allowed to stay)")
    if options["factor_min"] > 1:
        fail("factor_min", "it must be <= 1 (α must be allowed to stay)")
    for name in ("backoff", "nonfinite_factor"):
        if not 0 < options[name] <= 1:
            fail(name, "a shrink factor must lie in (0, 1]")
    if not options["nonconvex_factor"] > 0:
        fail("nonconvex_factor", "it must be > 0")


class NewtOptimizer(Optimizer):
    r"""Learn the step size of any optimizer with a Newton step on α.

    $$
    \theta_{t+1} = \theta_t - \alpha_t u_t, \qquad
    \alpha_{t+1} = \operatorname{clamp}\big(\alpha_t\, \hat f_t,\
        \text{lr\_min},\ \text{lr\_max}\big), \qquad
    \hat f_t = \Big(1 + \frac{B_t}{C_t}\Big)^{\gamma}
    $$

    where

    - $u_t$ is the inner optimizer's update direction at step size $\alpha_t$
      (the group's `lr`);
    - $B_t = \langle\nabla L(\theta_{t+1}), \theta_t - \theta_{t+1}\rangle$ is the
      lookahead slope, $A_t$ the same at $\theta_t$;
    - $C_t = A_t - B_t$ (`curvature="gradient"`) or
      $2(L(\theta_t) - L(\theta_{t+1}) - B_t)$ (`curvature="loss"`);
    - $1 + B_t/C_t$ is clamped to `[factor_min, factor_max]`, damped by γ and
      replaced by the safeguards of `newt.rule.newton_update` (loss increase,
      non-positive curvature, no information, non-finite values).

    `NewtOptimizer` shares `param_groups` with the inner optimizer: the α of a
    group is its `lr`, and every keyword option can be set per group (put it in
    the group's dict when building the inner optimizer). An LR scheduler
    attached to the `NewtOptimizer` scales the learned α: the inner step uses
    α · lr / initial_lr, and α is kept in the group's newt state.

    Args:
        inner: the optimizer that proposes the update direction.
        preset: `"default"` or `"seed"` (the seed project's constants);
            keyword options override it.
        reuse_lookahead: with a deterministic closure (full batch), reuse the
            evaluation at $\theta_{t+1}$ as the next step's first one: one
            closure call per step instead of two.
        foreach: use the multi-tensor kernels (default: on).
        **options: the keyword options below.

    Keyword Args:
        curvature (str): `"gradient"` ($C = A - B$) or `"loss"`
            ($C = 2(L_t - L_{t+1} - B)$, closure mode only; with several groups
            the loss change mixes all groups' steps, so use it with one group).
        slope (str): `"next_batch"` (closure mode reads $B$ from the next
            step's batch) or `"same_batch"` (the seed's rule; closure mode only).
        reject (bool): closure mode: undo a step that raised the batch's loss (the
            group's share of it, by the trapezoid rule, when several groups step)
            and multiply α by `backoff` (by `backoff**gamma` with `update="log"`).
            Off when `gamma=0`, so that γ = 0 is exactly the inner optimizer.
        beta (float): averaging of $g'$ and $g''$ over steps, in [0, 1); 0 is off.
        update (str): `"log"` (a step of γ in log α), `"exp"` (the same with the
            Newton factor $1 + B/C$ replaced by $e^{B/C}$: no downward drift
            under a noisy slope, better for closure-free mini-batch training)
            or `"linear"` (the seed's).
        gamma (float): damping of the Newton step, in [0, 1]; 0 never changes α.
        eps (float): relative threshold under which the curvature counts as
            non-positive: $C \le \varepsilon(|A| + |B|)$.
        lr_min (float): lower clamp on α.
        lr_max (float): upper clamp on α.
        factor_min (float): lower clamp on the Newton factor (before damping).
        factor_max (float): upper clamp on the Newton factor (before damping).
        backoff (float): cap on the factor when the lookahead loss rose.
        nonconvex_factor (float): factor when the curvature is not positive.
        nonfinite_factor (float): factor after a non-finite step, which is undone.

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
        foreach: bool | None = None,
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
        if preset not in PRESETS:
            raise ValueError(
                f"NewtOptimizer(preset={preset!r}) is unknown; use one of {list(PRESETS)}"
            )
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(
                f"NewtOptimizer got unexpected option(s) {unknown}; valid options: {list(_OPTIONS)}"
            )
        defaults = {**PRESETS[preset], **options}
        _check_options(defaults, "NewtOptimizer")
        self.inner = inner
        self.reuse_lookahead = bool(reuse_lookahead)
        self.foreach = True if foreach is None else bool(foreach)
        self._reuse: tuple[Callable[[], Any], Tensor, list[int]] | None = None
        super().__init__(inner.param_groups, defaults)
        if len(self.param_groups) > 1 and any(g["curvature"] == "loss" for g in self.param_groups):
            warnings.warn(
                "NewtOptimizer(curvature='loss') with several parameter groups: the loss change "
                "L(θ_t) − L(θ_{t+1}) mixes every group's step, so each group's curvature "
                "estimate is biased; use curvature='gradient' for per-group α",
                UserWarning, stacklevel=2,
            )

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to both newt and the inner optimizer (same dict object)."""
        if not any(param_group is g for g in self.inner.param_groups):
            self.inner.add_param_group(param_group)
            param_group = self.inner.param_groups[-1]
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        where = f"param_groups[{len(self.param_groups) - 1}]"
        _check_options(group, where)
        if group.get("differentiable", False):
            raise RuntimeError(
                f"{where}: differentiable=True inner optimizers are not supported; "
                "newt's step runs under torch.no_grad()"
            )
        if group.get("fused", False):
            raise RuntimeError(
                f"{where}: fused=True inner optimizers are not supported; use foreach=True"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(inner=self.inner, reuse_lookahead=self.reuse_lookahead, foreach=self.foreach)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("reuse_lookahead", False)
        self.__dict__.setdefault("foreach", True)
        self.__dict__.setdefault("_reuse", None)
        for group in self.param_groups:
            for name, value in self.defaults.items():
                group.setdefault(name, value)

    def __repr__(self) -> str:
        return f"NewtOptimizer({self.inner!r})".replace("\n", "\n    ")

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """newt's state (snapshots, per-group α and counters) plus ``"inner"``."""
        state = super().state_dict()
        state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a `state_dict`; newt's and the inner optimizer's groups stay one."""
        if "inner" not in state_dict:
            raise ValueError(
                "NewtOptimizer.load_state_dict: no 'inner' entry; this is not a "
                "NewtOptimizer state_dict (load the inner optimizer's own with .inner)"
            )
        lrs = [g["lr"] for g in self.param_groups]
        self.inner.load_state_dict(state_dict["inner"])
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "inner"})
        for mine, theirs, lr in zip(self.param_groups, self.inner.param_groups, lrs, strict=True):
            theirs.update({k: v for k, v in mine.items() if k != "params"})
            if isinstance(lr, Tensor) and isinstance(theirs["lr"], Tensor):
                lr.copy_(theirs["lr"])  # keep the user's tensor object
                theirs["lr"] = lr
        self.param_groups = list(self.inner.param_groups)
        self._reuse = None

    # ------------------------------------------------------------------ inspection
    def last_stats(self) -> list[NewtStats | None]:
        """Per group, the last α update: α, g′, g″, losses and safeguard (``None`` before any).

        Reading converts tensors to Python numbers (a host sync); a step that
        is not read pays nothing for it.
        """
        out: list[NewtStats | None] = []
        for group in self.param_groups:
            st = group.get(_STATE_KEY)
            if st is None:
                out.append(None)
                continue
            next_lr = float(self._alpha(group))
            lr = float(st["used_lr"]) if "used_lr" in st else next_lr

            def number(key: str, st: dict[str, Any] = st) -> float | None:
                return float(st[key]) if key in st else None

            lookahead_slope, curvature = number("lookahead_slope"), number("curvature")
            out.append(
                NewtStats(
                    lr=lr,
                    next_lr=next_lr,
                    # g'(α) = −B/α and g''(α) ≈ C/α² (newt.rule).
                    slope=-lookahead_slope / lr if lookahead_slope is not None and lr
                    else float("nan"),
                    curvature=curvature / lr**2 if curvature is not None and lr else float("nan"),
                    loss=number("loss"),
                    lookahead_loss=number("lookahead_loss"),
                    safeguard=Safeguard(
                        int(st.get("safeguard", Safeguard.FIRST_STEP))).name.lower(),
                    step=int(st["step"]),
                )
            )
        return out

    # ------------------------------------------------------------------ α storage
    @staticmethod
    def _scheduled(group: dict[str, Any]) -> bool:
        # An LR scheduler attached to this optimizer records "initial_lr" and then
        # owns group["lr"]; newt's α then lives in its own state and the schedule
        # scales it: lr_used = α · lr / initial_lr.
        return "initial_lr" in group

    def _alpha(self, group: dict[str, Any]) -> float | Tensor:
        if self._scheduled(group):
            st = group[_STATE_KEY]
            if "alpha" not in st:
                initial = group["initial_lr"]
                st["alpha"] = initial.clone() if isinstance(initial, Tensor) else torch.tensor(
                    float(initial), dtype=torch.float64)
            return st["alpha"]
        return group["lr"]

    def _set_alpha(self, group: dict[str, Any], alpha: Tensor) -> None:
        if self._scheduled(group):
            group[_STATE_KEY]["alpha"] = alpha
        elif isinstance(group["lr"], Tensor):
            group["lr"].copy_(alpha)  # no host sync
        else:
            group["lr"] = alpha.item()

    def _inner_step(self) -> None:
        """One inner step; where a scheduler is attached, with lr = α · lr / initial_lr."""
        saved: list[tuple[dict[str, Any], Any]] = []
        for group in self.param_groups:
            if self._scheduled(group) and _STATE_KEY in group:
                lr, alpha = group["lr"], self._alpha(group)
                scale = lr / group["initial_lr"]
                if isinstance(lr, Tensor):
                    saved.append((group, lr.clone()))
                    lr.copy_(alpha * scale)
                else:
                    saved.append((group, lr))
                    group["lr"] = float(alpha * scale)
        try:
            self.inner.step()
        finally:
            for group, lr in saved:
                if isinstance(group["lr"], Tensor):
                    group["lr"].copy_(lr)
                else:
                    group["lr"] = lr

    # ------------------------------------------------------------------ per-group lists
    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Params with a gradient, their gradients and their snapshot buffers."""
        params, grads, snapshots = [], [], []
        for p in group["params"]:
            if p.grad is None or not p.requires_grad:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    "NewtOptimizer does not support sparse gradients; use a dense "
                    "embedding (sparse=False) or torch.optim.SparseAdam without newt"
                )
            state = self.state[p]
            if "snapshot" not in state:
                state["snapshot"] = p.detach().clone(memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            snapshots.append(state["snapshot"])
        return params, grads, snapshots

    def _group_state(self, group: dict[str, Any], like: Tensor | None) -> dict[str, Any]:
        st = group.get(_STATE_KEY)
        if st is None:
            device = like.device if like is not None else torch.device("cpu")
            st = group[_STATE_KEY] = {
                "step": torch.zeros((), dtype=torch.int64, device=device),
                "valid": torch.zeros((), dtype=torch.bool, device=device),
            }
        return st

    def _inner_product(self, grads: list[Tensor | None], snapshots: list[Tensor],
                       params: list[Tensor], refresh: bool = False) -> Tensor:
        """⟨g, s − p⟩ over a group (``None`` grads count as zero); ``refresh`` then sets s ← p."""
        dtype = torch.promote_types(
            torch.float32, max((p.dtype for p in params), key=lambda d: d.itemsize)
        )
        dtype = dtype.to_real() if dtype.is_complex else dtype
        return F.group_inner_product(grads, snapshots, params, out_dtype=dtype,
                                     foreach=self.foreach, refresh_snapshots=refresh)

    def _newton(self, group: dict[str, Any], st: dict[str, Any], lookahead_slope: Tensor) -> Tensor:
        """Move one group's α with the pending step's slope and this lookahead slope.

        Returns the "values were finite" flag (true when there was nothing pending).
        """
        slope = st["pending_slope"]
        curvature = st.pop("pending_curvature", None)
        if curvature is None:  # closure-free: both gradients come from different batches
            curvature = gradient_difference(slope, lookahead_slope)
        alpha = self._alpha_tensor(group, st)
        valid = st["valid"]  # false on the first step and after an undone step
        if group["beta"] > 0:
            if "average" not in st:
                st["average"] = torch.zeros(3, dtype=torch.float64, device=slope.device)
            keep = valid & torch.isfinite(lookahead_slope) & torch.isfinite(curvature)
            lookahead_slope, curvature, st["average"] = average_derivatives(
                st["average"], alpha, lookahead_slope, curvature, keep, group["beta"])
        result = newton_update(
            alpha, slope, lookahead_slope, curvature,
            loss_increase=st.pop("pending_loss_increase", None),
            **{name: group[name] for name in _RULE_OPTIONS},
        )
        st["used_lr"] = alpha.clone()
        st["lookahead_slope"] = lookahead_slope
        st["curvature"] = result.curvature
        st["safeguard"] = torch.where(valid, result.safeguard, int(Safeguard.FIRST_STEP))
        if "pending_loss" in st:  # closure mode: the losses of the step this update describes
            st["loss"] = st.pop("pending_loss")
            st["lookahead_loss"] = st.pop("pending_lookahead_loss")
        st["step"] += 1
        self._set_alpha(group, torch.where(valid, result.lr, alpha.to(result.lr.dtype)))
        # A non-finite lookahead slope means a non-finite gradient at the current point.
        return torch.isfinite(lookahead_slope) & (result.finite | ~valid)

    def _shrink_where(self, group: dict[str, Any], st: dict[str, Any], keep: Tensor,
                      factor: float | None = None,
                      reason: Safeguard = Safeguard.NONFINITE) -> None:
        """α ← clamp(α · factor) where ``keep`` is false (an undone step), without a sync."""
        if F.nothing_to_undo(keep):
            return
        factor = group["nonfinite_factor"] if factor is None else factor
        alpha = self._alpha_tensor(group, st)
        shrunk = torch.clamp(alpha * factor, group["lr_min"], group["lr_max"])
        self._set_alpha(group, torch.where(keep, alpha, shrunk.to(alpha.dtype)))
        st["safeguard"] = torch.where(keep, st.get("safeguard", int(Safeguard.FIRST_STEP)),
                                      int(reason))

    def _alpha_tensor(self, group: dict[str, Any], st: dict[str, Any]) -> Tensor:
        alpha = self._alpha(group)
        if isinstance(alpha, Tensor):
            return alpha.detach()
        return torch.tensor(alpha, dtype=torch.float64, device=st["step"].device)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        r"""Take one step: with ``closure`` (two evaluations, or one with
        ``reuse_lookahead``), or without (after the user's ``backward()``).

        Returns:
            The loss at $\theta_t$ returned by the closure, or ``None``.
        """
        if closure is None:
            self._step_without_closure()
            return None
        if not callable(closure):
            raise TypeError(
                f"NewtOptimizer.step(closure=...) must be callable, got {type(closure).__name__}"
            )
        return self._step_with_closure(closure)

    def _check_mode(self, closure_free: bool) -> None:
        if not closure_free:
            return
        for i, group in enumerate(self.param_groups):
            if group["curvature"] == "loss" or group["slope"] == "same_batch":
                option = ("curvature='loss'" if group["curvature"] == "loss"
                          else "slope='same_batch'")
                raise RuntimeError(
                    f"param_groups[{i}]: {option} needs a second evaluation on the same batch, "
                    "which only step(closure) provides; pass a closure, or use "
                    "curvature='gradient' and slope='next_batch' for closure-free steps"
                )

    def _step_without_closure(self) -> None:
        self._check_mode(closure_free=True)
        self._reuse = None
        lists = []
        for group in self.param_groups:
            params, grads, snapshots = self._init_group(group)
            lists.append((params, grads, snapshots))
            if not params:
                continue
            st = self._group_state(group, params[0])
            if "pending_slope" in st:
                # This batch's gradient at θ_t is the lookahead of the last step.
                finite = self._newton(group, st, self._inner_product(grads, snapshots, params))
                F.restore_where(finite, params, snapshots)  # undo a step that went non-finite
            else:
                finite = F.all_finite(grads).to(st["step"].device)
                self._shrink_where(group, st, finite)
            F.zero_where(finite, grads)  # keep NaN out of the inner optimizer's state
            F.copy_snapshot(snapshots, params, foreach=self.foreach)
        self._inner_step()
        for group, (params, grads, snapshots) in zip(self.param_groups, lists, strict=True):
            if params:
                st = group[_STATE_KEY]
                st["pending_slope"] = self._inner_product(grads, snapshots, params)
                st["valid"] = torch.isfinite(st["pending_slope"])
                # An inner step that overflowed is undone now, not one batch later.
                F.restore_where(st["valid"], params, snapshots)
                self._shrink_where(group, st, st["valid"])

    def _evaluate(self, closure: Callable[[], Any]) -> Tensor:
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            raise TypeError(
                "NewtOptimizer.step(closure): the closure returned None; it must zero the "
                "gradients, compute the loss, call loss.backward() and return the loss"
            )
        if not isinstance(loss, Tensor):
            if isinstance(loss, bool) or not isinstance(loss, (int, float)):
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

    def _versions(self) -> list[int]:
        return [p._version for g in self.param_groups for p in g["params"]]

    def _step_with_closure(self, closure: Callable[[], Any]) -> Any:
        loss = None
        if self.reuse_lookahead and self._reuse is not None:
            cached_closure, cached_loss, versions = self._reuse
            if cached_closure != closure:  # bound methods are new objects at each access
                warnings.warn(
                    "NewtOptimizer(reuse_lookahead=True): step() got a different closure than "
                    "the last step, so the cached lookahead evaluation cannot be reused; "
                    "evaluating again (pass the same closure every step to save this call)",
                    RuntimeWarning, stacklevel=3,
                )
            elif versions == self._versions():
                loss = cached_loss
        self._reuse = None
        if loss is None:
            loss = self._evaluate(closure)
        if not math.isfinite(float(loss)):
            return loss  # nothing sound to step from; parameters are left as they are

        lists = []
        gradients_finite = torch.ones((), dtype=torch.bool)
        for group in self.param_groups:
            params, grads, snapshots = self._init_group(group)
            lists.append((params, snapshots))
            if not params:
                continue
            st = self._group_state(group, params[0])
            if group["slope"] == "next_batch" and "pending_slope" in st:
                # Slope at θ_t along the last displacement, from this (fresh) batch:
                # free of the correlation between the last batch and its own update.
                # The same pass over the parameters refreshes the snapshot s ← θ_t.
                finite = self._newton(group, st,
                                      self._inner_product(grads, snapshots, params, True))
            else:
                F.copy_snapshot(snapshots, params, foreach=self.foreach)
                finite = F.all_finite(grads).to(st["step"].device)
                self._shrink_where(group, st, finite)
            gradients_finite = gradients_finite & finite.cpu()
        if not bool(gradients_finite):
            # A NaN/inf gradient at θ_t: keep it out of the inner optimizer's state and
            # skip the step (α of the affected groups was shrunk).
            return loss
        self._inner_step()
        slopes = [self._inner_product([p.grad for p in params], snapshots, params)
                  if params else None for params, snapshots in lists]

        lookahead_loss = self._evaluate(closure).detach()
        loss_t = loss.detach()
        all_kept = torch.isfinite(lookahead_loss)
        active = sum(1 for params, _ in lists if params)
        for group, (params, snapshots), slope in zip(self.param_groups, lists, slopes, strict=True):
            if not params:
                continue
            st = group[_STATE_KEY]
            st["pending_loss"], st["pending_lookahead_loss"] = loss_t, lookahead_loss
            lookahead_slope = self._inner_product([p.grad for p in params], snapshots, params)
            curvature = curvature_estimate(slope, lookahead_slope, loss_t, lookahead_loss,
                                           group["curvature"])
            finite = (torch.isfinite(slope) & torch.isfinite(lookahead_slope)
                      & torch.isfinite(curvature) & torch.isfinite(lookahead_loss))
            st["pending_slope"] = slope
            st["pending_curvature"] = curvature
            if group["curvature"] == "loss" or active == 1:
                st["pending_loss_increase"] = lookahead_loss > loss_t
            else:
                # This group's share of the loss change, by the trapezoid rule along its own
                # displacement: L(θ_t) − L(θ_{t+1}) ≈ (A + B)/2. Other groups' steps do not
                # enter it, so each group's α stays its own.
                st["pending_loss_increase"] = slope + lookahead_slope < 0
            st["valid"] = torch.ones((), dtype=torch.bool, device=slope.device)
            keep = finite
            if group["reject"] and group["gamma"] > 0:  # undo a step that raised the loss
                keep = finite & ~st["pending_loss_increase"]
            if group["slope"] == "same_batch":
                self._newton(group, st, lookahead_slope)  # the seed's rule: same-batch slope
                st.pop("pending_slope")
            else:
                # Undone steps shrink α now; the Newton step waits for the next batch.
                self._shrink_where(group, st, finite, group["nonfinite_factor"],
                                   Safeguard.NONFINITE)
                backoff = group["backoff"] ** (group["gamma"] if group["update"] == "log" else 1)
                self._shrink_where(group, st, keep | ~finite, backoff, Safeguard.LOSS_INCREASE)
                st["valid"] = keep
            F.restore_where(keep, params, snapshots)
            all_kept = all_kept & keep
        if self.reuse_lookahead and bool(all_kept):
            # θ_{t+1} was kept: its loss and gradients are the next step's first evaluation.
            self._reuse = (closure, lookahead_loss, self._versions())
        return loss
