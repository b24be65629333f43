"""Active health checks: probe every backend of a scheduler and mark it down or up.

:class:`HealthChecker` runs in an asyncio event loop next to a proxy. Every backend of
``scheduler.group`` is probed on its own schedule (one probe every ``interval`` seconds, give
or take 10% of jitter, the first within one interval of ``start()`` or of the ``update()`` that
added it), with at most ``concurrency`` probes in flight at once. After
``unhealthy_threshold`` failures in a row the checker calls ``scheduler.mark_down(key)``; after
``healthy_threshold`` passes in a row, ``scheduler.mark_up(key)``. A check that raises, returns
``False`` or outlasts ``timeout`` is a failure; nothing a check does stops the checker.

The checker owns the health marks of the scheduler it drives: after every probe it re-applies
its own verdict, so an operator's ``mark_down`` on a backend the checker finds healthy lasts
until that backend's next probe (at most about one interval), and a ``mark_up`` of a backend it
finds unhealthy is undone the same way. To take a backend out of rotation by hand while a
checker runs, set its weight to 0 with ``scheduler.update()`` (it drains, and the checker keeps
probing it), or remove it. A backend's first verdict is the scheduler's mark when the checker
first probes it, so a backend that was already down needs ``healthy_threshold`` passes.

Checks: :func:`tcp`, :func:`http`, or any ``async def check(backend) -> bool``; the text of
what it raises (:class:`~lbalgo.errors.HealthCheckFailed`, or anything) is ``last_error``.

>>> import asyncio
>>> from lbalgo import Backend, BackendGroup, WeightedLeastConnections
>>> sched = WeightedLeastConnections(BackendGroup([Backend("127.0.0.1", 9)]))
>>> async def never(backend):
...     return False
>>> checker = HealthChecker(sched, never, unhealthy_threshold=1)
>>> status = asyncio.run(checker.run_once())["127.0.0.1:9"]
>>> status.healthy, status.consecutive, status.last_error, sched.is_up("127.0.0.1:9")
(False, 1, 'check returned False', False)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from lbalgo._options import check_scheduler
from lbalgo._probes import MAX_RESPONSE_HEAD, Check, http, tcp
from lbalgo.backend import BackendGroup
from lbalgo.errors import HealthCheckFailed, InvalidOptionError
from lbalgo.scheduler import Scheduler

__all__ = ["MAX_RESPONSE_HEAD", "Check", "HealthChecker", "HealthStatus", "http", "tcp"]

JITTER = 0.1
"""Each backend's next probe comes ``interval * (1 ± JITTER)`` after the last one started.

