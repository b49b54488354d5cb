"""The methods compared, as small picklable specs, and how to build each optimizer.

A :class:`Method` names an optimizer, the inner optimizer whose tuned
fixed-LR baseline it is judged against, how it takes a step (its ``mode``)
and which hyperparameter the sweep varies (``swept``: the initial learning
rate, or the peer's equivalent: Prodigy's and D-Adapt's ``d0``, DoG's
``reps_rel``).

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

import importlib.util
import json
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
    "Method",
    "catalog",
    "effective_lr",
    "make_optimizer",
    "missing_peers",
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

# Learning-rate-free peers: name -> (module, class, swept argument, inner baseline, fixed kwargs).
PEERS: dict[str, tuple[str, str, str, str, dict[str, Any]]] = {
    "Prodigy": ("prodigyopt", "Prodigy", "d0", "Adam", {"lr": 1.0}),
    "D-Adapt Adam": ("dadaptation", "DAdaptAdam", "d0", "Adam", {"lr": 1.0}),
    "DoG": ("dog", "DoG", "reps_rel", "SGD", {"lr": 1.0}),
    "SF-AdamW": ("schedulefree", "AdamWScheduleFree", "lr", "AdamW", {"warmup_steps": 0}),
}

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
    """

    name: str
    kind: str
    inner: str | None
    mode: str = "backward"
    swept: str = "lr"
    preset: str = "default"
    options: tuple[tuple[str, Any], ...] = field(default=())
    variant: str = ""

    @property
    def deterministic_only(self) -> bool:
        return self.mode in ("reuse", "lbfgs")

    @property
    def newt_mode(self) -> str:
        """newt's mode as a user sees it: ``closure``, ``free`` or ``reuse``."""
        return "free" if self.mode == "backward" else self.mode

    def key(self) -> str:
        """A string that identifies the method and its options (for caching runs)."""
        return self.name + (json.dumps(dict(self.options), sort_keys=True) if self.options else "")


def _newt(inner: str, mode: str, preset: str, options: dict[str, Any], variant: str) -> Method:
    label = "newt" + ("-seed" if preset == "seed" else "") + (f":{variant}" if variant else "")
    return Method(
        name=f"{inner}+{label}[{mode}]",
        kind="newt",
        inner=inner,
        mode="backward" if mode == "free" else mode,
        preset=preset,
        options=tuple(sorted(options.items())),
        variant=variant,
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
) -> list[Method]:
    """Every method, in table order: per inner optimizer, fixed LR, newt, peers; then L-BFGS.

    newt's closure-free mode is left out for options that need a closure
    (``curvature="loss"``, ``slope="same_batch"``, as in the seed preset).

    Args:
        newt_options: overrides of newt's options for the default preset.
        variants: extra newt variants, label -> options (on top of ``newt_options``).
        inners, modes, presets: restrict the inner optimizers, newt's modes and presets.
    """
    newt_options = dict(newt_options or {})
    methods: list[Method] = []
    for inner in inners:
        methods.append(Method(name=inner, kind="fixed", inner=inner))
        newt_rows = [(preset, newt_options if preset == "default" else {}, "")
                     for preset in presets]
        newt_rows += [("default", {**newt_options, **extra}, label)
                      for label, extra in (variants or {}).items()]
        for preset, options, label in newt_rows:
            methods.extend(_newt(inner, mode, preset, options, label) for mode in modes
                           if mode != "free" or _closure_free_ok(preset, options))
        if inner == "SGD":
            methods.append(Method(name="SGD-HD", kind="hd", inner="SGD"))
        for peer, (_, _, swept, peer_inner, _) in PEERS.items():
            if peer_inner == inner:
                methods.append(Method(name=peer, kind="peer", inner=inner, swept=swept))
    methods.append(Method(name="L-BFGS", kind="lbfgs", inner=None, mode="lbfgs", swept=""))
    return methods


def missing_peers() -> list[str]:
    """Peers whose package is not installed (they are skipped, with a note)."""
    return [name for name, (module, *_) in PEERS.items()
            if importlib.util.find_spec(module) is None]


def make_optimizer(method: Method, params: Iterable[torch.Tensor], x: float) -> Optimizer:
    """Build ``method``'s optimizer with its swept hyperparameter set to ``x``."""
    params = list(params)
    if method.kind == "lbfgs":
        return torch.optim.LBFGS(params, lr=1.0, history_size=20, tolerance_grad=1e-12,
                                 tolerance_change=1e-16, line_search_fn="strong_wolfe")
    if method.kind == "hd":
        return SGDHD(params, lr=x, hypergrad_lr=HD_BETA)
    if method.kind == "peer":
        module, cls, swept, _, fixed = PEERS[method.name]
        optimizer_class = getattr(importlib.import_module(module), cls)
        return optimizer_class(params, **{**fixed, swept: x})
    inner_class, fixed = INNER[method.inner]
    inner = inner_class(params, lr=x, **fixed)
    if method.kind == "fixed":
        return inner
    return newt.NewtOptimizer(inner, preset=method.preset,
                              reuse_lookahead=method.mode == "reuse", **dict(method.options))


def effective_lr(optimizer: Optimizer) -> float:
    """The step size the optimizer is using now (first group): α, d·lr or η."""
    group = optimizer.param_groups[0]
    if "d" in group:  # Prodigy, D-Adaptation: the step is d·lr
        return float(group["d"]) * float(group["lr"])
    if "eta" in group:  # DoG: one η per parameter
        eta = group["eta"]
        return float(eta[0]) if isinstance(eta, (list, tuple)) else float(eta)
    return float(group["lr"])
