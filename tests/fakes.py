"""Compatibility name for test modules written before tests/support/: use support.clocks."""

from support.clocks import FakeClock

__all__ = ["FakeClock"]
