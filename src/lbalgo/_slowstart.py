"""Slow start: a backend that joins ramps its effective weight up in equal steps of time.

:class:`Ramps` keeps one scheduler's ramps: when each started and, in a heap, when each one's
next step is due, so a step costs O(log n) and a scheduler learns exactly which backend's
weight moved (HAProxy's ``update_server_eweight`` takes the one server too).
"""

from __future__ import annotations

import math
from typing import Protocol

from lbalgo._lazyheap import LazyHeap

__all__ = ["RAMP_STEPS", "Rampable", "Ramps"]

RAMP_STEPS = 32
"""Steps of a slow-start ramp, and the fine scale of effective weights while one is on.

A ramping backend's effective weight is ``weight * k / RAMP_STEPS``, ``k`` going from 1 to
``RAMP_STEPS`` in equal steps of time, so every weight, 1 included, ramps through the same
32 steps from 1/32 of its weight. Schedulers compare such weights as integers in units of
``1 / RAMP_STEPS`` (a full weight ``w`` is ``w * RAMP_STEPS``): scaling every weight by the
same factor changes no ratio, so the choice stays exact. 32 keeps a step at about 1 s of the
shortest ramp the cloud product allows (30 s) and the fine weights small (at most 3200); a
power of two keeps ``k / RAMP_STEPS`` exact as a float. HAProxy scales weights the same way
(``BE_WEIGHT_SCALE = 16``) for the same reason.
"""


class Rampable(Protocol):
    """What a ramp needs of a backend's state: when its ramp started (``None``: full
    weight) and the step last reported."""

    ramp_start: float | None
    ramp_step: int


class Ramps:
    """The slow-start ramps of one scheduler's backends (``seconds`` > 0).

    :meth:`start` begins a ramp and :meth:`stop` drops one (O(log n) and O(1): each ramp
    has one entry in a :class:`~lbalgo._lazyheap.LazyHeap` of step times), :meth:`due`
    returns the backends whose step moved by ``now`` (O(log n) each), :meth:`step` says
    where a ramp stands; ``active`` counts ramps in progress, ``next_due`` is the earliest
    time a step falls due.

    >>> class State:
    ...     ramp_start, ramp_step = None, RAMP_STEPS
    >>> ramps, state = Ramps(32.0), State()
    >>> ramps.start(state, now=0.0)
    >>> ramps.step(state, 0.5), ramps.next_due
    (1, 1.0)
    >>> ramps.due(1.0) == [state], state.ramp_step, ramps.step(state, 1.0)
    (True, 2, 2)
    >>> ramps.due(31.5) == [state], state.ramp_step, ramps.active  # the last step
    (True, 32, 1)
    >>> ramps.due(32.0) == [state], state.ramp_start, ramps.active  # the end
    (True, None, 0)
    """

    __slots__ = ("_steps", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._steps: LazyHeap[Rampable] = LazyHeap()

    @property
    def active(self) -> int:
        """Ramps in progress."""
        return len(self._steps)

    @property
    def next_due(self) -> float:
        """When the next step falls due (``inf``: no ramp in progress)."""
        return self._steps.next_time

    def step(self, state: Rampable, now: float) -> int:
        """Where the ramp of ``state`` stands at ``now``: step 1 at its start, one more
        every ``seconds / RAMP_STEPS``, :data:`RAMP_STEPS` at full weight. O(1)."""
        start = state.ramp_start
        if start is None:
            return RAMP_STEPS
        elapsed = now - start
        if elapsed >= self.seconds:
            return RAMP_STEPS
        return max(1, min(RAMP_STEPS, math.floor(RAMP_STEPS * elapsed / self.seconds) + 1))

    def start(self, state: Rampable, now: float) -> None:
        """Start ramping ``state`` from step 1 at ``now``. O(log n)."""
        state.ramp_start = now
        state.ramp_step = 1
        self._steps.push(now + self.seconds / RAMP_STEPS, state)

    def stop(self, state: Rampable) -> None:
        """End the ramp of ``state`` now (it went down, or left). O(1)."""
        state.ramp_start = None
        state.ramp_step = RAMP_STEPS
        self._steps.discard(state)

    def due(self, now: float) -> list[Rampable]:
        """The states whose step moved by ``now`` (its weight went up a step, or its ramp
        ended: ``seconds`` after its start), in the order they fell due; O(log n) each."""
        moved: list[Rampable] = []
        for state in self._steps.due(now):
            start = state.ramp_start
            assert start is not None  # a stopped ramp has no entry
            if now - start >= self.seconds:
                self.stop(state)  # the ramp is over: reported even if its step stood still
                moved.append(state)
                continue
            step = self.step(state, now)
            if step != state.ramp_step:
                state.ramp_step = step
                moved.append(state)
            # the last step lasts until the ramp ends; float rounding may put a step a hair
            # after its due time: then try again at the next clock reading
            due = start + step * self.seconds / RAMP_STEPS
            self._steps.push(due if due > now else math.nextafter(now, math.inf), state)
        return moved

    def _check(self) -> None:
        """Assert the invariant of the heap of step times."""
        self._steps._check()
