"""The runtime state of one backend inside one scheduler (private, mutable)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lbalgo._accel import compiled
from lbalgo._counter import PyTally
from lbalgo._slowstart import RAMP_STEPS
from lbalgo.backend import Backend

__all__ = ["Slot"]

_hotpath = compiled("_hotpath")

# With the C accelerator, ``backend`` and ``notify`` (the two fields a release reads besides
# the counts) live in its ``SlotBase``, where the C release and lease read them directly.
if TYPE_CHECKING or _hotpath is None:
    _Base = PyTally
    _RELEASE_FIELDS: tuple[str, ...] = ("backend", "notify")
else:
    _Base = _hotpath.SlotBase
    _RELEASE_FIELDS = ()


class Slot(_Base):
    """Runtime state of one backend key inside one scheduler: its counts (a
    :class:`~lbalgo._counter.Tally`), health mark, slow-start ramp and passive-health state.

    ``live`` turns ``False`` when an update removes the key, so a lease that outlives its
    backend is released nowhere. O(1) memory until a failure is reported.
    """

    __slots__ = (
        "accessed",
        "checked",
        "fails",
        "failures",
        "key",
        "live",
        "ramp_start",
        "ramp_step",
        "suspended_until",
        "up",
        "weight",
        *_RELEASE_FIELDS,
    )

    def __init__(self, backend: Backend, notify: bool = False) -> None:
        super().__init__()
        self.backend = backend
        self.key = backend.key
        self.weight = backend.weight
        self.up = True
        self.live = True
        self.failures = 0
        # passive health, nginx's fields: failures not yet cleared, the last failure's time,
        # the last check; suspended_until: -inf, or when it may be picked again
        self.fails = 0
        self.accessed = -math.inf
        self.checked = -math.inf
        self.suspended_until = -math.inf
        # a release must reach the scheduler under its lock: the algorithm counts releases
        # itself, or passive health has failures a success may clear
        self.notify = notify
        self.ramp_start: float | None = None
        self.ramp_step = RAMP_STEPS

    def __repr__(self) -> str:
        return f"<Slot {self.key} up={self.up} open={self.open}>"
