"""A soak run: every operation on every scheduler (and on a Redis ledger), from threads and
asyncio tasks at once, with faults, for ``LBALGO_SOAK_SECONDS`` seconds (60 by default).

Every scheduler (smooth weighted round robin with slow start and passive health, weighted
least connections on a local and on a Redis ledger, source-IP hashing with bounded loads),
each also wrapped in ``StickySessions``, takes a mix of picks with and without ``exclude``,
``connection()`` leases (``with`` and ``async with``), failures reported through
``Lease.fail()``, ``attempts()`` retries, releases by backend, ``stats()`` and
``open_connections()``, while an operator thread marks backends down and up, changes
weights, removes and re-adds backends, and empties the Redis store (FLUSHALL).

At checkpoints every worker parks holding its leases; then each scheduler's internal
invariants hold (``_check()``, where a scheduler has one), each backend's open count equals
the leases the workers hold on it exactly (a Redis ledger's fleet count too), and at the end,
with every lease released, every count is 0. Memory (tracemalloc) is flat: what is traced
after the run, everything released, exceeds what was traced after the warm-up by less than
``MEMORY_BOUND`` bytes, not counting the source-IP hash tables in use at either moment (each
of a fixed size, at most one per SourceIPHash; schedulers whose groups agree share one, so
how many there are moves with the updates, not with the history). Every loop is bounded in
time; the whole run in ``SECONDS + 60``.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import random
import sys
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from lbalgo import (
    Backend,
    BackendGroup,
    Lease,
    NoBackendAvailable,
    RedisLedger,
    Scheduler,
    SmoothWeightedRoundRobin,
    SourceIPHash,
    StickySessions,
    WeightedLeastConnections,
    attempts,
)
from lbalgo.bench._redis_server import RedisServer
from lbalgo.testing import check_internals
from redis_server import redis_server

__all__ = ["redis_server"]  # the fixture used below

pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.redis]

SECONDS = float(os.environ.get("LBALGO_SOAK_SECONDS", "60"))
CHECKPOINT_EVERY = min(10.0, max(SECONDS / 4, 1.0))  # seconds between parked checks
MEMORY_BOUND = 1 << 20  # 1 MiB: traced growth from the warm-up to the end, all released
THREADS = 3
TASKS = 12
BACKENDS = 12
HASH_UPDATE_EVERY = 5.0


@dataclass
class Held:
    """What the workers hold on one scheduler: leases and picks by backend key, with the
    key's generation (a key removed by ``update`` starts a new generation when it comes
    back; what was held before is forgotten by the scheduler and never released)."""

    leases: list[tuple[Lease, int]] = field(default_factory=list)
    picks: list[tuple[Backend, int]] = field(default_factory=list)


class SharedLock:
    """Many holders in shared mode, or one in exclusive mode (which new shared holders wait
    for once it is asked for, so that it is not starved)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.shared = 0
        self.exclusive = False
        self.wanted = 0  # exclusive holders waiting

    def __enter__(self) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: not self.exclusive and not self.wanted, timeout=60)
            self.shared += 1

    def __exit__(self, *_: object) -> None:
        with self.cond:
            self.shared -= 1
            self.cond.notify_all()

    def exclusively(self) -> Exclusive:
        return Exclusive(self)


