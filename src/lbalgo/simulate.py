"""The simulator behind ``lbalgo simulate``: a backend group's life, replayed through a scheduler.

A :class:`Scenario` describes a group in the cloud product's shape (backends with weights) and
five phases an operator lives through, one event each:

1. ``steady``: every backend up, traffic follows the weights;
2. ``failure``: the second backend fails its health check (``mark_down``);
3. ``recovery``: it passes again (``mark_up``) and takes its share back;
4. ``drain``: the last backend is set to weight 0 (``update``): its open connections end one
   by one and it gets no new ones;
5. ``scale-out``: two backends join the group (``update``).

Every request comes from a client address in a documentation range (198.51.100.0/24,
203.0.113.0/24, 2001:db8::/32; backends are in 192.0.2.0/24), holds its connection for a
simulated lifetime counted in later arrivals, and is released through its :class:`Lease`, so
open-connection counts (and least connections) behave as under real traffic. Nothing touches
the network. The request stream (clients, lifetimes) depends only on ``seed``, so every
algorithm sees the same traffic and every run prints the same figures.

>>> run = simulate(Scenario(weights=(5, 1, 1), requests=700, algorithms=("swrr",)))[0]
>>> run.phases[0].counts
(500, 100, 100, 0, 0)
>>> run.phases[1].counts  # the second backend is down
(583, 0, 117, 0, 0)
"""

from __future__ import annotations

import heapq
import ipaddress
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lbalgo._validate import shown
from lbalgo.backend import MAX_BACKENDS, MAX_WEIGHT, Backend, BackendGroup
from lbalgo.errors import InvalidOptionError, NoBackendAvailable

if TYPE_CHECKING:
    from lbalgo.scheduler import Lease, Scheduler

__all__ = [
    "ALGORITHMS",
    "TOP_BACKENDS",
    "PhaseResult",
    "RunResult",
    "Scenario",
    "json_report",
    "plotted_lines",
    "save_plot",
    "simulate",
]

ALGORITHMS: tuple[str, ...] = ("swrr", "wlc", "source-ip-hash")
"""The algorithm names the simulator (and ``--algorithm``) accepts, in display order."""

MAX_REQUESTS = 10_000_000
"""The most requests per phase a scenario may ask for (a run then takes minutes)."""

_PHASES = ("steady", "failure", "recovery", "drain", "scale-out")
_BUCKETS_PER_PHASE = 25  # resolution of the share-over-time picture


def _make_scheduler(algorithm: str, group: BackendGroup) -> Scheduler:
    # imported here so that ``lbalgo --help`` stays fast and the module imports on its own
    from lbalgo import SmoothWeightedRoundRobin, SourceIPHash, WeightedLeastConnections

    if algorithm == "swrr":
        return SmoothWeightedRoundRobin(group)
    if algorithm == "wlc":
        return WeightedLeastConnections(group)
    return SourceIPHash(group)


