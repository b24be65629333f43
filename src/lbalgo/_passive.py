"""Passive health, as nginx's ``max_fails`` / ``fail_timeout``: failures reported by the
proxy suspend a backend for a while, then one trial request decides whether it is back.

:class:`PassiveHealth` keeps the rule and, in a heap, when each suspension lifts, so a
failure, a lift or a trial costs O(log n) and tells the scheduler which one backend changed.
A backend's own passive state lives on the backend's state object (:class:`Watched`), and
is touched only when a failure is reported: a backend nobody reported a failure of costs
nothing here, on any path.
"""

from __future__ import annotations

import math
from collections import deque
from heapq import heappop, heappush
from typing import Protocol

__all__ = ["PassiveHealth", "Watched"]


class Watched(Protocol):
    """What passive health keeps on a backend's state: failure times inside the window
    (``None`` until the first failure), the end of its suspension (``-inf``: healthy; a
    past time: its next pick is its trial), whether that trial is in flight, and whether
    a release must be reported (``notify``)."""

    fail_times: deque[float] | None
    suspended_until: float
    probation: bool
    notify: bool


class PassiveHealth:
    """nginx's rule for one scheduler: ``max_fails`` failures within a sliding
    ``fail_timeout`` window suspend a backend for ``fail_timeout``; then ONE trial request
    goes to it; its success clears the failures, any failure suspends it again.

    Methods return whether the backend's eligibility changed, so the scheduler updates
    only that backend. ``next_lift`` is the earliest time a suspension lifts.

    >>> class State:
    ...     fail_times, suspended_until, probation, notify = None, -math.inf, False, False
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

    __slots__ = ("_heap", "_seq", "fail_timeout", "max_fails", "next_lift")

    def __init__(self, max_fails: int, fail_timeout: float) -> None:
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self._heap: list[tuple[float, int, Watched]] = []
        self._seq = 0  # breaks ties between equal lift times without comparing states
        self.next_lift = math.inf

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
        state.notify = False
        self._suspend(state, now)
        return True

    def picked(self, state: Watched, now: float) -> bool:
        """A pick of a backend whose suspension lifted: it is its trial. The backend takes
        nothing else for ``fail_timeout`` while the outcome is awaited; ``True`` (its
        eligibility changed). O(log n). Call only when ``suspended_until`` is not ``-inf``."""
        state.probation = True
        state.notify = True  # its release decides
        self._suspend(state, now)
        return True

    def success(self, state: Watched) -> bool:
        """A release without failure; ``True`` if it was the trial, which clears the
        backend (the scheduler then ramps it like one marked up). O(1)."""
        if not state.probation:
            return False
        self.clear(state)
        return True

    @staticmethod
    def clear(state: Watched) -> None:
        """Forget every failure of ``state`` (the trial passed, or it is alone). O(1)."""
        if state.fail_times:
            state.fail_times.clear()
        state.probation = False
        state.notify = False
        state.suspended_until = -math.inf

    def lifted(self, now: float) -> list[Watched]:
        """The backends whose suspension ended by ``now`` (each may now take its trial),
        O(log n) each."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            until, _, state = heappop(heap)
            if state.suspended_until == until:
                out.append(state)
        self.next_lift = heap[0][0] if heap else math.inf
        return out

    def _suspend(self, state: Watched, now: float) -> None:
        until = now + self.fail_timeout
        state.suspended_until = until
        self._seq += 1
        heappush(self._heap, (until, self._seq, state))
        if until < self.next_lift:
            self.next_lift = until

    def _check(self) -> None:
        """Assert the invariant: every suspension still in force has its heap entry."""
        pending = {id(s) for until, _, s in self._heap if s.suspended_until == until}
        for until, _, state in self._heap:
            assert state.suspended_until <= until or id(state) in pending
        assert self.next_lift <= (self._heap[0][0] if self._heap else math.inf)
