"""Test configuration: Hypothesis profiles and a per-test torch seed.

Select a Hypothesis profile with ``HYPOTHESIS_PROFILE=ci`` (the default: derandomized,
few examples, no deadline) or ``HYPOTHESIS_PROFILE=dev`` (random, more examples).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_and_defaults():
    """Every test starts from the same global RNG state and default dtype."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