class Exclusive:
    def __init__(self, lock: SharedLock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        with self.lock.cond:
            self.lock.wanted += 1
            assert self.lock.cond.wait_for(
                lambda: not self.lock.exclusive and self.lock.shared == 0, timeout=60
            )
            self.lock.wanted -= 1
            self.lock.exclusive = True

    def __exit__(self, *_: object) -> None:
        with self.lock.cond:
            self.lock.exclusive = False
            self.lock.cond.notify_all()


class Subject:
    """One scheduler under soak, with the tally of what the workers hold on it."""

    def __init__(self, name: str, sched: Scheduler, ledger: RedisLedger | None = None):
        self.name, self.sched, self.ledger = name, sched, ledger
        self.lock = threading.Lock()  # guards the tally, never the scheduler
        # pick-and-record is shared, removing a key exclusive: a lease is recorded with the
        # generation its key had when it was picked (the scheduler itself is not locked)
        self.membership = SharedLock()
        self.generation: Counter[str] = Counter()
        self.held: dict[int, Held] = {}  # by worker id
        # seconds between group updates (weights, removals, additions); a SourceIPHash
        # update walks one backend's share of its 393,209-cell table, so it gets one every
        # few seconds (its table's memory is fixed: owner, runner-up and a tail flag per cell)
        self.update_every = HASH_UPDATE_EVERY if "hash" in name else 0.0
        self.last_update = time.monotonic()
        self.picks = 0
        self.refused = 0  # NoBackendAvailable (every backend down/excluded at that moment)
        self.failures = 0

    def tally(self) -> Counter[str]:
        """Open connections the workers hold per key, current generation only."""
        counts: Counter[str] = Counter()
        with self.lock:
            for held in self.held.values():
                for lease, gen in held.leases:
                    key = lease.backend.key
                    if gen == self.generation[key] and key in self.sched.group:
                        counts[key] += 1
                for backend, gen in held.picks:
                    if gen == self.generation[backend.key] and backend.key in self.sched.group:
                        counts[backend.key] += 1
        return counts


def _client_pool(size: int) -> list[str]:
    rng = random.Random(4)
    v4 = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(size * 4 // 5)]
    v6 = [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(size // 5)]
    return v4 + v6


# A fixed population of clients, as behind a real proxy: what the schedulers keep per client
# (sticky bindings, SourceIPHash's cache of recent cells' rankings, both bounded by design)
# fills during the warm-up, so growth after it would be a leak, not a cache filling up.
CLIENTS = _client_pool(400)


def client_address(rng: random.Random) -> str:
    return rng.choice(CLIENTS)


class Gate:
    """Parks every worker (threads and asyncio tasks) at a checkpoint, bounded in time."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.cond = threading.Condition()
        self.closed = False
        self.parked = 0

    def wait_if_closed(self) -> None:
        with self.cond:
            if not self.closed:
                return
            self.parked += 1
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: not self.closed, timeout=60)
            self.parked -= 1

    async def wait_if_closed_async(self) -> None:
        """The same for an asyncio task: parks without blocking the event loop."""
        with self.cond:
            if not self.closed:
                return
            self.parked += 1
            self.cond.notify_all()
        deadline = time.monotonic() + 60
        while self.closed:
            assert time.monotonic() < deadline, "the gate stayed closed"
            await asyncio.sleep(0.005)
        with self.cond:
            self.parked -= 1

    def close_and_wait(self) -> None:
        with self.cond:
            self.closed = True
            assert self.cond.wait_for(lambda: self.parked == self.workers, timeout=60), (
                f"only {self.parked} of {self.workers} workers parked"
            )

    def open(self) -> None:
        with self.cond:
            self.closed = False
            self.cond.notify_all()


def one_operation(subject: Subject, worker: int, rng: random.Random) -> None:
    """One random operation of a worker on a subject (never holds more than 8 there)."""
    held = subject.held.setdefault(worker, Held())
    client = client_address(rng)
    roll = rng.random()
    try:
        with subject.membership:
            pick_or_release(subject, held, client, roll, rng)
    except NoBackendAvailable:
        with subject.lock:
            subject.refused += 1


def pick_or_release(
    subject: Subject, held: Held, client: str, roll: float, rng: random.Random
) -> None:
    sched = subject.sched
    if len(held.leases) + len(held.picks) >= 8 or roll < 0.35:
        release_one(subject, held, rng)
    elif roll < 0.55:
        keys = sched.group.keys()
        exclude = set(rng.sample(keys, k=min(len(keys), rng.randint(0, 2))))
        lease = sched.connection(client, exclude=exclude)
        assert lease.backend.key not in exclude
        record(subject, held, lease=lease)
    elif roll < 0.7:
        backend = sched.pick(client)
        record(subject, held, backend=backend)
    elif roll < 0.8:
        for lease in attempts(sched, client, tries=2):
            if rng.random() < 0.5:
                lease.fail()  # a connect error: passive health counts it
                with subject.lock:
                    subject.failures += 1
                continue
            record(subject, held, lease=lease)
            break
    elif roll < 0.9:
        with sched.connection(client) as lease:
            with subject.lock:
                subject.picks += 1
            assert lease.backend.weight > 0 or lease.backend.key not in sched.group
    else:
        stats = sched.stats()
        assert all(s.open_connections >= 0 for s in stats.values())
        keys = sched.group.keys()
        assert all(sched.open_connections(k) >= 0 for k in keys)


def record(
    subject: Subject, held: Held, *, lease: Lease | None = None, backend: Backend | None = None
) -> None:
    with subject.lock:
        subject.picks += 1
        if lease is not None:
            held.leases.append((lease, subject.generation[lease.backend.key]))
        elif backend is not None:
            held.picks.append((backend, subject.generation[backend.key]))


def release_one(subject: Subject, held: Held, rng: random.Random) -> None:
    with subject.lock:
        if held.leases and (not held.picks or rng.random() < 0.5):
            lease, _ = held.leases.pop(rng.randrange(len(held.leases)))
            backend = None
        elif held.picks:
            lease = None
            backend, gen = held.picks.pop(rng.randrange(len(held.picks)))
            if gen != subject.generation[backend.key]:
                return  # forgotten by the scheduler when its key was removed
        else:
            return
    if lease is not None:
        lease.fail() if rng.random() < 0.05 else lease.release()
        lease.release()  # idempotent
    elif backend is not None:
        subject.sched.release(backend)


def release_all(subjects: list[Subject]) -> None:
    for subject in subjects:
        for held in subject.held.values():
            for lease, _ in held.leases:
                lease.release()
            for backend, gen in held.picks:
                if gen == subject.generation[backend.key]:
                    subject.sched.release(backend)
            held.leases.clear()
            held.picks.clear()


def operator(subjects: list[Subject], group: BackendGroup, rng: random.Random) -> Counter[str]:
    """One operator action on every subject: what a health checker or a deploy does."""
    done: Counter[str] = Counter()
    for subject in subjects:
        sched, keys = subject.sched, list(subject.sched.group.keys())
        roll = rng.random()
        if time.monotonic() - subject.last_update < subject.update_every:
            roll = 0.0  # a health flip only
        elif roll >= 0.3:
            subject.last_update = time.monotonic()
        if roll < 0.3 and keys:
            key = rng.choice(keys)
            sched.mark_down(key) if sched.is_up(key) else sched.mark_up(key)
            done["health flips"] += 1
        elif roll < 0.55 and keys:
            key = rng.choice(keys)
            sched.update(sched.group.with_weight(key, rng.choice([0, 1, 3, 10])))
            done["weight changes"] += 1
        elif roll < 0.8 and len(keys) > 2:
            key = rng.choice(keys)
            with subject.membership.exclusively(), subject.lock:
                sched.update(sched.group.without(key))
                subject.generation[key] += 1
            done["removals"] += 1
        else:
            missing = [b for b in group if b.key not in sched.group]
            if missing:
                sched.update(sched.group.with_backend(rng.choice(missing)))
                done["additions"] += 1
    return done


def build_subjects(url: str) -> list[Subject]:
    group = BackendGroup(
        Backend(f"10.0.{i // 250}.{i % 250 + 1}", 8080, (i % 5) + 1) for i in range(BACKENDS)
    )
    ns = "soak-" + uuid.uuid4().hex[:8]
    ledger = RedisLedger(url, namespace=ns, lease_timeout=5.0)
    passive: dict[str, Any] = {"max_fails": 2, "fail_timeout": 0.3}

    def family(ledger: RedisLedger | None = None) -> list[tuple[str, Scheduler]]:
        return [
            ("swrr", SmoothWeightedRoundRobin(group, slow_start=1.0, **passive)),
            ("wlc", WeightedLeastConnections(group, slow_start=1.0, **passive)),
            ("wlc-redis", WeightedLeastConnections(group, ledger=ledger, **passive)),
            ("hash", SourceIPHash(group, balance_factor=1.25, **passive)),
        ]

    ledger = RedisLedger(url, namespace=ns, lease_timeout=5.0)
    subjects = [
        Subject(name, sched, ledger if name == "wlc-redis" else None)
        for name, sched in family(ledger)
    ]
    sticky_ledger = RedisLedger(url, namespace=ns + "-sticky", lease_timeout=5.0)
    subjects += [
        Subject(f"sticky-{name}", StickySessions(sched, ttl=0.5, max_sessions=500),
                sticky_ledger if name == "wlc-redis" else None)
        for name, sched in family(sticky_ledger)
    ]  # fmt: skip
    return subjects


def table_bytes(subjects: list[Subject]) -> int:
    """Bytes held by the SourceIPHash tables in use (each of a bounded size, at most one per
    scheduler; copies share the kept exponentials), which the memory bound does not count."""
    tables = {}
    for subject in subjects:
        inner = getattr(subject.sched, "scheduler", subject.sched)
        table = getattr(inner, "_rendezvous", None)
        if table is not None:
            tables[id(table)] = table
    hashes = sum(isinstance(getattr(s.sched, "scheduler", s.sched), SourceIPHash) for s in subjects)
    assert len(tables) <= hashes
    buffers = {id(b): b for table in tables.values() for b in table.buffers()}
    return sum(map(sys.getsizeof, buffers.values()))


def check_exact(subjects: list[Subject]) -> None:
    """Parked: internal invariants, and open counts equal to what the workers hold."""
    for subject in subjects:
        check_internals(subject.sched)
        check_internals(getattr(subject.sched, "scheduler", None))
        tally = subject.tally()
        keys = subject.sched.group.keys()
        counts = {k: subject.sched.open_connections(k) for k in keys}
        assert counts == {k: tally[k] for k in counts}, subject.name
        if subject.ledger is not None:
            fleet = subject.ledger.counts(list(counts))
            assert fleet == counts, f"{subject.name}: the Redis ledger disagrees"


def test_soak(redis_server: RedisServer) -> None:
    redis_server.start()
    import redis

    rng = random.Random(17)
    # traced from the start: a table's buffers can outlive many updates (copies share the
    # kept exponentials), and table_bytes below must count only traced ones
    tracemalloc.start()
    subjects = build_subjects(redis_server.url)
    full_group = subjects[0].sched.group
    gate = Gate(THREADS + TASKS)
    stop = threading.Event()
    errors: list[BaseException] = []
    faults: Counter[str] = Counter()
    operations = Counter[str]()

    def thread_worker(worker: int) -> None:
        local = random.Random(worker)
        try:
            while not stop.is_set():
                gate.wait_if_closed()
                one_operation(local.choice(subjects), worker, local)
                operations["thread"] += 1
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            with gate.cond:  # a finished worker counts as parked for good
                gate.workers -= 1
                gate.cond.notify_all()

    async def task_worker(worker: int) -> None:
        local = random.Random(worker)
        while not stop.is_set():
            await gate.wait_if_closed_async()
            subject = local.choice(subjects)
            if local.random() < 0.3:
                try:
                    async with subject.sched.connection(client_address(local)) as lease:
                        await asyncio.sleep(0)
                        assert lease.backend.key
                    with subject.lock:
                        subject.picks += 1
                except NoBackendAvailable:
                    with subject.lock:
                        subject.refused += 1
            else:
                one_operation(subject, worker, local)
            operations["task"] += 1
            await asyncio.sleep(0)

    def loop_thread() -> None:
        async def main() -> None:
            tasks = [asyncio.create_task(task_worker(THREADS + i)) for i in range(TASKS)]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    errors.append(task.exception())  # type: ignore[arg-type]
                    stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run(main())
        finally:
            with gate.cond:
                gate.workers -= TASKS
                gate.cond.notify_all()

    workers = [threading.Thread(target=thread_worker, args=(i,)) for i in range(THREADS)]
    workers.append(threading.Thread(target=loop_thread))
    for worker in workers:
        worker.start()
    started = time.monotonic()
    baseline: int | None = None
    first_snapshot: tracemalloc.Snapshot | None = None
    checkpoints = 0
    flusher = redis.Redis(port=redis_server.port)
    try:
        next_check = started + CHECKPOINT_EVERY
        while time.monotonic() - started < SECONDS and not stop.is_set():
            time.sleep(0.05)
            faults.update(operator(subjects, full_group, rng))
            if rng.random() < 0.01:
                flusher.flushall()  # the store loses everything; the ledgers put it back
                faults["redis flushes"] += 1
            if time.monotonic() >= next_check:
                gate.close_and_wait()
                try:
                    check_exact(subjects)
                    checkpoints += 1
                    if baseline is None:  # the warm-up is over: bindings, tables, pools
                        gc.collect()
                        baseline = tracemalloc.get_traced_memory()[0] - table_bytes(subjects)
                        first_snapshot = tracemalloc.take_snapshot()
                finally:
                    gate.open()
                next_check = time.monotonic() + CHECKPOINT_EVERY
    finally:
        stop.set()
        gate.open()
        for worker in workers:
            worker.join(60)
        flusher.close()
    assert not errors, errors
    assert not any(worker.is_alive() for worker in workers)
    check_exact(subjects)
    release_all(subjects)
    for subject in subjects:
        keys = subject.sched.group.keys()
        assert all(subject.sched.open_connections(k) == 0 for k in keys)
        if subject.ledger is not None:
            assert subject.ledger.counts(keys) == dict.fromkeys(keys, 0)
    gc.collect()
    final = tracemalloc.get_traced_memory()[0] - table_bytes(subjects)
    assert first_snapshot is not None
    growth = tracemalloc.take_snapshot().compare_to(first_snapshot, "lineno")[:8]
    tracemalloc.stop()
    elapsed = time.monotonic() - started
    picks = sum(s.picks for s in subjects)
    print(
        f"\nsoak: {elapsed:.0f} s, {sum(operations.values())} operations "
        f"({sum(operations.values()) / elapsed:.0f}/s), {picks} picks, "
        f"{sum(s.refused for s in subjects)} refused (nothing eligible), "
        f"{sum(s.failures for s in subjects)} failures reported, faults {dict(faults)}, "
        f"{checkpoints + 1} exact checks, counts lost 0, "
        f"memory growth {(final - (baseline or final)) / 1024:.0f} KiB"
    )
    if os.environ.get("LBALGO_SOAK_TRACE"):
        print("\n".join(map(str, growth)))
    assert checkpoints >= 1
    assert baseline is not None
    assert final - baseline < MEMORY_BOUND, (
        f"memory grew by {final - baseline} bytes; most: " + "; ".join(map(str, growth))
    )
    for subject in subjects:
        if subject.ledger is not None:
            subject.ledger.close()

