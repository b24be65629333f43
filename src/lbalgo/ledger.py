"""Connection ledgers: where :class:`~lbalgo.WeightedLeastConnections` keeps open-connection
counts and makes its choice.

A ledger owns the counts *and* the choice ("take the least-loaded eligible key and count it")
so that a shared ledger can do both in one atomic step: a ledger on Redis runs one script over
a structure ordered by load ratio, and two processes can never both take the last
least-loaded slot, which a "read the counts, then write" design would allow.

:class:`ConnectionLedger` is the interface. :class:`~lbalgo.LocalLedger` (in
``lbalgo.local_ledger``) is the in-process default; ``lbalgo.RedisLedger`` (extra ``redis``)
shares the counts between processes and hosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol, runtime_checkable

from lbalgo._slowstart import RAMP_STEPS
from lbalgo._validate import at_most, integer, is_collection, shown
from lbalgo.backend import MAX_BACKENDS, MAX_WEIGHT
from lbalgo.errors import InvalidOptionError, InvalidTypeError

__all__ = ["MAX_FINE_WEIGHT", "ConnectionLedger", "IncrementalLedger", "checked_eligible"]


@runtime_checkable
class ConnectionLedger(Protocol):
    """Open-connection counts by backend key, and the least-connections choice over them.

    A scheduler owns one ledger object and calls every method under its own lock, so a ledger
    object needs no locking of its own for calls from one scheduler. A shared ledger (one per
    process, all talking to the same store) must make :meth:`acquire` atomic in the store.

    What is per process and what is shared: the *eligible set* (keys and effective weights,
    which follow this process's group, health marks, slow-start ramps and passive-health
    suspensions) is always per process and handed over by :meth:`set_eligible`; the *counts*
    are per process for :class:`LocalLedger` and fleet-wide for a shared ledger.

    Counting contract, for every implementation:

    - a key's count is the number of :meth:`acquire` results and :meth:`take` calls for it not
      yet released; it never goes negative (a :meth:`release` at 0 does nothing);
    - counts are kept for every key the ledger knows, eligible or not: a backend that goes
      down, is set to weight 0 or is suspended keeps its open connections until they are
      released (it drains) and only takes no new ones;
    - a key's count survives any number of :meth:`set_eligible` calls (weight changes, health
      flips) until :meth:`forget` drops it.

    The protocol is checkable at run time (method names only), which is what
    ``WeightedLeastConnections(ledger=...)`` does before accepting one:

    >>> from lbalgo import LocalLedger
    >>> isinstance(LocalLedger(), ConnectionLedger), isinstance(object(), ConnectionLedger)
    (True, False)
    """

    def set_eligible(self, weights: Sequence[tuple[str, int]]) -> None:
        """Replace the eligible set: ``(key, effective_weight)`` pairs in group order.

        Every weight is an ``int`` from 1 to ``MAX_WEIGHT * RAMP_STEPS`` (3200), in units
        of ``1 / RAMP_STEPS`` of a backend weight: a backend at its full weight ``w`` is
        listed as ``w * 32``, one at step ``k`` of a slow-start ramp as ``w * k`` (see
        :data:`lbalgo.scheduler.RAMP_STEPS`); only ratios between weights matter. The
        scheduler leaves out weight-0, down and suspended backends; keys are unique; the
        order is the group's and is what breaks ties that nothing else breaks. Keys that are
        not listed keep their counts (they drain) and are never returned by :meth:`acquire`
        until listed again.

        Called under the scheduler's lock whenever membership, weights, health marks,
        slow-start ramps or suspensions change: O(n) is fine here, the hot path is
        :meth:`acquire`. It stays per process even for a shared ledger (each process learns
        health from its own checker) and must not need the store to be reachable.
        """
        ...

    def acquire(self, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """Choose an eligible key not in ``exclude``, count one connection on it, return it.

        The key has the lowest ``count / effective_weight`` among the eligible keys not
        excluded, compared exactly (cross-multiplied integers, never floats); for a shared
        ledger the counts are the fleet's. Ties between equal ratios should follow the
        weights smoothly (:class:`LocalLedger`: every prefix of a light-load sequence within
        one pick of each key's weighted share). Returns ``None`` when no key qualifies (the
        scheduler then raises :class:`~lbalgo.NoBackendAvailable` saying why).

        The choice and the increment are one atomic step. O(log n) for the in-process
        ledger; one round trip for a shared one. May raise an :class:`~lbalgo.LbalgoError`
        subclass when a shared store is unreachable; nothing is counted then.
        """
        ...

    def take(self, key: str) -> None:
        """Count one connection on ``key``, chosen by someone else.

        For a wrapper that decided the backend itself (a sticky session's bound backend):
        the scheduler has checked that ``key`` is eligible and not excluded. The count goes
        up exactly as if :meth:`acquire` had returned ``key`` (and a smooth tie-break should
        account for it as such). May raise like :meth:`acquire`; nothing is counted then.
        """
        ...

    def release(self, key: str) -> None:
        """One connection on ``key`` ended: count it down.

        Never below 0; a key the ledger does not know (or has forgotten) is ignored. The
        key identifies the backend, whatever its weight now: a backend whose weight changed
        since it was acquired is released the same way.

        Should not raise: releases run in cleanup paths (``finally``, ``__exit__``), and by
        then the scheduler has already counted the release locally. A shared ledger that
        cannot reach its store keeps the release pending and applies it later (or lets
        lease expiry reclaim it) rather than dropping it silently.
        """
        ...

    def count(self, key: str) -> int:
        """Open connections the ledger holds for ``key`` (0 for an unknown key).

        For a shared ledger this is the fleet-wide count, which the scheduler's own
        ``open_connections`` (this process's picks) does not show.
        """
        ...

    def forget(self, keys: Iterable[str]) -> None:
        """Drop the counts of ``keys``: they left this scheduler's group.

        Called under the scheduler's lock after an update removed them (they are no longer
        eligible by then). Later releases for them are ignored; if a key comes back, it
        starts from 0 in this process. A shared ledger drops only this process's share of
        their counts (other processes may still hold connections there).
        """
        ...


@runtime_checkable
class IncrementalLedger(ConnectionLedger, Protocol):
    """A ledger that can also change one key's weight without relisting the others.

    ``WeightedLeastConnections`` uses it when a ledger offers it, so a health mark, a
    passive-health suspension or a slow-start step costs O(log n) instead of an O(n)
    :meth:`~ConnectionLedger.set_eligible` (:class:`~lbalgo.LocalLedger` does).

    >>> from lbalgo import LocalLedger
    >>> isinstance(LocalLedger(), IncrementalLedger)
    True
    """

    def set_weight(self, key: str, weight: int) -> bool:
        """Set ``key``'s effective weight (0: not eligible now; it drains) on the fine scale
        of :meth:`~ConnectionLedger.set_eligible`. ``False``, with nothing changed, when the
        ledger cannot place ``key`` in group order (it was not listed in the last
        ``set_eligible``): the caller then lists the whole eligible set again."""
        ...


def checked_eligible(weights: Iterable[tuple[str, int]]) -> dict[str, int]:
    """An eligible set as :meth:`ConnectionLedger.set_eligible` receives it, checked: a dict
    from key to weight in the given order, O(n). :class:`~lbalgo.InvalidOptionError` (a
    ``ValueError``) naming the key and the value for a weight outside 1..3200
    (``MAX_WEIGHT * RAMP_STEPS``), a key listed twice or more than ``MAX_BACKENDS`` pairs
    (an iterable is read no further); :class:`~lbalgo.InvalidTypeError` for an entry that
    is not a ``(str, int)`` pair. Every ledger checks before it changes anything.

    >>> checked_eligible([("a", 32), ("b", 96)])
    {'a': 32, 'b': 96}
    >>> checked_eligible([("a", 32), ("a", 1)])
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: key 'a' is listed twice
    """
    if not is_collection(weights):
        raise InvalidTypeError(f"weights must be (key, weight) pairs, got {shown(weights)}")
    entries = at_most(weights, MAX_BACKENDS)
    if len(entries) > MAX_BACKENDS:
        raise InvalidOptionError(f"weights holds at most {MAX_BACKENDS} pairs, got more")
    eligible: dict[str, int] = {}
    for entry in entries:
        if not isinstance(entry, tuple) or len(entry) != 2 or not isinstance(entry[0], str):
            raise InvalidTypeError(f"weights must be (key, weight) pairs, got {shown(entry)}")
        key, weight = entry
        if key in eligible:
            raise InvalidOptionError(f"key {shown(key)} is listed twice")
        eligible[key] = integer(f"weight of {shown(key)}", weight, 1, MAX_FINE_WEIGHT)
    return eligible


MAX_FINE_WEIGHT = MAX_WEIGHT * RAMP_STEPS
"""The largest weight a ledger is handed: a full weight of 100 on the schedulers' fine scale."""
