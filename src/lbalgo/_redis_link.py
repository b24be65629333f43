"""The link between a :class:`~lbalgo.RedisLedger` and Redis: argument checks, the redis-py
client (one server or a Cluster), and the watcher thread (heartbeat and store-loss news).

Kept apart from the ledger's bookkeeping so that ``redis_ledger.py`` reads as the counting
protocol and this module as the plumbing. redis-py (the ``redis`` extra) is imported only when
a client is built, so ``import lbalgo`` works without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from lbalgo._validate import seconds, shown
from lbalgo.errors import InvalidOptionError

if TYPE_CHECKING:
    from redis.client import PubSub

__all__ = [
    "RESUBSCRIBE_EVERY",
    "Link",
    "call_in_forked_child",
    "check_cluster",
    "check_lease_timeout",
    "check_namespace",
    "check_url",
]

_log = logging.getLogger("lbalgo.redis_ledger")

_SCHEMES = ("redis", "rediss", "unix")
_MAX_NAMESPACE = 200
_MIN_LEASE, _MAX_LEASE = 0.1, 86_400.0
_DEFAULT_TIMEOUT = 1.0  # socket timeouts unless the URL sets them: a pick must not hang
_POLL = 0.2  # seconds the watcher waits for news before checking stop and the heartbeat
RESUBSCRIBE_EVERY = 0.1  # seconds between attempts to subscribe again while Redis is away


def check_url(url: object, cluster: bool) -> str:
    """The URL if redis-py can use it for this mode; ``InvalidOptionError`` naming it."""
    if not isinstance(url, str) or len(url) > 4096 or urlsplit(url).scheme not in _SCHEMES:
        raise InvalidOptionError(
            f"url must be a redis://, rediss:// or unix:// URL, got {shown(url)}"
        )
    parts = urlsplit(url)
    if parts.scheme == "unix" and (cluster or not parts.path):
        rule = "the URL of one node" if cluster else "the socket's path (unix:///path)"
        raise InvalidOptionError(f"url must give {rule}, got {url!r}")
    if parts.scheme != "unix" and not re.fullmatch(r"/?|/\d+", parts.path):
        raise InvalidOptionError(
            f"url must end with a database number (/0), if anything, got {url!r}"
        )
    if cluster and parts.path.strip("/") not in ("", "0"):
        raise InvalidOptionError(f"url of a Redis Cluster must use db 0, got {url!r}")
    return url


def check_namespace(namespace: object) -> str:
    """The namespace if usable in a key's hash tag; ``InvalidOptionError`` naming it."""
    if (
        not isinstance(namespace, str)
        or not 0 < len(namespace) <= _MAX_NAMESPACE
        or not namespace.isprintable()
        or any(c in "{} " for c in namespace)
    ):
        raise InvalidOptionError(
            f"namespace must be a non-empty printable string of at most {_MAX_NAMESPACE} "
            f"characters without spaces or braces, got {shown(namespace)}"
        )
    return namespace


def check_lease_timeout(lease_timeout: object) -> float:
    """Seconds from 0.1 to 86400; ``InvalidOptionError`` naming the value."""
    return seconds("lease_timeout", lease_timeout, _MIN_LEASE, _MAX_LEASE)


def check_cluster(cluster: object) -> bool:
    """``True`` or ``False``; ``InvalidOptionError`` naming anything else."""
    if not isinstance(cluster, bool):
        raise InvalidOptionError(f"cluster must be True or False, got {shown(cluster)}")
    return cluster


class _Watched(Protocol):
    def _beat(self, interval: float) -> None: ...
    def _resync(self) -> None: ...


