"""Sticky sessions: one session key keeps going to one backend while that backend can serve.

:class:`StickySessions` wraps any scheduler and keeps its interface. The wrapped scheduler still
decides where a NEW session goes (so new sessions follow the weights); the wrapper only
remembers the answer per session key (a source address, or a cookie value) and repeats it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from ipaddress import IPv4Address, IPv6Address

from lbalgo._base import BaseScheduler
from lbalgo._options import check_clock, check_scheduler, normalize_exclude
from lbalgo._validate import integer, seconds, shown
from lbalgo.backend import Backend, BackendGroup
from lbalgo.errors import InvalidOptionError, InvalidTypeError, NoBackendAvailable
from lbalgo.scheduler import BackendStats, Client, Exclude, Lease, Scheduler

__all__ = ["StickySessions"]

# expired bindings dropped per new binding: more than the one it adds, so the table drains
# while a pick stays O(1) (len() drops the rest; a reused binding adds nothing, drops nothing)
_EXPIRE_PER_PICK = 2


MAX_SESSION_KEY = 4096  # characters: a cookie value is at most about 4 KB in browsers
MAX_SESSIONS = 100_000_000  # bindings: beyond it the map alone would not fit in memory

def _session_key(client: Client) -> str:
    # a str is an opaque key (a cookie value, or an address as the proxy spells it); address
    # objects are canonicalised so that IPv4-mapped IPv6 and IPv4 name the same client
    if isinstance(client, str):
        if len(client) > MAX_SESSION_KEY:
            raise InvalidOptionError(
                f"session key must be at most {MAX_SESSION_KEY} characters, got {shown(client)}"
            )
        return client
    if isinstance(client, IPv6Address):
        mapped = client.ipv4_mapped
        return str(mapped if mapped is not None else client)
    if isinstance(client, IPv4Address):
        return str(client)
    raise InvalidTypeError(f"session key must be a str or an IP address, got {shown(client)}")


class StickySessions:
    """Same session key, same backend, for as long as the binding is fresh and the backend
    eligible; otherwise the wrapped scheduler chooses and the answer is bound.

    ``pick(client=session_key)`` returns the backend bound to ``session_key`` while the
    binding was last used less than ``ttl`` seconds ago and its backend is still in the
    group, of weight above 0, up, not suspended by passive health and not in ``exclude``.
    Otherwise it asks the wrapped scheduler (passing the same client and ``exclude``) and
    binds that answer, so a retry with ``exclude`` moves the session. ``client=None`` has no
    session: the pick goes straight to the wrapped scheduler.

    Session keys: a ``str`` is used verbatim (pass the same spelling every time);
    ``IPv4Address``/``IPv6Address`` objects are canonicalised (IPv4-mapped IPv6 is IPv4).

    Memory is bounded: at most ``max_sessions`` bindings are kept, the least recently used
    goes first, and ``len()`` is the number kept. Expiry is lazy: an expired binding costs
    nothing but its memory until a later new binding or ``len()`` drops it.

    Every other member (``release``, ``mark_down``, ``stats``, ``update``, ...) is the
    wrapped scheduler's; bindings to a backend that was removed, marked down or set to
    weight 0 are noticed at the next pick of their session. Thread-safe: one lock guards the
    bindings, and it is held while the wrapped scheduler picks for a new session.

    Complexity: a pick that reuses a binding is O(1) (a dict lookup plus the wrapped
    scheduler's O(1) count of the pick); a new session costs one pick of the wrapped
    scheduler more. Memory is O(``max_sessions``).

    >>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
    >>> group = BackendGroup([Backend("10.0.0.1", 80), Backend("10.0.0.2", 80)])
    >>> now = [0.0]
    >>> sticky = StickySessions(SmoothWeightedRoundRobin(group), ttl=60, clock=lambda: now[0])
    >>> [sticky.pick("client-a").key for _ in range(3)]
    ['10.0.0.1:80', '10.0.0.1:80', '10.0.0.1:80']
    >>> sticky.pick("client-b").key  # a new session: the wrapped scheduler decides
    '10.0.0.2:80'
    >>> sticky.mark_down("10.0.0.1:80")  # client-a's backend fails: it moves, and stays moved
    >>> sticky.pick("client-a").key
    '10.0.0.2:80'
    >>> sticky.mark_up("10.0.0.1:80")
    >>> sticky.pick("client-a").key
    '10.0.0.2:80'
    >>> len(sticky)
    2
    >>> now[0] = 61.0  # neither session was used for more than ttl seconds
    >>> len(sticky)
    0
    """

    __slots__ = ("_base", "_bindings", "_clock", "_lock", "_max_sessions", "_scheduler", "_ttl")

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        ttl: float = 1200.0,
        max_sessions: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_scheduler(scheduler)
        seconds("ttl", ttl, above_low=True)
        integer("max_sessions", max_sessions, 1, MAX_SESSIONS)
        check_clock(clock)
        self._scheduler = scheduler
        # our own schedulers can count a pick of one given backend in O(1); any other
        # Scheduler is driven through its public interface only
        self._base = scheduler if isinstance(scheduler, BaseScheduler) else None
        self._ttl = float(ttl)
        self._max_sessions = max_sessions
        self._clock = clock
        # session key -> (backend key, time of last use), least recently used first
        self._bindings: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def scheduler(self) -> Scheduler:
        """The wrapped scheduler."""
        return self._scheduler

    @property
    def ttl(self) -> float:
        """Seconds a binding lives after its last use."""
        return self._ttl

    @property
    def max_sessions(self) -> int:
        """The most bindings kept at once."""
        return self._max_sessions

    @property
    def group(self) -> BackendGroup:
        """The wrapped scheduler's current group."""
        return self._scheduler.group

    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
        """The backend bound to the session ``client``, or a new binding (see the class)."""
        chosen = self._pick(client, exclude, lease=False)
        return chosen.backend if isinstance(chosen, Lease) else chosen

    def connection(self, client: Client = None, *, exclude: Exclude = ()) -> Lease:
        """Pick as :meth:`pick` does and return a :class:`~lbalgo.Lease` on that backend."""
        chosen = self._pick(client, exclude, lease=True)
        assert isinstance(chosen, Lease)
        return chosen

    def release(self, backend: Backend, *, failed: bool = False) -> None:
        """The wrapped scheduler's ``release``."""
        self._scheduler.release(backend, failed=failed)

    def mark_down(self, key: str) -> None:
        """The wrapped scheduler's ``mark_down``: sessions on ``key`` move at their next pick."""
        self._scheduler.mark_down(key)

    def mark_up(self, key: str) -> None:
        """The wrapped scheduler's ``mark_up`` (sessions that moved away stay moved)."""
        self._scheduler.mark_up(key)

    def is_up(self, key: str) -> bool:
        """The wrapped scheduler's ``is_up``."""
        return self._scheduler.is_up(key)

    def open_connections(self, key: str) -> int:
        """The wrapped scheduler's ``open_connections`` (sticky picks included)."""
        return self._scheduler.open_connections(key)

    def stats(self) -> Mapping[str, BackendStats]:
        """The wrapped scheduler's ``stats`` (sticky picks are counted there)."""
        return self._scheduler.stats()

    def update(self, group: BackendGroup) -> None:
        """The wrapped scheduler's ``update``: sessions on removed keys move at their next
        pick."""
        self._scheduler.update(group)

    def __len__(self) -> int:
        """The number of bindings kept, after dropping the expired ones (O(expired))."""
        with self._lock:
            self._expire(self._clock(), len(self._bindings))
            return len(self._bindings)

    def __repr__(self) -> str:
        return (
            f"StickySessions({self._scheduler!r}, ttl={self._ttl!r}, "
            f"max_sessions={self._max_sessions!r})"
        )

    # -- internals ---------------------------------------------------------------------------

    def _pick(self, client: Client, exclude: Exclude, *, lease: bool) -> Backend | Lease:
        inner = self._scheduler
        if client is None:  # no session to stick to
            if lease:
                return inner.connection(None, exclude=exclude)
            return inner.pick(None, exclude=exclude)
        session = _session_key(client)
        excluded = normalize_exclude(exclude) if exclude else frozenset()
        lock = self._lock  # taken by hand: a `with` block costs ~3 empty calls more
        lock.acquire()
        try:
            now = self._clock()
            bindings = self._bindings
            bound = bindings.get(session)
            if bound is not None and now - bound[1] < self._ttl:
                chosen = self._pick_bound(client, bound[0], excluded, lease=lease)
                if chosen is not None:
                    bindings[session] = (bound[0], now)
                    bindings.move_to_end(session)
                    return chosen
            # the wrapped scheduler raises NoBackendAvailable here with nothing changed: the
            # old binding survives, its backend may be back before it expires
            if lease:
                chosen = inner.connection(client, exclude=excluded)
                key = chosen.backend.key
            else:
                chosen = inner.pick(client, exclude=excluded)
                key = chosen.key
            bindings[session] = (key, now)
            bindings.move_to_end(session)
            if len(bindings) > self._max_sessions:
                bindings.popitem(last=False)
            self._expire(now, _EXPIRE_PER_PICK)
            return chosen
        finally:
            lock.release()

    def _pick_bound(
        self, client: Client, key: str, excluded: Collection[str], *, lease: bool
    ) -> Backend | Lease | None:
        """Pick the bound backend ``key`` if it is eligible now, else ``None``."""
        if self._base is not None:
            if lease:
                return self._base.take_connection(key, excluded)
            return self._base.take(key, excluded)
        inner = self._scheduler
        backend = inner.group.get(key)
        if backend is None or backend.weight == 0 or key in excluded or not inner.is_up(key):
            return None
        # a foreign scheduler can only be steered through exclude: O(n), but correct
        others = frozenset(inner.group.keys()).difference((key,)).union(excluded)
        try:
            if lease:
                return inner.connection(client, exclude=others)
            return inner.pick(client, exclude=others)
        except NoBackendAvailable:
            return None  # suspended by the scheduler's own passive health

    def _expire(self, now: float, budget: int) -> None:
        # bindings are kept in order of last use, so the expired ones are a prefix
        bindings = self._bindings
        while budget > 0 and bindings:
            _, (_, used) = next(iter(bindings.items()))
            if now - used < self._ttl:
                return
            bindings.popitem(last=False)
            budget -= 1
