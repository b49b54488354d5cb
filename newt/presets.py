"""Named sets of newt's options.

``DEFAULT`` is what `newt.NewtOptimizer` uses unless told otherwise;
its constants were chosen by measurement (``benchmarks/``, ``docs/benchmarks.md``).
Its controller is ``"auto"`` (the gated controller on mini-batches, the Newton rule
with these constants on full batches; ``docs/design/alpha.md``, H15 and H36).
``SEED`` reproduces the rule of the seed project (``dscamiss/newt``): a
linear damped Newton factor with γ = 1e-3, the factor clamped to [0, 1.05],
×0.1 when the lookahead loss rises, no change on non-positive curvature,
α clamped to [1e-7, 1].
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = ["DEFAULT", "PRESETS", "SEED"]

DEFAULT: MappingProxyType[str, Any] = MappingProxyType(
    {
        "curvature": "gradient",
        "slope": "next_batch",
        "reject": True,
        "update": "log",
        "gamma": 0.5,
        "eps": 1e-6,
        "lr_min": 1e-8,
        "lr_max": 10.0,
        "factor_min": 0.5,
        "factor_max": 4.0,
        "backoff": 0.5,
        "nonconvex_factor": 1.25,
        "nonfinite_factor": 0.1,
        "controller": "auto",
    }
)

SEED: MappingProxyType[str, Any] = MappingProxyType(
    {
        "curvature": "gradient",
        "slope": "same_batch",
        "reject": False,
        "update": "linear",
        "gamma": 1e-3,
        "eps": 1e-9,
        "lr_min": 1e-7,
        "lr_max": 1.0,
        "factor_min": 0.0,
        "factor_max": 1.05,
        "backoff": 0.1,
        "nonconvex_factor": 1.0,
        "nonfinite_factor": 0.1,
        "controller": "newton",
    }
)

PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {"default": DEFAULT, "seed": SEED}
)
