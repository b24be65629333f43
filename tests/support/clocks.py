"""Clocks for tests: timed features are tested by moving time by hand, never by sleeping."""

from __future__ import annotations


class FakeClock:
    """A clock the test moves by hand (``clock.now += 5``), injected as ``clock=``: timed
    features (slow start, passive health, sticky expiry) are tested without sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