Backends probed in lock step would hit a shared dependency (and the event loop) in bursts;
like HAProxy's ``spread-checks``, a random spread keeps the load even.
"""

_log = logging.getLogger("lbalgo.health")


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """What the checker knows about one backend after its latest probe.

    ``healthy`` is the checker's verdict (what it marks on the scheduler); ``consecutive`` the
    number of results in a row equal to the latest one (passes if ``last_error`` is ``None``,
    failures otherwise); ``last_error`` why the latest probe failed, ``None`` if it passed;
    ``last_checked`` when it ended, on the checker's ``clock``.

    >>> HealthStatus(healthy=True, consecutive=4, last_error=None, last_checked=12.5).healthy
    True
    """

    healthy: bool
    consecutive: int
    last_error: str | None
    last_checked: float


def _seconds(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 50:
        raise InvalidOptionError(f"{field} must be a number of seconds from 1 to 50, got {value!r}")
    return float(value)


def _threshold(field: str, value: object) -> int:
    if type(value) is not int or not 1 <= value <= 10:
        raise InvalidOptionError(f"{field} must be an integer from 1 to 10, got {value!r}")
    return value


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, HealthCheckFailed) and text:
        return text
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class HealthChecker:
    """Probes every backend of ``scheduler.group`` and drives its ``mark_down``/``mark_up``.

    ``interval`` and ``timeout`` are seconds from 1 to 50, the thresholds integers from 1 to
    10 (the cloud product's ranges); ``concurrency`` bounds the probes in flight (default 64:
    500 backends never open 500 sockets at once); ``clock`` stamps ``last_checked``; ``seed``
    makes the jitter reproducible. Out-of-range options raise
    :class:`~lbalgo.errors.InvalidOptionError` naming the option and value.

    ``await start()`` (or ``async with checker:``) runs it in the background of the running
    event loop; ``await stop()`` cancels every task it started and waits for them. Following
    ``scheduler.update()`` costs one identity check of ``scheduler.group`` every
    ``min(interval / 4, 1)`` seconds, and O(changed keys) when it changed. Each probe is O(1)
    besides the check itself; ``status()`` is O(n).

    >>> import asyncio
    >>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
    >>> sched = SmoothWeightedRoundRobin(BackendGroup([Backend("127.0.0.1", 8080)]))
    >>> async def always(backend):
    ...     return True
    >>> async def demo():
    ...     async with HealthChecker(sched, always, interval=1) as checker:
    ...         await asyncio.sleep(1.1)  # the first probe comes within one interval
    ...         return checker.status()["127.0.0.1:8080"].healthy
    >>> asyncio.run(demo())
    True
    """

    def __init__(
        self,
        scheduler: Scheduler,
        check: Check,
        *,
        interval: float = 5.0,
        timeout: float = 3.0,
        healthy_threshold: int = 3,
        unhealthy_threshold: int = 3,
        concurrency: int = 64,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        check_scheduler(scheduler)
        if not callable(check):
            raise InvalidOptionError(f"check must be an async callable, got {check!r}")
        self._interval = _seconds("interval", interval)
        self._timeout = _seconds("timeout", timeout)
        self._rise = _threshold("healthy_threshold", healthy_threshold)
        self._fall = _threshold("unhealthy_threshold", unhealthy_threshold)
        if type(concurrency) is not int or not 1 <= concurrency <= 10_000:
            raise InvalidOptionError(
                f"concurrency must be an integer from 1 to 10000, got {concurrency!r}"
            )
        if not callable(clock):
            raise InvalidOptionError(f"clock must be a callable returning seconds, got {clock!r}")
        if seed is not None and type(seed) is not int:
            raise InvalidOptionError(f"seed must be None or an integer, got {seed!r}")
        self._scheduler = scheduler
        self._probe_check = check
        self._concurrency = concurrency
        self._clock = clock
        self._rng = random.Random(seed)
        # rechecking the group this often keeps a new key's first probe within one interval
        self._poll = min(self._interval / 4, 1.0)
        self._states: dict[str, HealthStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._limit: asyncio.Semaphore | None = None

    @property
    def running(self) -> bool:
        """Whether ``start()`` was awaited and ``stop()`` not yet."""
        return self._supervisor is not None

    def status(self) -> dict[str, HealthStatus]:
        """Each key probed so far (and still in the group) to its :class:`HealthStatus`, O(n)."""
        return dict(self._states)

    async def start(self) -> None:
        """Start probing in the background of the running loop (a no-op if already running)."""
        if self._supervisor is None:
            self._limit = asyncio.Semaphore(self._concurrency)
            self._supervisor = asyncio.create_task(self._supervise(), name="lbalgo-health")

    async def stop(self) -> None:
        """Cancel every probe and schedule, wait until they have ended (idempotent)."""
        tasks = [*self._tasks.values(), *self._retiring]
        if self._supervisor is not None:
            tasks.append(self._supervisor)
        self._supervisor = None
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._limit = None

    async def run_once(self) -> dict[str, HealthStatus]:
        """Probe every backend of the group once now (``concurrency`` at a time), apply the
        results, and return ``status()``. Works whether or not the checker is running: use it
        to know the fleet before serving, or to re-check at once after a deploy."""
        group = self._scheduler.group
        self._forget_removed(group)
        limit = self._limit or asyncio.Semaphore(self._concurrency)
        await asyncio.gather(*(self._probe(b.key, limit) for b in group))
        return self.status()

    async def __aenter__(self) -> HealthChecker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _check(self) -> None:
        """Assert the checker's invariants (the stateful tests call it after each step)."""
        for status in self._states.values():
            assert status.consecutive >= 1
            assert status.last_error is None or (
                isinstance(status.last_error, str) and status.last_error
            )
            # a verdict flips exactly at its threshold, so a run against it is always shorter
            if status.healthy and status.last_error is not None:
                assert status.consecutive < self._fall
            if not status.healthy and status.last_error is None:
                assert status.consecutive < self._rise
        if self._supervisor is None:
            assert not self._tasks
            assert self._limit is None
        assert all(task.cancelled() or task.cancelling() for task in self._retiring)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<HealthChecker {state} {len(self._states)} probed, interval={self._interval:g}>"

    async def _supervise(self) -> None:
        seen: BackendGroup | None = None
        while True:
            group = self._scheduler.group
            if group is not seen:
                seen = group
                self._forget_removed(group)
                for key in [b.key for b in group if b.key not in self._tasks]:
                    # spread the first probes over the interval, less one poll period so that
                    # a key added by update() is still probed within one interval
                    delay = self._rng.uniform(0.0, self._interval - self._poll)
                    self._tasks[key] = asyncio.create_task(
                        self._schedule(key, delay), name=f"lbalgo-health {key}"
                    )
            await asyncio.sleep(self._poll)

    def _forget_removed(self, group: BackendGroup) -> None:
        for key in [k for k in self._states if k not in group]:
            del self._states[key]
        for key in [k for k in self._tasks if k not in group]:
            task = self._tasks.pop(key)
            task.cancel()
            # kept until it has ended, so that stop() waits for it too
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _schedule(self, key: str, delay: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay)
        while True:
            started = loop.time()
            assert self._limit is not None
            await self._probe(key, self._limit)
            spread = self._rng.uniform(1 - JITTER, 1 + JITTER)
            await asyncio.sleep(max(0.0, started + self._interval * spread - loop.time()))

    async def _probe(self, key: str, limit: asyncio.Semaphore) -> None:
        group = self._scheduler.group
        if key not in group:
            return
        backend = group[key]
        async with limit:
            try:
                async with asyncio.timeout(self._timeout):
                    passed = await self._probe_check(backend)
                error = None if passed else f"check returned {passed!r}"
            except TimeoutError:
                error = f"no answer within {self._timeout:g} s"
            except Exception as exc:  # a crashing check means a failing backend, not a dead checker
                error = _reason(exc)
        try:
            self._record(key, error)
        except Exception:  # a scheduler error must not end this backend's schedule
            _log.exception("health checker could not record a probe of %s", key)

    def _record(self, key: str, error: str | None) -> None:
        if key not in self._scheduler.group:
            return  # removed while the probe was in flight
        before = self._states.get(key)
        passed = error is None
        if before is None:
            healthy, consecutive = self._scheduler.is_up(key), 1
        else:
            healthy = before.healthy
            same = (before.last_error is None) == passed
            consecutive = before.consecutive + 1 if same else 1
        if passed and not healthy and consecutive >= self._rise:
            healthy = True
            _log.info("backend %s healthy after %d passed probes", key, consecutive)
        elif not passed and healthy and consecutive >= self._fall:
            healthy = False
            _log.warning("backend %s unhealthy after %d failed probes: %s", key, consecutive, error)
        self._states[key] = HealthStatus(healthy, consecutive, error, self._clock())
        if self._scheduler.is_up(key) != healthy:
            if healthy:
                self._scheduler.mark_up(key)
            else:
                self._scheduler.mark_down(key)
