"""Test-wide settings: a deterministic hypothesis profile, so CI runs are repeatable."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# derandomize: every run draws the same examples (CI must not flake on a rare draw);
# deadline off: shared CI machines stall at random, which says nothing about the code.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
