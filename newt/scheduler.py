r"""``Newt``: the seed project's scheduler API on newt's core.

The seed (``dscamiss/newt``) exposes the method as a learning-rate scheduler
that the training loop drives by hand::

    optimizer.step()
    newt.step_setup(loss, x, y)  # lookahead forward/backward at θ_{t+1}
    newt.step()                  # α_{t+1} from the lookahead

This module keeps that API and its names (`NewtConfig`) as an adapter over
`newt.NewtOptimizer(optimizer, preset="seed")`: the optimizer's step hooks
run the core's phases (`NewtOptimizer.before_inner_step`,
`NewtOptimizer.after_inner_step`) around the user's own inner step, and
``step_setup`` hands the lookahead to `NewtOptimizer.after_lookahead`. So
``Newt`` and ``NewtOptimizer(preset="seed")`` take the same decisions with
the same code.
Unlike the seed it handles several parameter groups (one α each), records the
current loss in the loss-difference mode, leaves BatchNorm running statistics
untouched by the lookahead, and saves a ``state_dict`` of tensors and numbers
keyed by index (no model, loss object or ``Parameter`` keys), so a checkpoint
resumes and loads with ``torch.load(weights_only=True)``.

For new code, `newt.NewtOptimizer` does the same with a closure and
no hand-written lookahead.
"""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from newt.optimizer import NewtOptimizer
from newt.options import NewtOptions
from newt.presets import SEED

__all__ = ["Newt", "NewtConfig"]

_CONFIG_FIELDS = ("use_alternate_approx", "gamma", "epsilon", "lr_clamp_min", "lr_clamp_max")
_CONFIG_NAMES = {"curvature": "use_alternate_approx", "eps": "epsilon",
                 "lr_min": "lr_clamp_min", "lr_max": "lr_clamp_max"}
_RULE_OPTIONS = ("update", "gamma", "eps", "lr_min", "lr_max", "factor_min", "factor_max",
                 "backoff", "nonconvex_factor", "nonfinite_factor")


@dataclass
class NewtConfig:
    """Configuration of `Newt`, with the seed's names and defaults.

    Attributes:
        model: the model; ``step_setup`` calls ``model(x)`` at θ_{t+1}.
        loss_criterion: called as ``loss_criterion(model(x), y)``.
        use_alternate_approx: ``False`` estimates g''(α) from a difference of
            gradients (Retsinas et al. 2023); ``True`` from a difference of
            losses (second-order Taylor expansion of g around α).
        gamma: damping of the Newton step on α (the seed's linear rule,
            ``α ← α·(1 + γ·(f − 1))``).
        epsilon: relative threshold under which the curvature estimate counts
            as non-positive (α is then kept).
        lr_clamp_min, lr_clamp_max: clamps on α.
    """

    model: nn.Module | None = None
    loss_criterion: Callable[[Any, Any], Tensor] | None = None
    use_alternate_approx: bool = False
    gamma: float = SEED["gamma"]
    epsilon: float = SEED["eps"]
    lr_clamp_min: float = SEED["lr_min"]
    lr_clamp_max: float = SEED["lr_max"]

    def newt_options(self) -> dict[str, Any]:
        """The keyword options of ``NewtOptimizer(preset="seed")`` this config stands for."""
        if not isinstance(self.use_alternate_approx, bool):
            raise TypeError(f"NewtConfig(use_alternate_approx={self.use_alternate_approx!r}): "
                            "pass True or False")
        return {"curvature": "loss" if self.use_alternate_approx else "gradient",
                "gamma": self.gamma, "eps": self.epsilon,
                "lr_min": self.lr_clamp_min, "lr_max": self.lr_clamp_max}

    def rule_options(self) -> dict[str, Any]:
        """The keyword options of `newt.rule.update_lr` this config stands for.

        The seed's constants that the config does not name come from
        `newt.presets.SEED`: linear damping, the factor clamped to
        [0, 1.05], ×0.1 when the loss rises, no change on non-positive curvature.
        """
        options = NewtOptions.resolve("seed", self.newt_options(), where="NewtConfig",
                                      names=_CONFIG_NAMES).as_dict()
        return {"curvature": options["curvature"],
                **{name: options[name] for name in _RULE_OPTIONS}}


