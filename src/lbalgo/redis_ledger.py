"""A connection ledger on Redis: least connections over a whole fleet of processes and hosts.

Every worker process (and every proxy host) gives its ``WeightedLeastConnections`` a
:class:`RedisLedger` on the same Redis and namespace; the open-connection counts are then the
fleet's, and each pick is one atomic Lua script in Redis that chooses the lowest fleet-wide
``count / weight`` and counts it, so two processes can never both take the last least-loaded
slot. Health marks, slow-start ramps, groups and passive health stay per process.

redis-py (the ``redis`` extra) is imported only when a ledger is built, so ``import lbalgo``
works without it. See ``docs/fleet.md`` for running several workers, crash safety and outages.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from lbalgo._redis_link import (
    Link,
    call_in_forked_child,
    check_cluster,
    check_lease_timeout,
    check_namespace,
    check_url,
)
from lbalgo._validate import at_most, shown
from lbalgo.backend import MAX_BACKENDS
from lbalgo.errors import InvalidOptionError, InvalidTypeError, LedgerUnavailable
from lbalgo.ledger import checked_eligible

__all__ = ["LedgerUnavailable", "RedisLedger"]

_log = logging.getLogger("lbalgo.redis_ledger")

_BACKOFF = 0.5  # seconds a failed call keeps the ledger failing fast before trying again
_REBUILD_WAIT = 1.0  # at most this long a call that found the store empty waits for the fleet
_MAX_KEYS = 2 * MAX_BACKENDS  # keys one counts() call may ask about (two groups' worth)


class RedisLedger:
    """Open-connection counts shared by every process on one Redis ``namespace``.

    Give one to each process's :class:`~lbalgo.WeightedLeastConnections`
    (``ledger=RedisLedger(url, namespace="web")``); every pick then follows the least-ratio
    rule on the fleet's total open connections per backend key.

    How: Redis keeps the keys some live process may pick in a sorted set by ``count /
    weight``, ties ordered by a fleet-wide WF2Q schedule (:class:`~lbalgo.LocalLedger`'s
    rule; ties it cannot break go by key). ``acquire`` is one Lua script (EVALSHA) that walks
    that set from the lowest ratio, skipping keys this process may not use, picks and
    counts: one round trip, O(log n + s) in Redis for s skipped keys; ``release`` is one
    round trip too. Ratios are compared as cross-multiplied integers.

    Crash safety: this process's connections are held under an owner id with a lease that
    every call renews (a daemon thread renews it every ``lease_timeout / 4`` s while idle);
    a process silent for ``lease_timeout`` seconds is reclaimed by the next call of any
    other, and one reclaimed while alive (paused) puts its connections back on its next
    call. Counts never go negative; a connection is never released twice.

    Redis unreachable: ``acquire``, ``take`` and ``count`` raise :class:`LedgerUnavailable`
    (failing fast for half a second after a failure); nothing is counted then (a script
    whose answer was lost is undone by the next call, which sends the full state);
    ``release`` never raises and is applied when Redis answers again. Redis empty again
    (restarted without persistence, FLUSHALL, a failover to a replica that lagged): the
    first call that finds it empty puts this process's state back and tells every process
    on the namespace (pub/sub), which put theirs back at once; it waits (at most 1 s) until
    they have before it picks, so no pick is made on a partial fleet.

    ``url``: ``redis://``, ``rediss://`` or ``unix://`` (query options such as
    ``?socket_timeout=0.2`` pass to redis-py; both socket timeouts default to 1 s).
    ``namespace``: the fleet's name; every key lives under ``lbalgo:{namespace}:``, one
    hash slot. ``lease_timeout``: seconds from 0.1 to 86400. ``cluster=True``: ``url`` is
    any node of a Redis Cluster (there is no URL form for it); each namespace lives on the
    master of its slot, so each call is still one atomic script (Redis 7 for the sharded
    news channel). Bad values raise :class:`~lbalgo.InvalidOptionError` (a ``ValueError``)
    naming the field and value. One ledger per scheduler; :meth:`close` on shutdown hands
    the connections back. See ``docs/fleet.md`` (Sentinel, failovers).

    >>> RedisLedger("http://localhost", namespace="web")
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: url must be a redis://, rediss:// or unix:// URL,
    got 'http://localhost'
    >>> RedisLedger("redis://127.0.0.1:6379/0", namespace="web", cluster="yes")
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: cluster must be True or False, got 'yes'
    """

    _owner: str
    _eligible: dict[str, int]  # this process's eligible set (the truth)
    _total: int  # its total weight: how far the virtual clock moves per pick
    _eligible_dirty: bool  # changed since Redis last heard of it
    _declared: dict[str, int]  # the eligible set Redis has for this owner
    _held: dict[str, int]  # connections open in this process, by key (the truth)
    _applied: dict[str, int]  # what Redis counts for this owner, by key
    _dirty: set[str]  # keys whose held and applied counts differ
    _synced: bool  # False: the next call sends the full state (after an error, or LOST)
    _down_until: float  # fail fast until then (monotonic), after a failed call
    _last_call: float  # when a call last got through (monotonic)
    _stop: threading.Event
    _thread: threading.Thread | None

    def __init__(
        self, url: str, *, namespace: str, lease_timeout: float = 30.0, cluster: bool = False
    ) -> None:
        cluster = check_cluster(cluster)
        self._url = check_url(url, cluster)
        self._namespace = check_namespace(namespace)
        self._lease_timeout = check_lease_timeout(lease_timeout)
        self._prefix = f"lbalgo:{{{self._namespace}}}:"
        self._link = Link(self._url, cluster, self._prefix + "lost")
        self._link.check_usable()
        self._lock = threading.Lock()
        self._closed = False
        self._reset()
        call_in_forked_child(self._after_fork)

    # -- the ConnectionLedger interface ------------------------------------------------------

    def set_eligible(self, weights: Sequence[tuple[str, int]]) -> None:
        """Replace this process's eligible set (see ``ConnectionLedger.set_eligible``), O(n).

        Local only: the change reaches Redis with the next call. ``ValueError`` naming the
        key and the value for a weight outside 1..3200 (weights come in units of
        ``1 / RAMP_STEPS``, see ``ConnectionLedger.set_eligible``) or a repeated key,
        ledger unchanged.
        """
        eligible = checked_eligible(weights)
        with self._lock:
            if eligible != self._eligible:
                self._eligible = eligible
                self._total = sum(eligible.values())
                self._eligible_dirty = True

    def acquire(self, exclude: AbstractSet[str] = frozenset()) -> str | None:
        """Choose the eligible key with the fleet's lowest ``count / weight`` (not in
        ``exclude``), count it, return it; ``None`` if no key qualifies. One round trip.

        Raises :class:`LedgerUnavailable` when Redis cannot be reached (nothing counted).
        """
        with self._lock:
            if not any(key not in exclude for key in self._eligible):
                return None
            excluded = [key for key in exclude if key in self._eligible]
            key, _ = self._call("a", excluded=excluded)
            if key is not None:
                self._held[key] = self._held.get(key, 0) + 1
                self._applied[key] = self._applied.get(key, 0) + 1
            return key

    def take(self, key: str) -> None:
        """Count one connection on ``key`` chosen by the caller (a sticky session), moving
        it along the tie-break schedule as :meth:`acquire` would. One round trip; raises
        :class:`LedgerUnavailable` when Redis cannot be reached (nothing counted)."""
        if not isinstance(key, str):
            raise InvalidTypeError(f"key must be a backend key (str), got {shown(key)}")
        with self._lock:
            self._call("t", take=key)
            self._held[key] = self._held.get(key, 0) + 1
            self._applied[key] = self._applied.get(key, 0) + 1

    def release(self, key: str) -> None:
        """One connection of this process on ``key`` ended: count it down (one round trip).

        Never raises: while Redis is unreachable the release waits in this process and is
        applied with the next call that gets through (the heartbeat thread retries). A key
        this process holds no connection on is ignored.
        """
        with self._lock:
            held = self._held.get(key, 0)
            if held <= 0:
                return
            if held == 1:
                del self._held[key]
            else:
                self._held[key] = held - 1
            self._dirty.add(key)
            self._flush()

    def count(self, key: str) -> int:
        """The fleet's open connections on ``key`` (0 if unknown). One round trip; raises
        :class:`LedgerUnavailable` when Redis cannot be reached."""
        return self.counts([key])[key]

    def counts(self, keys: Iterable[str]) -> dict[str, int]:
        """The fleet's open connections for each of ``keys``, in one round trip. At most
        1,000 keys (an iterable is read no further); a non-string key or more keys raise
        :class:`~lbalgo.InvalidTypeError` / :class:`~lbalgo.InvalidOptionError`."""
        if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
            raise InvalidTypeError(
                f"keys must be an iterable of backend keys (str), got {shown(keys)}"
            )
        wanted = list(dict.fromkeys(at_most(keys, _MAX_KEYS)))
        if len(wanted) > _MAX_KEYS:
            raise InvalidOptionError(f"keys must be at most {_MAX_KEYS} keys, got more")
        for key in wanted:
            if not isinstance(key, str):
                raise InvalidTypeError(f"keys must be backend keys (str), got {shown(key)}")
        with self._lock:
            _, values = self._call("", counted=wanted)
        return dict(zip(wanted, values, strict=True))

    def forget(self, keys: Iterable[str]) -> None:
        """Drop this process's connections on ``keys`` (they left its group); other
        processes' connections there stay counted. One round trip if it held any; never
        raises (applied later while Redis is unreachable, like :meth:`release`)."""
        with self._lock:
            for key in keys:
                if self._held.pop(key, 0):
                    self._dirty.add(key)
            if self._dirty:
                self._flush()

    # -- beyond the interface ----------------------------------------------------------------

    @property
    def owner(self) -> str:
        """This process's owner id in Redis (host, pid and a random part)."""
        return self._owner

    @property
    def namespace(self) -> str:
        """The namespace shared by the fleet."""
        return self._namespace

    @property
    def client(self) -> Any:
        """The redis-py client this ledger talks through (``redis.Redis``, or
        ``redis.cluster.RedisCluster`` with ``cluster=True``), built on first use: for
        monitoring (``INFO``), never for changing the ledger's keys."""
        return self._link.client()

    @property
    def cluster(self) -> bool:
        """Whether this ledger talks to a Redis Cluster."""
        return self._link.cluster

    @property
    def lease_timeout(self) -> float:
        """Seconds without a heartbeat after which this process's connections are reclaimed."""
        return self._lease_timeout

    def close(self) -> None:
        """Hand this process's connections and eligible set back, stop the heartbeat thread
        and close the connection pool (best effort when Redis is unreachable; the lease
        expires anyway). Idempotent; a closed ledger raises :class:`LedgerUnavailable` on
        ``acquire``, ``take`` and ``count``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            if self._thread is not None or self._held:  # it has reached Redis (or tried)
                try:
                    self._call("x")
                except LedgerUnavailable:
                    _log.warning("close: Redis unreachable; leases of %s expire", self._owner)
            self._held.clear()
        self._link.close()

    def __enter__(self) -> RedisLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<RedisLedger {self._namespace!r} owner={self._owner} "
            f"held={sum(self._held.values())} eligible={len(self._eligible)}>"
        )

    # -- internals ---------------------------------------------------------------------------

    def _reset(self) -> None:
        """Fresh per-process state: a new owner id, nothing held (at start and after fork)."""
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._eligible = {}
        self._total = 0
        self._eligible_dirty = True
        self._declared = {}
        self._held = {}
        self._applied = {}
        self._dirty = set()
        self._synced = False
        self._down_until = -math.inf
        self._last_call = -math.inf
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _call(
        self,
        action: str,
        *,
        excluded: Sequence[str] = (),
        take: str = "",
        counted: Sequence[str] = (),
    ) -> tuple[str | None, list[int]]:
        """Run the script once (twice if Redis lost this owner, or for a reconnect); returns
        the picked key (or None) and the counts asked for. Under the lock. Raises
        LedgerUnavailable."""
        if self._closed and action != "x":
            raise LedgerUnavailable(f"this RedisLedger ({self._owner}) is closed")
        if time.monotonic() < self._down_until:
            raise LedgerUnavailable(
                f"Redis at {self._url} unreachable (failing fast, retrying shortly)"
            )
        attempts = 2
        while True:
            attempts -= 1
            full = not self._synced
            args = self._arguments(full, action, excluded, take, counted)
            try:
                reply = self._link.run(self._prefix + "q", args)
            except self._link.network_errors as exc:
                # the reply is lost, the script may or may not have run: resend everything
                self._synced = False
                if attempts > 0 and isinstance(exc, self._link.reconnectable):
                    continue  # a pooled connection from before a Redis restart
                self._down_until = time.monotonic() + _BACKOFF
                raise LedgerUnavailable(f"Redis at {self._url} unreachable: {exc}") from exc
            except self._link.refused as exc:
                self._synced = False
                raise LedgerUnavailable(f"Redis at {self._url} refused the ledger: {exc}") from exc
            status = reply[0]
            if status == b"LOST" and attempts > 0:
                self._synced = False  # Redis forgot this owner: put its state back
                continue
            if status == b"REBUILT":
                # The store had lost everything (restart without persistence, FLUSHALL) and
                # this call put this process's state back and told the fleet: wait for the
                # others to do the same before choosing on counts that would miss theirs.
                # others: the news reached them (our own watcher is not one of them)
                others = int(reply[2]) - (1 if self._link.subscribed else 0)
                self._link.wait_for_fleet(
                    self._prefix + "owners",
                    others,
                    min(_REBUILD_WAIT, self._lease_timeout / 4),
                    restarted=self._last_call > -math.inf,  # it had state there before
                )
                self._synced, full, attempts = True, False, 1
                self._mark_applied(True)
                continue
            if status != b"OK":
                raise LedgerUnavailable(f"Redis ledger answered {shown(reply)}")
            break
        self._synced = True
        self._mark_applied(full)
        picked = reply[1]
        return (None if picked is None else picked.decode()), [int(v) for v in reply[2:]]

    def _mark_applied(self, full: bool) -> None:
        """Redis now has what the call sent: note it, and start the watcher thread."""
        self._down_until = -math.inf
        self._last_call = time.monotonic()
        if full or self._eligible_dirty:
            self._declared = dict(self._eligible)
            self._eligible_dirty = False
        if full:
            self._applied = dict(self._held)
        else:
            for key in self._dirty:
                held = self._held.get(key, 0)
                if held:
                    self._applied[key] = held
                else:
                    self._applied.pop(key, None)
        self._dirty.clear()
        if self._thread is None and not self._closed:
            self._thread = self._link.start_watcher(
                self, self._stop, self._lease_timeout / 4, self._owner
            )

    def _arguments(
        self,
        full: bool,
        action: str,
        excluded: Sequence[str],
        take: str,
        counted: Sequence[str],
    ) -> list[str | int]:
        # the order _redis_ledger.lua reads them in (see its header)
        args: list[str | int] = [self._prefix, self._owner, repr(self._lease_timeout)]
        args += ["1" if full else "0", action, max(self._total, 1), take]
        args += ["SPUBLISH" if self._link.cluster else "PUBLISH", len(excluded), *excluded]
        if full:
            held: list[str | int] = [x for item in self._held.items() for x in item]
            changes: list[str | int] = [x for item in self._eligible.items() for x in item]
            undeclared: list[str] = []
        else:
            held = []
            for key in self._dirty:
                gone = self._applied.get(key, 0) - self._held.get(key, 0)
                if gone > 0:
                    held += [key, gone]
            changes, undeclared = [], []
            if self._eligible_dirty:
                declared = self._declared
                for key, weight in self._eligible.items():
                    if declared.get(key) != weight:
                        changes += [key, weight]
                undeclared = [key for key in declared if key not in self._eligible]
        args += [len(held) // 2, *held, len(changes) // 2, *changes]
        args += [len(undeclared), *undeclared, len(counted), *counted]
        return args

    def _flush(self) -> None:
        """Send pending releases and renew the lease now, if Redis is thought reachable;
        never raises (called under the lock)."""
        if self._closed or time.monotonic() < self._down_until:
            return
        try:
            self._call("")
        except LedgerUnavailable as exc:
            _log.warning("ledger call failed, releases kept pending: %s", exc)

    def _beat(self, interval: float) -> None:
        """One heartbeat: renew the lease (and flush pending releases) unless a call did."""
        with self._lock:
            if time.monotonic() - self._last_call < interval / 2 and not self._dirty:
                return
            self._flush()  # the same call renews the lease and sends pending releases

    def _resync(self) -> None:
        """Another process found the store empty (or this watcher's subscription broke):
        put this process's full state back now, not at the next heartbeat."""
        with self._lock:
            self._synced = False
            self._down_until = -math.inf
            self._flush()

    def _after_fork(self) -> None:
        # The child holds none of the parent's connections and must not share its owner id
        # (or its socket pool, which redis-py replaces on first use in a new pid).
        eligible = self._eligible
        self._lock = threading.Lock()
        self._link.subscribed = False  # the watcher thread did not come along
        self._reset()
        self._eligible, self._total = eligible, sum(eligible.values())

