"""Compatibility name for test modules written before tests/support/: use support.threads."""

from support.threads import run_threads

__all__ = ["run_threads"]
