"""newt's per-group state: a typed record, and its plain-dict form for ``state_dict``.

A group's state is the controller's own state (`newt.rule.RuleState`, or
`newt.rule.GatedState` with ``controller="gated"``; with ``"auto"`` either, the type
being the mode it is in), the
learned α where an LR scheduler owns the group's ``lr``, and the record of
the last decision that `newt.NewtOptimizer.last_stats` reports. It becomes
a dict of tensors only in ``state_dict`` (loadable with
``torch.load(weights_only=True)``) and is rebuilt from one in
``load_state_dict``.

Its scalars are Python numbers when the group's parameters are on the CPU (the
host, where reading a value is free) and 0-d tensors on the parameters' device
otherwise (`newt.scalars`); the ``state_dict`` form is the same for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from newt import rule
from newt.rule import Decision, GatedState, RuleState, Safeguard
from newt.scalars import Scalar

__all__ = ["FORMAT_VERSION", "GroupState", "Record", "check_shapes"]

FORMAT_VERSION = 2
"""The ``state_dict`` format of newt ≥ 0.2 (0.1.0 kept string keys in the group dicts)."""


class Record(NamedTuple):
    """The last decision reported by `newt.NewtOptimizer.last_stats` (0-d tensors)."""

    used_alpha: Scalar
    lookahead_slope: Scalar
    curvature: Scalar
    loss: Scalar
    lookahead_loss: Scalar
    safeguard: Scalar

    @classmethod
    def empty(cls, device: torch.device | None) -> Record:
        """Nothing reported yet (host scalars for ``device=None``)."""
        if device is None:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan,
                       int(Safeguard.FIRST_STEP))
        nan = torch.full((), math.nan, dtype=torch.float64, device=device)
        return cls(nan, nan, nan, nan, nan,
                   torch.full((), int(Safeguard.FIRST_STEP), dtype=torch.int64, device=device))

    def merged(self, decision: Decision) -> Record:
        """This record, replaced by ``decision`` where the decision is to be reported."""
        new = Record(decision.used_alpha, decision.lookahead_slope, decision.curvature,
                     decision.loss, decision.lookahead_loss, decision.safeguard)
        if not isinstance(decision.report, Tensor):  # host scalars
            return Record(*(float(x) for x in new[:5]), int(new.safeguard)) \
                if decision.report else self
        return Record(*(torch.where(decision.report, n.to(o.dtype), o)
                        for n, o in zip(new, self, strict=True)))


@dataclass
class GroupState:
    """Everything newt keeps for one parameter group besides the θ_t snapshots."""

    rule: RuleState | GatedState
    """The controller's state."""
    record: Record
    """The last reported decision."""
    alpha: Scalar | None = None
    """The learned α while an LR scheduler owns ``group["lr"]`` (else α is ``group["lr"]``)."""

    @property
    def host(self) -> bool:
        """The scalars are Python numbers (the group's parameters are on the CPU)."""
        return not isinstance(self.rule.slope, Tensor)

    @property
    def device(self) -> torch.device:
        """Where the scalars live (the CPU for host scalars)."""
        slope = self.rule.slope
        return slope.device if isinstance(slope, Tensor) else torch.device("cpu")

    @classmethod
    def new(cls, device: torch.device | None, controller: str = "newton") -> GroupState:
        """The state before the first step of ``controller`` (``"newton"``, ``"gated"`` or
        ``"auto"``),
        of host scalars for ``device=None``, else of 0-d tensors on ``device``."""
        state = (rule.gated_init(device) if controller == "gated" else
                 rule.auto_init(device) if controller == "auto" else rule.init(device))
        return cls(rule=state, record=Record.empty(device))

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors keyed by field name (for ``state_dict``)."""
        out: dict[str, Any] = {
            "rule": {k: _tensor(v) for k, v in self.rule._asdict().items()},
            "record": {k: _tensor(v) for k, v in self.record._asdict().items()},
        }
        if self.alpha is not None:
            out["alpha"] = _tensor(self.alpha)
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any], device: torch.device | None,
                  where: str) -> GroupState:
        """Rebuild from `to_dict`'s output: host scalars for ``device=None``, else 0-d
        tensors on ``device``."""

        def load(value: Tensor) -> Scalar:
            return value.item() if device is None else value.to(device)

        try:
            kind = GatedState if "phase" in state["rule"] else RuleState
            saved = state["rule"]
            # fields added later have defaults: a checkpoint without them still loads
            rule_state: RuleState | GatedState = kind(**{
                k: load(saved[k] if k in saved or k not in kind._field_defaults
                        else _tensor(kind._field_defaults[k])) for k in kind._fields})
            record = Record(**{k: load(state["record"][k]) for k in Record._fields})
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"NewtOptimizer.load_state_dict: {where} has no valid newt state ({error!r}); "
                "the state_dict was not saved by this version of newt"
            ) from None
        alpha = state.get("alpha")
        return cls(rule=rule_state, record=record,
                   alpha=None if alpha is None else load(alpha))


def _tensor(value: Scalar) -> Tensor:
    """A state value as the tensor ``state_dict`` stores (float64, int64 or bool)."""
    if isinstance(value, Tensor):
        return value.clone()
    dtype = (torch.bool if isinstance(value, bool) else torch.int64 if isinstance(value, int)
             else torch.float64)
    return torch.tensor(value, dtype=dtype)


def check_shapes(state_dict: dict[str, Any], param_groups: list[dict[str, Any]]) -> None:
    """Refuse a `newt.NewtOptimizer` state_dict whose groups or tensors do not fit
    ``param_groups`` (a checkpoint of another model), naming the group and parameter."""
    groups = state_dict.get("param_groups", [])
    if len(groups) != len(param_groups):
        raise ValueError(
            f"NewtOptimizer.load_state_dict: the state_dict has {len(groups)} parameter "
            f"group(s), this optimizer {len(param_groups)}"
        )
    inner_state = state_dict["inner"].get("state", {})
    for gi, (saved, group) in enumerate(zip(groups, param_groups, strict=True)):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"NewtOptimizer.load_state_dict: param_groups[{gi}] has "
                f"{len(saved['params'])} parameters in the state_dict, "
                f"{len(group['params'])} here"
            )
        for pi, (key, p) in enumerate(zip(saved["params"], group["params"], strict=True)):
            for where, entry in (("newt", state_dict.get("state", {}).get(key, {})),
                                 ("inner", inner_state.get(key, {}))):
                for name, value in entry.items():
                    # newt's snapshot is θ_t itself; an inner state tensor with the
                    # parameter's size is one of its moments (Adafactor's factors are not).
                    if isinstance(value, Tensor) and value.shape != p.shape and (
                            where == "newt" or (value.dim() > 0 and value.numel() == p.numel())):
                        raise ValueError(
                            f"NewtOptimizer.load_state_dict: param_groups[{gi}] parameter "
                            f"{pi}: the saved {where} state {name!r} has shape "
                            f"{tuple(value.shape)} but the parameter has "
                            f"{tuple(p.shape)}; the checkpoint is from another model"
                        )
