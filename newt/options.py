"""newt's options: one frozen, validated record per parameter group.

newt's options never share a namespace with the inner optimizer's: a group's
overrides live under the group's ``"newt"`` key,

    torch.optim.AdamW([{"params": head, "lr": 1e-3, "newt": {"gamma": 0.3}}, ...])

and the inner optimizer's own keys (``eps``, ``betas``, ``momentum``, ...) are
never read. `NewtOptions.resolve` merges a preset, the keyword options and a
group's overrides and checks every value once, with a message that names the
argument as the caller wrote it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from newt.presets import PRESETS

__all__ = ["OPTION_NAMES", "NewtOptions"]

Curvature = Literal["gradient", "loss"]
Slope = Literal["next_batch", "same_batch"]
Update = Literal["log", "exp", "linear"]
Controller = Literal["auto", "newton", "gated"]

_CHOICES: dict[str, dict[str, str]] = {
    "controller": {"auto": "the gated controller, or the Newton rule where the gradients "
                           "are deterministic (the default)",
                   "newton": "the damped Newton rule from the first step",
                   "gated": "the significance-gated controller of docs/design/alpha.md"},
    "curvature": {"gradient": "gradient difference", "loss": "loss difference"},
    "slope": {"next_batch": "lookahead slope from the next batch",
              "same_batch": "the seed's same-batch slope"},
    "update": {"log": "damped Newton factor in log α", "exp": "its first-order, noise-unbiased "
               "form", "linear": "the seed's rule"},
}


@dataclass(frozen=True)
class NewtOptions:
    r"""The options of one parameter group (see `newt.NewtOptimizer` for their meaning).

    Build it with `resolve`, which validates; the fields are then plain
    Python values, so the rule can branch on the string options at trace time.
    """

    curvature: Curvature
    slope: Slope
    reject: bool
    update: Update
    gamma: float
    eps: float
    lr_min: float
    lr_max: float
    factor_min: float
    factor_max: float
    backoff: float
    nonconvex_factor: float
    nonfinite_factor: float
    controller: Controller = "auto"

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (what a group's ``"newt"`` entry holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def resolve(
        cls,
        preset: object = "default",
        *overrides: Mapping[str, Any],
        where: str = "NewtOptimizer",
        names: Mapping[str, str] | None = None,
    ) -> NewtOptions:
        """Merge ``preset`` and ``overrides`` (later wins) and validate.

        Args:
            preset: a name in `newt.presets.PRESETS`.
            overrides: mappings of option name to value.
            where: the call site quoted in error messages.
            names: how the caller spells each option, for messages
                (the seed API says ``epsilon`` for ``eps``).

        Raises:
            TypeError: an unknown option or a value of the wrong type.
            ValueError: a value out of range.
        """
        if not isinstance(preset, str):
            raise TypeError(f"{where}(preset={preset!r}): the preset must be a string, one of "
                            f"{list(PRESETS)}")
        if preset not in PRESETS:
            raise ValueError(f"{where}(preset={preset!r}) is unknown; use one of {list(PRESETS)}")
        merged: dict[str, Any] = dict(PRESETS[preset])
        for mapping in overrides:
            if not isinstance(mapping, Mapping):
                raise TypeError(f"{where}: newt's options must be a dict, got "
                                f"{type(mapping).__name__}")
            unknown = sorted(set(mapping) - set(OPTION_NAMES))
            if unknown:
                raise TypeError(f"{where} got unexpected newt option(s) {unknown}; valid "
                                f"options: {list(OPTION_NAMES)}")
            merged.update(mapping)
        checked = _checked(merged, where, names or {})
        if checked["gamma"] == 0.0:
            # γ = 0 turns the learning off: α stays the inner lr, so newt is the inner
            # optimizer bit for bit, whatever the controller (the Newton rule with γ = 0).
            checked["controller"] = "newton"
        return cls(**checked)


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NewtOptions))


def _checked(options: dict[str, Any], where: str, names: Mapping[str, str]) -> dict[str, Any]:
    def fail(name: str, fix: str) -> None:
        raise ValueError(f"{where}({names.get(name, name)}={options[name]!r}): {fix}")

    for name, meanings in _CHOICES.items():
        if not isinstance(options[name], str) or options[name] not in meanings:
            choices = "; ".join(f"{k!r} ({v})" for k, v in meanings.items())
            fail(name, f"use one of {choices}")
    if not isinstance(options["reject"], bool):
        raise TypeError(f"{where}({names.get('reject', 'reject')}={options['reject']!r}): "
                        "reject must be True or False")
    for name in OPTION_NAMES:
        if name in _CHOICES or name == "reject":
            continue
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where}({names.get(name, name)}={value!r}): {name} must be a real "
                            f"number, got {type(value).__name__}")
        options[name] = float(value)  # NumPy scalars included
        if math.isnan(options[name]):
            fail(name, "it must not be NaN")
    if not 0.0 <= options["gamma"] <= 1.0:
        fail("gamma", "the damping must lie in [0, 1] (0 freezes α, 1 is a full Newton step)")
    if options["eps"] < 0:
        fail("eps", "it must be >= 0")
    if not options["lr_min"] > 0:
        fail("lr_min", "it must be > 0 (an α of 0 could never grow again; a group is frozen "
             "by giving it lr=0 instead)")
    if not options["lr_max"] > 0:
        fail("lr_max", "it must be > 0")
    if options["lr_min"] > options["lr_max"]:
        fail("lr_min", f"it must not exceed lr_max={options['lr_max']!r}")
    if not 0 <= options["factor_min"] <= 1:
        fail("factor_min", "it must lie in [0, 1] (α must be allowed to stay)")
    if not options["factor_max"] >= 1:
        fail("factor_max", "it must be >= 1 (α must be allowed to stay)")
    for name in ("backoff", "nonfinite_factor"):
        if not 0 < options[name] <= 1:
            fail(name, "a shrink factor must lie in (0, 1]")
    if not 0 < options["nonconvex_factor"] < math.inf:
        fail("nonconvex_factor", "it must be > 0 and finite")
    return options
