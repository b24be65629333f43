"""The runtime state of one backend inside one scheduler (private, mutable)."""

from __future__ import annotations

import math
from collections import deque

from lbalgo._counter import Tally
from lbalgo._slowstart import RAMP_STEPS
from lbalgo.backend import Backend

__all__ = ["Slot"]


class Slot(Tally):
    """Runtime state of one backend key inside one scheduler: its counts (a
    :class:`~lbalgo._counter.Tally`), health mark, slow-start ramp and passive-health state.

    ``live`` turns ``False`` when an update removes the key, so a lease that outlives its
    backend is released nowhere. O(1) memory until a failure is reported.
    """

    __slots__ = (
        "backend",
        "fail_times",
        "failures",
        "key",
        "live",
        "notify",
        "probation",
        "ramp_start",
        "ramp_step",
        "suspended_until",
        "up",
        "weight",
    )

    def __init__(self, backend: Backend, notify: bool = False) -> None:
        super().__init__()
        self.backend = backend
        self.key = backend.key
        self.weight = backend.weight
        self.up = True
        self.live = True
        self.failures = 0
        self.fail_times: deque[float] | None = None
        self.suspended_until = -math.inf
        self.probation = False
        # a release must reach the scheduler under its lock: the algorithm counts releases
        # itself, or passive health awaits this backend's trial
        self.notify = notify
        self.ramp_start: float | None = None
        self.ramp_step = RAMP_STEPS

    def __repr__(self) -> str:
        return f"<Slot {self.key} up={self.up} open={self.open}>"