@dataclass(frozen=True, slots=True)
class Scenario:
    """What to simulate: the group's weights, the traffic, and which algorithms.

    ``weights``: one integer 0..100 per initial backend, at least 2 backends (one fails, one
    drains). ``requests``: requests per phase. ``mean_lifetime``: how many later requests
    arrive, on average, while one request's connection stays open (lifetimes are uniform
    from 1 to twice that, so a drain ends within ``2 * mean_lifetime`` requests).
    ``clients``: the number of distinct client addresses. A bad field raises
    :class:`~lbalgo.InvalidOptionError` (a ``ValueError``) naming the field and the value.

    >>> Scenario(weights=(5, 101))
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: weights: each weight must be an integer from 0 to 100, got 101
    """

    weights: tuple[int, ...] = (5, 1, 1)
    requests: int = 1000
    algorithms: tuple[str, ...] = ALGORITHMS
    seed: int = 0
    mean_lifetime: int = 50
    clients: int = 2048

    def __post_init__(self) -> None:
        weights = self.weights
        if not isinstance(weights, tuple) or not 2 <= len(weights) <= MAX_BACKENDS - 2:
            raise InvalidOptionError(
                f"weights: need 2 to {MAX_BACKENDS - 2} backends (room to scale out by two), "
                f"got {shown(weights)}"
            )
        for weight in weights:
            if type(weight) is not int or not 0 <= weight <= MAX_WEIGHT:
                raise InvalidOptionError(
                    f"weights: each weight must be an integer from 0 to {MAX_WEIGHT}, "
                    f"got {shown(weight)}"
                )
        if not any(weights):
            raise InvalidOptionError(
                f"weights: at least one weight must be above 0, got {shown(weights)}"
            )
        _check_count("requests", self.requests, 1, MAX_REQUESTS)
        _check_count("seed", self.seed, 0, 2**63)
        _check_count("mean_lifetime", self.mean_lifetime, 1, 1_000_000)
        _check_count("clients", self.clients, 1, 1_000_000)
        if not self.algorithms or not isinstance(self.algorithms, tuple):
            raise InvalidOptionError(f"algorithms: need at least one, got {shown(self.algorithms)}")
        for name in self.algorithms:
            if name not in ALGORITHMS:
                raise InvalidOptionError(
                    f"algorithms: unknown algorithm {shown(name)} "
                    f"(choose from {', '.join(ALGORITHMS)})"
                )
        if len(set(self.algorithms)) != len(self.algorithms):
            raise InvalidOptionError(f"algorithms: each at most once, got {shown(self.algorithms)}")

    @property
    def total_requests(self) -> int:
        """Requests over the whole run: phases x requests per phase x algorithms."""
        return len(_PHASES) * self.requests * len(self.algorithms)


