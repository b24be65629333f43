"""Passive health, as nginx's ``max_fails`` / ``fail_timeout``, with nginx's exact rule:
failures reported by the proxy put a backend out for a while, then one trial request decides
whether it is back.

The rule is nginx's code (``ngx_http_upstream_get_peer`` and
``ngx_http_upstream_free_round_robin_peer``), not a paraphrase of its documentation, so a
scheduler fed nginx's clock follows a real nginx failure for failure:

- each failure counts (``fails``) and is a *check* (``accessed = checked = now``);
- a backend with ``fails >= max_fails`` is out while ``now - checked <= fail_timeout``;
- the first pick more than ``fail_timeout`` after the last check is a check too
  (``checked = now``); for a backend that was out, it is its one trial, and it is out again
  until more than ``fail_timeout`` later;
- a success (a release without failure) after a check (``accessed < checked``) clears the
  failures. So failures add up while no success after a check comes between them, however
  far apart they are.

:class:`PassiveHealth` keeps, in a lazy heap, when each suspension lifts, so a failure, a
lift or a trial costs O(log n) and tells the scheduler which one backend changed. A
backend's own state lives on its state object (:class:`Watched`) and is touched only once a
failure is reported: a backend nobody reported a failure of costs nothing here, on any path.
"""

from __future__ import annotations

import math
from typing import Protocol

from lbalgo._lazyheap import LazyHeap

__all__ = ["PassiveHealth", "Watched"]


class Watched(Protocol):
    """What passive health keeps on a backend's state: nginx's ``fails``, ``accessed`` (the
    last failure) and ``checked`` (the last check), and the end of its suspension (``-inf``:
    healthy; a past time: its next pick is its trial). While ``fails`` is above 0 the
    scheduler must hear of its picks and releases."""

    fails: int
    accessed: float
    checked: float
    suspended_until: float


class PassiveHealth:
    """nginx's rule for one scheduler (see the module docstring).

    Methods return whether the backend's eligibility changed, so the scheduler updates only
    that backend. ``next_lift`` is the earliest time a suspension lifts.

    >>> class State:
    ...     fails, accessed, checked, suspended_until = 0, -math.inf, -math.inf, -math.inf
    >>> health, state = PassiveHealth(max_fails=2, fail_timeout=10.0), State()
    >>> health.failure(state, 0.0), health.failure(state, 1.0), health.suspended(state, 11.0)
    (False, True, True)
    >>> health.lifted(11.5) == [state], health.suspended(state, 11.5)
    (True, False)
    >>> health.picked(state, 11.5), health.suspended(state, 12.0)  # the trial
    (True, True)
    >>> health.success(state), state.suspended_until, state.fails
    (True, -inf, 0)
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
        """Record one failure at ``now``; ``True`` if it puts the backend out (or keeps it
        out longer). O(log n)."""
        state.fails += 1
        state.accessed = state.checked = now
        if state.fails < self.max_fails:
            return False
        self._suspend(state)
        return True

    def picked(self, state: Watched, now: float) -> bool:
        """A pick of a backend with failures: if it is the first more than ``fail_timeout``
        after the last check, it is a check; for a backend that was out, its trial, and it
        is out again meanwhile. ``True`` if its eligibility changed. O(log n)."""
        if now < self._due(state):
            return False
        state.checked = now
        if state.fails < self.max_fails:
            return False
        self._suspend(state)
        return True

    def success(self, state: Watched) -> bool:
        """A release without failure; ``True`` if it cleared the failures (a check came
        after the last failure). O(log n)."""
        if not state.fails or state.accessed >= state.checked:
            return False
        self.clear(state)
        return True

    def clear(self, state: Watched) -> None:
        """Forget every failure of ``state`` (cleared, or it is alone). O(log n)."""
        state.fails = 0
        state.suspended_until = -math.inf
        self._lifts.discard(state)

    def lifted(self, now: float) -> list[Watched]:
        """The backends whose suspension ended by ``now`` (each may now take its trial),
        O(log n) each."""
        return self._lifts.due(now)

    def _due(self, state: Watched) -> float:
        # nginx compares whole seconds with now - checked > fail_timeout: the first instant
        # after checked + fail_timeout
        return math.nextafter(state.checked + self.fail_timeout, math.inf)

    def _suspend(self, state: Watched) -> None:
        state.suspended_until = self._due(state)
        self._lifts.push(state.suspended_until, state)

    def _check(self) -> None:
        """Assert the invariant of the heap of lifts."""
        self._lifts._check()
