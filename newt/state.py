"""newt's per-group state: a typed record, and its plain-dict form for ``state_dict``.

A group's state is the controller's own state (`newt.rule.RuleState`), the
learned α where an LR scheduler owns the group's ``lr``, and the record of
the last decision that `newt.NewtOptimizer.last_stats` reports. It becomes
a dict of tensors only in ``state_dict`` (loadable with
``torch.load(weights_only=True)``) and is rebuilt from one in
``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from newt import rule
from newt.rule import Decision, RuleState, Safeguard

__all__ = ["FORMAT_VERSION", "GroupState", "Record", "check_shapes"]

FORMAT_VERSION = 2
"""The ``state_dict`` format of newt ≥ 0.2 (0.1.0 kept string keys in the group dicts)."""


class Record(NamedTuple):
    """The last decision reported by `newt.NewtOptimizer.last_stats` (0-d tensors)."""

    used_alpha: Tensor
    lookahead_slope: Tensor
    curvature: Tensor
    loss: Tensor
    lookahead_loss: Tensor
    safeguard: Tensor

    @classmethod
    def empty(cls, device: torch.device) -> Record:
        nan = torch.full((), float("nan"), dtype=torch.float64, device=device)
        return cls(nan, nan, nan, nan, nan,
                   torch.full((), int(Safeguard.FIRST_STEP), dtype=torch.int64, device=device))

    def merged(self, decision: Decision) -> Record:
        """This record, replaced by ``decision`` where the decision is to be reported."""
        new = Record(decision.used_alpha, decision.lookahead_slope, decision.curvature,
                     decision.loss, decision.lookahead_loss, decision.safeguard)
        if decision.report.device.type == "cpu":  # a CPU read is free: no select needed
            return Record(*(n.to(o.dtype) for n, o in zip(new, self, strict=True))) if bool(
                decision.report) else self
        return Record(*(torch.where(decision.report, n.to(o.dtype), o)
                        for n, o in zip(new, self, strict=True)))


@dataclass
class GroupState:
    """Everything newt keeps for one parameter group besides the θ_t snapshots."""

    rule: RuleState
    """The controller's state."""
    record: Record
    """The last reported decision."""
    alpha: Tensor | None = None
    """The learned α while an LR scheduler owns ``group["lr"]`` (else α is ``group["lr"]``)."""

    @classmethod
    def new(cls, device: torch.device) -> GroupState:
        return cls(rule=rule.init(device), record=Record.empty(device))

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors keyed by field name (for ``state_dict``)."""
        out: dict[str, Any] = {
            "rule": {k: v.clone() for k, v in self.rule._asdict().items()},
            "record": {k: v.clone() for k, v in self.record._asdict().items()},
        }
        if self.alpha is not None:
            out["alpha"] = self.alpha.clone()
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any], device: torch.device, where: str) -> GroupState:
        """Rebuild from `to_dict`'s output, on ``device``."""
        try:
            rule_state = RuleState(**{k: state["rule"][k].to(device) for k in RuleState._fields})
            record = Record(**{k: state["record"][k].to(device) for k in Record._fields})
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(
                f"NewtOptimizer.load_state_dict: {where} has no valid newt state ({error!r}); "
                "the state_dict was not saved by this version of newt"
            ) from None
        alpha = state.get("alpha")
        return cls(rule=rule_state, record=record,
                   alpha=None if alpha is None else alpha.to(device))


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