def _check_count(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise InvalidOptionError(
            f"{name}: must be an integer from {low} to {high:,}, got {shown(value)}"
        )


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """What happened in one phase of one run.

    Tuples are aligned with :attr:`RunResult.backends` (every backend of the whole run, in
    group order, the two that join in ``scale-out`` last). ``weights[i]`` is ``None`` while
    backend ``i`` is not in the group. ``expected`` is each backend's ideal share of the
    phase's requests: its weight over the total weight of the backends that can take traffic.
    ``unserved`` counts requests that found no backend (a proxy would answer 502/503).
    ``open_start``/``open_end`` are open connections when the phase began/ended.
    ``drain``: for the ``drain`` phase, the draining backend's open connections after each
    request until they reach 0 (empty otherwise). ``moved``: of the clients seen both in this
    phase and the one before, the fraction whose backend changed; ``ideal_moved``: the least
    fraction of traffic that had to move (what a perfect consistent hash moves).
    """

    name: str
    title: str
    requests: int
    weights: tuple[int | None, ...]
    up: tuple[bool, ...]
    counts: tuple[int, ...]
    expected: tuple[float, ...]
    unserved: int
    open_start: tuple[int, ...]
    open_end: tuple[int, ...]
    drain: tuple[int, ...] = ()
    drain_key: str | None = None
    moved: float | None = None
    ideal_moved: float | None = None

    def shares(self) -> tuple[float, ...]:
        """Each backend's share of the phase's requests (0.0 when there were none).

        >>> run, = simulate(Scenario(weights=(3, 1), requests=8, algorithms=("swrr",)))
        >>> run.phases[0].shares()
        (0.75, 0.25, 0.0, 0.0)
        """
        return tuple(c / self.requests if self.requests else 0.0 for c in self.counts)


@dataclass(frozen=True, slots=True)
class RunResult:
    """One algorithm's run through every phase of a :class:`Scenario`.

    ``timeline`` holds, for consecutive buckets of ``bucket`` requests (the last bucket of a
    phase may be shorter), each backend's request count followed by the bucket's unserved
    count: the data behind the share-over-time picture.
    """

    algorithm: str
    backends: tuple[str, ...]
    phases: tuple[PhaseResult, ...]
    bucket: int
    timeline: tuple[tuple[int, ...], ...] = field(repr=False)

    @property
    def counts(self) -> tuple[int, ...]:
        """Requests each backend received over the whole run."""
        return tuple(sum(column) for column in zip(*(p.counts for p in self.phases), strict=True))

    @property
    def unserved(self) -> int:
        """Requests that found no backend over the whole run."""
        return sum(p.unserved for p in self.phases)


def _backends(weights: Sequence[int]) -> tuple[list[Backend], list[Backend]]:
    """The initial backends and the two that join on scale-out, all in 192.0.2.0/24
    (TEST-NET-1): hosts .11 to .250, then the same hosts again on ports 8081, 8082, ...

    The newcomers get the group's median weight (the low median, at least 1), like a
    scale-out that adds machines of the common size.
    """
    size = max(1, statistics.median_low(weights))
    every = [*weights, size, size]
    made = [
        Backend(f"192.0.2.{11 + i % 240}", 80 if i < 240 else 8080 + i // 240, weight)
        for i, weight in enumerate(every)
    ]
    return made[: len(weights)], made[len(weights) :]


def _clients(count: int, rng: random.Random) -> list[str]:
    """``count`` distinct client addresses from documentation ranges: IPv4 from
    198.51.100.0/24 and 203.0.113.0/24 first, then IPv6 from 2001:db8::/32."""
    v4 = [f"198.51.100.{i}" for i in range(1, 255)] + [f"203.0.113.{i}" for i in range(1, 255)]
    chosen = v4[:count]
    seen: set[int] = set()
    base = int(ipaddress.IPv6Address("2001:db8::"))
    while len(chosen) < count:
        low = rng.getrandbits(96)
        if low not in seen:
            seen.add(low)
            chosen.append(str(ipaddress.IPv6Address(base + low)))
    return chosen


def _ideal_moved(before: Sequence[float], after: Sequence[float]) -> float:
    # the total variation distance between two share vectors: the least traffic that must move
    return sum(max(0.0, a - b) for a, b in zip(after, before, strict=True))


class _Run:
    """The mutable state of one algorithm's run (private)."""

    def __init__(self, scenario: Scenario, algorithm: str, progress: Callable[[int], None]):
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.clients = _clients(scenario.clients, self.rng)
        initial, self.joining = _backends(scenario.weights)
        self.keys = tuple(b.key for b in (*initial, *self.joining))
        self.index = {key: i for i, key in enumerate(self.keys)}
        self.group = BackendGroup(initial)
        self.scheduler = _make_scheduler(algorithm, self.group)
        self.algorithm = algorithm
        self.progress = progress
        # (end tick, sequence number, lease): connections ending in arrival order
        self.open: list[tuple[int, int, Lease]] = []
        self.tick = 0
        self.bucket = max(1, scenario.requests // _BUCKETS_PER_PHASE)
        self.timeline: list[tuple[int, ...]] = []
        # client -> index of the last backend it got in the previous phase
        self.previous_last: dict[str, int] = {}

    def _open_counts(self) -> tuple[int, ...]:
        present = set(self.group.keys())
        return tuple(
            self.scheduler.open_connections(key) if key in present else 0 for key in self.keys
        )

    def _state(self) -> tuple[tuple[int | None, ...], tuple[bool, ...], tuple[float, ...]]:
        weights: list[int | None] = []
        up: list[bool] = []
        for key in self.keys:
            backend = self.group.get(key)
            weights.append(None if backend is None else backend.weight)
            up.append(backend is not None and self.scheduler.is_up(key))
        live = [w if w is not None and u else 0 for w, u in zip(weights, up, strict=True)]
        total = sum(live)
        expected = tuple(w / total if total else 0.0 for w in live)
        return tuple(weights), tuple(up), expected

    def phase(
        self, name: str, title: str, drain_key: str | None, prev: PhaseResult | None
    ) -> PhaseResult:
        scenario = self.scenario
        weights, up, expected = self._state()
        open_start = self._open_counts()
        counts = [0] * len(self.keys)
        bucket = [0] * len(self.keys)
        in_bucket = 0
        unserved = 0
        drain: list[int] = []
        draining = drain_key is not None and self.scheduler.open_connections(drain_key) > 0
        first_backend: dict[str, int] = {}
        last_backend: dict[str, int] = {}
        rng, clients, lifetime = self.rng, self.clients, scenario.mean_lifetime
        for done in range(1, scenario.requests + 1):
            self.tick += 1
            while self.open and self.open[0][0] <= self.tick:
                heapq.heappop(self.open)[2].release()
            # drawn before the pick so that every algorithm sees the same traffic
            client = clients[rng.randrange(len(clients))]
            ends = self.tick + rng.randint(1, 2 * lifetime)
            try:
                lease = self.scheduler.connection(client)
            except NoBackendAvailable:
                unserved += 1
            else:
                i = self.index[lease.backend.key]
                counts[i] += 1
                bucket[i] += 1
                first_backend.setdefault(client, i)
                last_backend[client] = i
                heapq.heappush(self.open, (ends, self.tick, lease))
            if draining and drain_key is not None:
                left = self.scheduler.open_connections(drain_key)
                drain.append(left)
                draining = left > 0
            in_bucket += 1
            if in_bucket == self.bucket or done == scenario.requests:
                self.timeline.append((*bucket, in_bucket - sum(bucket)))
                bucket = [0] * len(self.keys)
                in_bucket = 0
            if done % 4096 == 0:
                self.progress(4096)
        self.progress(scenario.requests % 4096)
        moved = ideal = None
        if prev is not None:
            returning = [c for c in first_backend if c in self.previous_last]
            if returning:
                changed = sum(first_backend[c] != self.previous_last[c] for c in returning)
                moved = changed / len(returning)
            ideal = _ideal_moved(prev.expected, expected)
        self.previous_last = last_backend
        return PhaseResult(
            name=name,
            title=title,
            requests=scenario.requests,
            weights=weights,
            up=up,
            counts=tuple(counts),
            expected=expected,
            unserved=unserved,
            open_start=open_start,
            open_end=self._open_counts(),
            drain=tuple(drain),
            drain_key=drain_key,
            moved=moved,
            ideal_moved=ideal,
        )

    def run(self) -> RunResult:
        keys = self.group.keys()
        failing, drained = keys[1], keys[-1]
        phases: list[PhaseResult] = []

        def phase(name: str, title: str, drain_key: str | None = None) -> None:
            phases.append(self.phase(name, title, drain_key, phases[-1] if phases else None))

        # one event per phase, so each phase's movement can be read against its own cause
        phase("steady", "steady state: every backend up")
        self.scheduler.mark_down(failing)
        phase("failure", f"{failing} fails its health check (mark_down)")
        self.scheduler.mark_up(failing)
        phase("recovery", f"{failing} passes its health check again (mark_up)")
        self.group = self.group.with_weight(drained, 0)
        self.scheduler.update(self.group)
        phase("drain", f"{drained} is set to weight 0 and drains (update)", drained)
        for backend in self.joining:
            self.group = self.group.with_backend(backend)
        self.scheduler.update(self.group)
        added = " and ".join(b.key for b in self.joining)
        phase("scale-out", f"the group scales out by two: {added} join (update)")
        for _, _, lease in self.open:
            lease.release()
        self.open.clear()
        return RunResult(
            algorithm=self.algorithm,
            backends=self.keys,
            phases=tuple(phases),
            bucket=self.bucket,
            timeline=tuple(self.timeline),
        )


def simulate(
    scenario: Scenario, *, progress: Callable[[int], None] | None = None
) -> list[RunResult]:
    """Run ``scenario`` once per algorithm it names, in order, each on a fresh scheduler.

    Costs one pick and one release per request (the algorithm's own cost) plus O(log c) for
    the c connections open at a time. ``progress``, if given, is called with the number of
    requests just simulated (in steps of a few thousand), for a progress bar.

    >>> run, = simulate(Scenario(weights=(3, 1), requests=40, algorithms=("swrr",)))
    >>> [phase.counts for phase in run.phases]  # b down; b back; b drains; c, d join
    [(30, 10, 0, 0), (40, 0, 0, 0), (30, 10, 0, 0), (40, 0, 0, 0), (24, 0, 8, 8)]
    """
    report = progress if progress is not None else (lambda _done: None)
    return [_Run(scenario, name, report).run() for name in scenario.algorithms]


# the report (JSON and picture) lives in its own module; it is part of the simulator's interface
from lbalgo.simulate_report import TOP_BACKENDS, json_report, plotted_lines, save_plot  # noqa: E402
