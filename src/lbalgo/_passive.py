"""Passive health, as nginx's ``max_fails`` / ``fail_timeout``: failures reported by the
proxy suspend a backend for a while, then one trial request decides whether it is back.

:class:`PassiveHealth` keeps the rule and, in a lazy heap, when each suspension lifts, so
a failure, a lift or a trial costs O(log n) and tells the scheduler which one backend changed.
A backend's own passive state lives on the backend's state object (:class:`Watched`), and
is touched only when a failure is reported: a backend nobody reported a failure of costs
nothing here, on any path.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

from lbalgo._lazyheap import LazyHeap

__all__ = ["PassiveHealth", "Watched"]


class Watched(Protocol):
    """What passive health keeps on a backend's state: failure times inside the window
    (``None`` until the first failure), the end of its suspension (``-inf``: healthy; a
    past time: its next pick is its trial), and whether that trial is in flight (then the
    scheduler must hear of its release)."""

    fail_times: deque[float] | None
    suspended_until: float
    probation: bool


class PassiveHealth:
    """nginx's rule for one scheduler: ``max_fails`` failures within a sliding
    ``fail_timeout`` window suspend a backend for ``fail_timeout``; then ONE trial request
    goes to it; its success clears the failures, any failure suspends it again.

    Methods return whether the backend's eligibility changed, so the scheduler updates
    only that backend. ``next_lift`` is the earliest time a suspension lifts.

    >>> class State:
    ...     fail_times, suspended_until, probation = None, -math.inf, False
    >>> health, state = PassiveHealth(max_fails=2, fail_timeout=10.0), State()
    >>> health.failure(state, 0.0), health.failure(state, 1.0), health.suspended(state, 5.0)
    (False, True, True)
    >>> health.lifted(11.0) == [state], health.suspended(state, 11.0)
    (True, False)
    >>> health.picked(state, 11.0), state.probation  # the trial: suspended while it runs
    (True, True)
    >>> health.success(state), state.suspended_until
    (True, -inf)
    """

    __slots__ = ("_lifts", "fail_timeout", "max_fails")

    def __init__(self, max_fails: int, fail_timeout: float) -> None:
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self._lifts: LazyHeap[Watched] = LazyHeap()

    @property
    def next_lift(self) -> float:
        """When the next suspension lifts (``inf``: none)."""
        return self._lifts.next_time

    @staticmethod
    def suspended(state: Watched, now: float) -> bool:
        """Whether ``state`` may take no pick at ``now``. O(1)."""
        return now < state.suspended_until

    def failure(self, state: Watched, now: float) -> bool:
        """Record one failure at ``now``; ``True`` if it suspends the backend. O(log n)."""
        if state.suspended_until == -math.inf:
            # failures count within a sliding fail_timeout window; as in nginx, successes
            # in between do not erase them
            window = state.fail_times
            if window is None:
                window = state.fail_times = deque()
            while window and window[0] <= now - self.fail_timeout:
                window.popleft()
            window.append(now)
            if len(window) < self.max_fails:
                return False
            window.clear()
        # max_fails reached, or any failure of a suspended backend or of its trial (nginx
        # restarts fail_timeout on each): no picks for fail_timeout from now
        state.probation = False
        self._suspend(state, now)
        return True

    def picked(self, state: Watched, now: float) -> bool:
        """A pick of a backend whose suspension lifted: it is its trial. The backend takes
        nothing else for ``fail_timeout`` while the outcome is awaited; ``True`` (its
        eligibility changed). O(log n). Call only when ``suspended_until`` is not ``-inf``."""
        state.probation = True  # its release decides
        self._suspend(state, now)
        return True

    def success(self, state: Watched) -> bool:
        """A release without failure; ``True`` if it was the trial, which clears the
        backend (the scheduler then ramps it like one marked up). O(1)."""
        if not state.probation:
            return False
        self.clear(state)
        return True

    def clear(self, state: Watched) -> None:
        """Forget every failure of ``state`` (the trial passed, or it is alone). O(1)."""
        if state.fail_times:
            state.fail_times.clear()
        state.probation = False
        state.suspended_until = -math.inf
        self._lifts.discard(state)

    def lifted(self, now: float) -> list[Watched]:
        """The backends whose suspension ended by ``now`` (each may now take its trial),
        O(log n) each."""
        return self._lifts.due(now)

    def _suspend(self, state: Watched, now: float) -> None:
        state.suspended_until = now + self.fail_timeout
        self._lifts.push(state.suspended_until, state)

    def _check(self) -> None:
        """Assert the invariant of the heap of lifts."""
        self._lifts._check()