class Link:
    """One ledger's redis-py client, built on first use, and its watcher thread.

    The client never retries by itself (a script re-sent after a lost reply would count
    twice; the ledger retries with a replayable full-state call). For a Cluster it is
    redis-py's ``RedisCluster`` seeded with the URL's node: the ledger's keys share one hash
    slot, so every script runs on the one master that owns it, and MOVED/ASK redirections
    (which never run the script) are followed by redis-py.
    """

    def __init__(self, url: str, cluster: bool, channel: str) -> None:
        self.url, self.cluster, self.channel = url, cluster, channel
        self._client: Any = None
        self._script: Any = None
        self.network_errors: tuple[type[BaseException], ...] = ()
        self.refused: tuple[type[BaseException], ...] = ()
        self.reconnectable: tuple[type[BaseException], ...] = ()
        self.subscribed = False  # whether the watcher listens for store-loss news now

    def client(self) -> Any:
        """The redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``), built
        now if needed. Raises one of ``network_errors`` while a Cluster cannot be reached."""
        if self._client is None:
            self._client = self._build()
        return self._client

    def _build(self) -> Any:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.cluster import RedisCluster
            from redis.exceptions import RedisClusterException
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError("RedisLedger needs redis-py: pip install 'lbalgo[redis]'") from exc
        self.network_errors = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            RedisClusterException,  # no node answers, or the slot has no master for now
        )
        self.refused = (redis.exceptions.RedisError,)
        # a pooled connection from before a restart fails once; a fresh one may succeed
        self.reconnectable = (redis.exceptions.ConnectionError,)
        query = urlsplit(self.url).query
        options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}
        for option in ("socket_timeout", "socket_connect_timeout"):
            if option not in query:
                options[option] = _DEFAULT_TIMEOUT
        try:
            if self.cluster:
                # a master that is down leaves its slots uncovered: the other namespaces go on
                return RedisCluster.from_url(self.url, require_full_coverage=False, **options)
            return redis.Redis.from_url(self.url, **options)
        except (ValueError, TypeError) as exc:
            raise InvalidOptionError(
                f"url is not a usable Redis URL ({exc}), got {self.url!r}"
            ) from None

    def run(self, key: str, args: list[str | int]) -> Any:
        """One EVALSHA of the ledger's script routed by ``key`` (loaded on first use, and
        again on NOSCRIPT, e.g. after a restart)."""
        if self._script is None:
            source = resources.files("lbalgo").joinpath("_redis_ledger.lua")
            self._script = self.client().register_script(source.read_text(encoding="utf-8"))
        return self._script(keys=[key], args=args)

    def check_usable(self) -> None:
        """Build a single-server client now (it connects lazily), so a URL redis-py cannot
        parse is refused by the constructor; a Cluster client connects, so it waits."""
        if not self.cluster:
            self.client()

    def subscribe(self) -> PubSub:
        """A subscription to the namespace's store-loss channel (sharded on a Cluster, on
        the master owning the namespace's slot)."""
        client = self.client()
        if self.cluster:
            node = client.get_node_from_key(self.channel)
            pubsub: PubSub = client.get_redis_connection(node).pubsub()
            pubsub.ssubscribe(self.channel)
        else:
            pubsub = client.pubsub()
            pubsub.subscribe(self.channel)
        return pubsub

    def wait_for_fleet(self, owners: str, others: int, timeout: float, restarted: bool) -> None:
        """After the store was found empty and the news published: wait (at most
        ``timeout`` seconds) until ``others`` owners besides the caller are listed again
        under ``owners``. After a possible restart the others' subscriptions broke too and
        are being made again (each re-asserts once it has): wait that long as well."""
        started = time.monotonic()
        settle = started + (RESUBSCRIBE_EVERY * 3 if restarted else 0.0)
        try:
            while int(self.client().zcard(owners)) - 1 < others or time.monotonic() < settle:
                if time.monotonic() >= started + timeout:
                    _log.warning("store rebuilt: not every process re-asserted in time")
                    return
                time.sleep(0.005)
        except self.network_errors:
            return  # the next call finds out

    def start_watcher(self, ledger: _Watched, stop: threading.Event, interval: float,
                      owner: str) -> threading.Thread:
        """Start the daemon thread that renews the lease every ``interval`` seconds while
        the process is idle and makes the ledger re-assert its state as soon as another
        process reports that the store lost its data (or the subscription had to be made
        again: Redis restarted)."""
        thread = threading.Thread(
            target=_watch,
            args=(weakref.ref(ledger), self, stop, interval, owner.encode()),
            name=f"lbalgo-ledger-watcher-{self.channel}",
            daemon=True,
        )
        thread.start()
        return thread

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _watch(ref: Callable[[], _Watched | None], link: Link, stop: threading.Event,
           interval: float, owner: bytes) -> None:
    # holds only a weak reference, so a forgotten ledger can still be collected
    pubsub: PubSub | None = None
    lost = False  # the subscription broke: Redis may have restarted empty
    next_beat = time.monotonic() + interval
    while not stop.is_set():
        news = False
        if pubsub is None:
            try:
                pubsub = link.subscribe()
                link.subscribed = True
                news, lost = lost, False
            except Exception:  # Redis away: keep beating (it keeps releases pending)
                stop.wait(RESUBSCRIBE_EVERY)
        else:
            try:
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL)
            except Exception:
                link.subscribed, lost = False, True
                _close_quietly(pubsub)
                pubsub = None
                message = None
            news = message is not None and message.get("data") != owner
        ledger = ref()
        if ledger is None:
            break
        if news:
            ledger._resync()
            next_beat = time.monotonic() + interval
        elif time.monotonic() >= next_beat:
            ledger._beat(interval)
            next_beat = time.monotonic() + interval
        del ledger
    link.subscribed = False
    if pubsub is not None:
        _close_quietly(pubsub)


def _close_quietly(pubsub: PubSub) -> None:
    # closing a broken connection may fail again; there is nothing to do about it
    with contextlib.suppress(Exception):
        pubsub.close()



_AFTER_FORK: list[weakref.WeakMethod[Callable[[], None]]] = []


def call_in_forked_child(method: Callable[[], None]) -> None:
    """Call ``method`` (a bound method, held weakly) in the child after every ``fork()``:
    a ledger's owner id, locks and held connections must not be shared with a child."""
    _AFTER_FORK[:] = [ref for ref in _AFTER_FORK if ref() is not None]
    _AFTER_FORK.append(weakref.WeakMethod(method))


def _in_forked_child() -> None:
    for ref in list(_AFTER_FORK):
        method = ref()
        if method is not None:
            method()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_forked_child)
