"""nginx-compatible modes: what exact parity with nginx costs.

- ``WeightedLeastConnections(compat="nginx")`` (nginx's ``least_conn`` ties) against the
  default WLC (WF2Q ties), and its ledger against nginx's own O(n) loop, pick + release, at
  8, 50 and 500 backends with half of them holding connections (so most picks are ties among
  the idle half: nginx's round-robin step over the tied peers runs on nearly every pick).
- ``SmoothWeightedRoundRobin`` steady-state pick with ``max_fails`` set (nginx's passive
  health and effective weights armed, no failure happening) against without.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lbalgo._nginx_least_conn import NginxLeastConnLedger
from lbalgo._slowstart import RAMP_STEPS
from lbalgo.backend import Backend, BackendGroup
from lbalgo.bench._core import (
    Table,
    empty_call_ns,
    load_half,
    median_rounds,
    ns_per_call,
    pick_release_ns,
    sample_group,
    time_loop,
)
from lbalgo.swrr import SmoothWeightedRoundRobin
from lbalgo.testing.nginx import NginxPeer, NginxPeers
from lbalgo.wlc import WeightedLeastConnections

__all__ = ["run"]

SIZES = (8, 50, 500)
QUICK_SIZES = (8, 50)
ROUNDS = 5


def _tiered_group(n: int) -> BackendGroup:
    """``n`` backends in three weight tiers (1, 2, 5), as fleets of a few machine sizes are."""
    return BackendGroup(
        Backend(f"10.1.{i // 250}.{i % 250 + 1}", 8080, (1, 2, 5)[i % 3]) for i in range(n)
    )


def _loaded_ledger(group: BackendGroup) -> NginxLeastConnLedger:
    ledger = NginxLeastConnLedger()
    ledger.set_eligible([(b.key, b.weight * RAMP_STEPS) for b in group])
    _load_half(ledger.acquire, ledger.release, group.keys())
    return ledger


def _loaded_model(group: BackendGroup) -> NginxPeers:
    model = NginxPeers([NginxPeer(b.weight) for b in group])

    def acquire() -> int | None:
        return model.get_least_conn_peer(0)

    def release(index: int) -> None:
        model.free_peer(index, 0, failed=False)

    _load_half(acquire, release, list(range(len(group))))
    return model


def _load_half(acquire: Callable[[], Any], release: Callable[[Any], None], keys: Any) -> None:
    """The standing load of :func:`~lbalgo.bench._core.load_half`, on a bare structure."""
    held = set(keys[: len(keys) // 2])
    for key in [acquire() for _ in range(3 * len(keys))]:
        if key not in held:
            release(key)


def _ledger_ns(ledger: NginxLeastConnLedger, loops: int) -> float:
    acquire, release = ledger.acquire, ledger.release

    def body(n: int) -> None:
        for _ in range(n):
            release(acquire())  # type: ignore[arg-type]  # never None: the group is up

    return time_loop(body, loops)


def _model_ns(model: NginxPeers, loops: int) -> float:
    get, free = model.get_least_conn_peer, model.free_peer

    def body(n: int) -> None:
        for _ in range(n):
            free(get(0), 0, failed=False)  # type: ignore[arg-type]  # never None

    return time_loop(body, loops)


def _least_conn(quick: bool) -> Table:
    cases = [(n, "1..100", sample_group(n)) for n in (QUICK_SIZES if quick else SIZES)]
    cases.append((50 if quick else 500, "1, 2, 5", _tiered_group(50 if quick else 500)))
    loops = 1_000 if quick else 10_000
    rounds = 2 if quick else ROUNDS
    contenders = []
    for n, _, group in cases:
        nginx = WeightedLeastConnections(group, compat="nginx")
        default = WeightedLeastConnections(group)
        for sched in (nginx, default):
            load_half(sched, group)
        model_loops = max(loops // 10, loops * 8 // n)  # nginx's loop is O(n): fewer loops
        contenders.append(
            (nginx, default, _loaded_ledger(group), _loaded_model(group), model_loops)
        )

    def measure() -> list[float]:
        floor = empty_call_ns(loops)
        figures: list[float] = []
        for nginx_sched, default_sched, ledger, model, model_loops in contenders:
            nginx = pick_release_ns(nginx_sched, loops)
            default = pick_release_ns(default_sched, loops)
            bare = _ledger_ns(ledger, loops)
            loop = _model_ns(model, model_loops)
            figures += [nginx / default, loop / bare, nginx / floor]
        return figures

    figures = median_rounds(measure, rounds)
    table = Table(
        "least_conn parity: WeightedLeastConnections(compat='nginx'), pick + release, half "
        "the backends holding connections",
        ["backends", "weights", "nginx-compat / default WLC",
         "nginx's O(n) loop / nginx-compat ledger (x faster)", "nginx-compat / empty call"],
    )
    for i, (n, weights, _) in enumerate(cases):
        table.rows.append([n, weights, *figures[3 * i : 3 * i + 3]])
    table.notes.append(
        f"median over {rounds} rounds of per-round ratios, contenders timed one after the "
        "other on the same group and standing load (so most picks are ties among the idle "
        "half); schedulers compared through pick + release, and the nginx-compat ledger "
        "against nginx's own loop (lbalgo.testing.nginx: get_least_conn_peer + free_peer) "
        "bare, with no scheduler around either; the ledger's pick costs O(D + log n), D the "
        "distinct weights among the tied backends (about 95 for 250 idle backends of random "
        "weights 1..100, 3 for the tiers)"
    )
    return table


def _swrr(quick: bool) -> Table:
    loops = 20_000 if quick else 200_000
    rounds = 2 if quick else ROUNDS
    sizes = QUICK_SIZES if quick else SIZES
    pairs = []
    for n in sizes:
        group = sample_group(n)
        plain = SmoothWeightedRoundRobin(group)
        armed = SmoothWeightedRoundRobin(
            group, max_fails=1, fail_timeout=10.0, clock=time.monotonic
        )
        for sched in (plain, armed):
            for _ in range(3 * group.total_weight):  # into the O(1) replay
                sched.pick()
        pairs.append((plain, armed))

    def measure() -> list[float]:
        floor = empty_call_ns(loops)
        figures: list[float] = []
        for plain, armed in pairs:
            plain_ns = ns_per_call(plain.pick, loops)
            armed_ns = ns_per_call(armed.pick, loops)
            figures += [armed_ns / plain_ns, armed_ns / floor]
        return figures

    figures = median_rounds(measure, rounds)
    table = Table(
        "SWRR steady-state pick with max_fails (nginx's passive health and effective "
        "weights armed, no failure) against without",
        ["backends", "with max_fails / without", "with max_fails / empty call"],
    )
    for i, n in enumerate(sizes):
        table.rows.append([n, *figures[2 * i : 2 * i + 2]])
    table.notes.append(
        f"median over {rounds} rounds; {loops:,} picks per figure after three periods, so "
        "both serve from the replay"
    )
    return table


def run(quick: bool = False) -> list[Table]:
    """The two parity tables (see the module docstring)."""
    return [_least_conn(quick), _swrr(quick)]