def _pre_hook(ref: weakref.ref[Newt]) -> Callable[..., None]:
    def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        newt = ref()
        if newt is not None:
            newt._taken = newt.core.before_inner_step()
            if not newt._taken:
                # A non-finite gradient: the user's inner step runs anyway, so clear the
                # gradients for it to skip every parameter (its state stays finite).
                optimizer.zero_grad(set_to_none=True)
    return hook


def _post_hook(ref: weakref.ref[Newt]) -> Callable[..., None]:
    def hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        newt = ref()
        if newt is not None:
            newt.core.after_inner_step(lookahead=True)
            newt._stage = "stepped"
    return hook


class Newt(LRScheduler):
    r"""Learning-rate scheduler that learns each group's α with a Newton step.

    $$
    \theta_{t+1} = \theta_t - \alpha_t u_t, \qquad
    \alpha_{t+1} = \operatorname{clamp}\Big(\alpha_t
        \big(1 + \gamma\,\tfrac{B_t}{C_t}\big),\
        \text{lr\_clamp\_min},\ \text{lr\_clamp\_max}\Big)
    $$

    where

    - $\alpha_t u_t = \theta_t - \theta_{t+1}$ is the step the wrapped
      ``optimizer`` just took (α is its group's ``lr``);
    - $B_t = \langle\nabla L(\theta_{t+1}), \theta_t - \theta_{t+1}\rangle$
      comes from the lookahead that `step_setup` runs on the same batch,
      and $A_t$ is the same product with $\nabla L(\theta_t)$;
    - $C_t = A_t - B_t$ (``use_alternate_approx=False``) or
      $2(L(\theta_t) - L(\theta_{t+1}) - B_t)$ (``True``);
    - the seed's safeguards apply (`newt.presets.SEED`): the factor is
      clamped to [0, 1.05], capped at 0.1 when the lookahead loss is higher
      than the current one, and 1 when $C_t$ is not positive.

    One α per parameter group. Parameters without a gradient are skipped.
    θ_t is recorded by an optimizer step pre-hook into buffers that ``Newt``
    owns; the inner optimizer's state is never touched. With several groups
    and ``use_alternate_approx=True``, the loss difference is that of the whole
    step, all groups together; the gradient difference is per group.

    Args:
        optimizer: the optimizer whose ``lr`` is learned (any
            ``torch.optim.Optimizer``; not ``differentiable=True``, and not a
            `newt.NewtOptimizer`, which learns α by itself).
        config: a `NewtConfig` with the model and loss criterion.
        last_epoch: as for every ``LRScheduler``; leave it at -1 and resume
            with `load_state_dict` instead.

    Examples:
        >>> import torch
        >>> from newt import Newt, NewtConfig
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(3, 1)
        >>> loss_criterion = torch.nn.MSELoss()
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> newt = Newt(optimizer, NewtConfig(model=model, loss_criterion=loss_criterion))
        >>> x, y = torch.randn(32, 3), torch.randn(32, 1)
        >>> for _ in range(5):
        ...     optimizer.zero_grad()
        ...     loss = loss_criterion(model(x), y)
        ...     loss.backward()
        ...     optimizer.step()
        ...     newt.step_setup(loss, x, y)
        ...     newt.step()
        >>> newt.get_last_lr()[0] != 0.01
        True

    References:
        G. Retsinas, G. Sfikas, P. Filntisis, P. Maragos. Newton-Based
        Trainable Learning Rate. ICASSP 2023.
    """

    def __init__(self, optimizer: Optimizer, config: NewtConfig, last_epoch: int = -1) -> None:
        if isinstance(optimizer, NewtOptimizer):
            raise TypeError(
                "Newt(optimizer=...) got a NewtOptimizer, which already learns α; use either "
                "NewtOptimizer(inner) or Newt(inner, config), not both"
            )
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                "Newt(optimizer=...) must be a torch.optim.Optimizer, got "
                f"{type(optimizer).__name__}"
            )
        if not isinstance(config, NewtConfig):
            raise TypeError(f"Newt(config=...) must be a NewtConfig, got {type(config).__name__}")
        if not isinstance(config.model, nn.Module):
            raise TypeError(
                "NewtConfig(model=...) must be a torch.nn.Module, got "
                f"{type(config.model).__name__}; "
                "step_setup runs the model again at the new parameters"
            )
        if not callable(config.loss_criterion):
            raise TypeError(
                "NewtConfig(loss_criterion=...) must be callable as loss_criterion(model(x), y), "
                f"got {type(config.loss_criterion).__name__}"
            )
        NewtOptions.resolve("seed", config.newt_options(), where="NewtConfig",
                            names=_CONFIG_NAMES)
        for i, group in enumerate(optimizer.param_groups):
            if group.get("differentiable", False):
                raise RuntimeError(
                    f"Newt: param_groups[{i}] has differentiable=True, which is not supported; "
                    "build the optimizer with differentiable=False"
                )
        self.config = config
        self.core = NewtOptimizer(optimizer, preset="seed", **config.newt_options())
        """The core that learns α: the seed's rule, driven by the optimizer's step hooks."""
        self._stage = "idle"  # idle → stepped (optimizer.step) → ready (step_setup) → idle
        self._taken = False
        self._updated: list[bool] = []
        self._warned_no_setup = False
        ref = weakref.ref(self)
        self._hooks = [optimizer.register_step_pre_hook(_pre_hook(ref)),
                       optimizer.register_step_post_hook(_post_hook(ref))]
        super().__init__(optimizer, last_epoch)
        for group in optimizer.param_groups:
            # Newt owns lr (it is α): no other schedule scales it, so the core must not
            # read the "initial_lr" an LR scheduler leaves behind as one.
            group.pop("initial_lr", None)

    def __del__(self) -> None:
        # Unhook from the optimizer (the seed's example builds a new Newt every epoch).
        for handle in getattr(self, "_hooks", ()):
            handle.remove()

    def _moved(self) -> list[Tensor]:
        """The parameters the inner step moved (those with a gradient), in group order."""
        return [p for g in self.optimizer.param_groups for p in g["params"]
                if p.requires_grad and p.grad is not None]

    # ------------------------------------------------------------------ the seed's API
    def step_setup(self, loss: Tensor, x: Any, y: Any) -> None:
        """Run the lookahead at θ_{t+1} on the batch ``(x, y)`` that gave ``loss``.

        Call it right after ``optimizer.step()``. It evaluates
        ``loss_criterion(model(x), y)`` at the new parameters and its gradient
        (with ``torch.autograd.grad``: the ``.grad`` fields are left as they
        are), and hands both to the core, which decides α (and undoes a step
        whose lookahead is not finite) now; `step` then publishes the new α.
        The model's buffers are restored afterwards, so BatchNorm running
        statistics are updated once per step. The model stays in its mode:
        dropout draws fresh masks.

        Args:
            loss: the loss at θ_t on this batch (the one ``backward()`` was called on).
            x: the model input of this batch.
            y: the target of this batch.
        """
        if self._stage != "stepped":
            raise RuntimeError(
                "Newt.step_setup() must follow optimizer.step(): call optimizer.step() first, "
                "then newt.step_setup(loss, x, y), then newt.step()"
            )
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(
                "Newt.step_setup(loss=...) must be the scalar loss tensor of this batch, got "
                f"{type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
            )
        self._stage = "ready"
        if not self._taken:  # a non-finite gradient: the step was skipped
            self._updated = [True] * len(self.optimizer.param_groups)
            return
        model, criterion = self.config.model, self.config.loss_criterion
        assert model is not None and criterion is not None  # checked in __init__
        moved = self._moved()
        buffers = list(model.buffers())
        with torch.no_grad():
            saved = [b.clone() for b in buffers]
        try:
            with torch.enable_grad():
                lookahead_loss = criterion(model(x), y)
                grads = (torch.autograd.grad(lookahead_loss, moved, allow_unused=True)
                         if moved else ())
        except BaseException:
            self.core.abandon_step()
            raise
        finally:
            with torch.no_grad():
                for b, s in zip(buffers, saved, strict=True):
                    b.copy_(s)  # the lookahead must not move BatchNorm running statistics
        with torch.no_grad():
            self.core.after_lookahead(loss, lookahead_loss, list(grads))
        self._updated = [any(p.requires_grad and p.grad is not None for p in g["params"])
                         for g in self.optimizer.param_groups]

    def get_lr(self) -> list[float | Tensor]:
        """The α of each group, as the core left it (the current one where it learned nothing)."""
        current = [g["lr"] for g in self.optimizer.param_groups]
        current = [lr.clone() if isinstance(lr, Tensor) else lr for lr in current]
        if self._is_initial:
            return current
        if self._stage != "ready":
            if not self._warned_no_setup:
                warnings.warn(
                    "Newt.step() was called without optimizer.step() and "
                    "newt.step_setup(loss, x, y) before it; the learning rates are left unchanged",
                    RuntimeWarning, stacklevel=3,
                )
                self._warned_no_setup = True
            self._updated = [False] * len(current)
        self._stage = "idle"
        return current

    def last_safeguards(self) -> list[str | None]:
        """Per group, the `newt.rule.Safeguard` that decided the last α (lower case).

        ``None`` for a group whose α was not updated at the last `step`.
        """
        stats = self.core.last_stats()
        return [s.safeguard if updated and s is not None else None
                for s, updated in zip(stats, self._updated, strict=False)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Counters, learning rates, the config's numbers and the core's state.

        Plain numbers, lists, dicts keyed by index and tensors only: no model,
        no loss object, no ``Parameter`` keys; ``torch.load(weights_only=True)``
        reads it back. A checkpoint taken between ``optimizer.step()`` and
        ``step_setup`` resumes after that step, as if it had had no lookahead.
        """
        core = {k: v for k, v in self.core.state_dict().items() if k != "inner"}
        return {
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "base_lrs": list(self.base_lrs),
            "_last_lr": list(self._last_lr),
            "config": {name: getattr(self.config, name) for name in _CONFIG_FIELDS},
            "stage": "ready" if self._stage == "ready" else "idle",
            "updated": list(self._updated),
            "core": core,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a `state_dict`; the config's model and loss criterion are kept."""
        missing = {"last_epoch", "_step_count", "base_lrs", "_last_lr", "config",
                   "core"} - set(state_dict)
        if missing:
            raise ValueError(
                f"Newt.load_state_dict: missing {sorted(missing)}; this is not a Newt state_dict "
                "of this version (newt 0.1.0 kept another format, and the seed's Newt saved "
                "the model object instead; neither can be resumed)"
            )
        groups = len(self.optimizer.param_groups)
        if len(state_dict["_last_lr"]) != groups:
            raise ValueError(
                f"Newt.load_state_dict: the state has {len(state_dict['_last_lr'])} parameter "
                f"group(s) but the optimizer has {groups}"
            )
        self.last_epoch = state_dict["last_epoch"]
        self._step_count = state_dict["_step_count"]
        self.base_lrs = list(state_dict["base_lrs"])
        self._last_lr = list(state_dict["_last_lr"])
        self.config = dataclasses.replace(self.config, **state_dict["config"])
        self.core.load_state_dict({**state_dict["core"], "inner": self.optimizer.state_dict()})
        options = NewtOptions.resolve("seed", self.config.newt_options(), where="NewtConfig",
                                      names=_CONFIG_NAMES).as_dict()
        for group in self.optimizer.param_groups:
            group["newt"] = dict(options)  # the config's numbers win
        self._stage = state_dict.get("stage", "idle")
        self._updated = list(state_dict.get("updated", [False] * groups))
