"""Connection ledgers: pick + release with the fleet-wide RedisLedger against the local one.

Both run behind the same :class:`~lbalgo.WeightedLeastConnections`, half the backends holding
open connections (as in ``wlc``). The Redis figures are on loopback against a redis-server
this module starts for itself (persistence off) and are compared with one ``PING`` round
trip through redis-py, the floor of any remote call. Round trips are counted at
the client (every command sent is one round trip: nothing is pipelined), and the commands
each script runs inside Redis by ``INFO commandstats``.
Skipped with a note when redis-server or redis-py is not installed.
"""

from __future__ import annotations

import importlib.util
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lbalgo.bench._core import (
    Table,
    empty_call_ns,
    load_half,
    ns_per_call,
    pick_release_ns,
    sample_group,
)
from lbalgo.bench._redis_server import RedisServer, find_redis_server
from lbalgo.redis_ledger import RedisLedger
from lbalgo.wlc import WeightedLeastConnections

__all__ = ["run"]

SIZES = (8, 50, 500)
QUICK_SIZES = (8,)

_TITLE = "Fleet ledger: pick + release through WeightedLeastConnections, Redis on loopback"
_COLUMNS = [
    "backends",
    "redis / local (x slower)",
    "redis / PING round trip",
    "local / empty call",
]


def _commands(client: Any) -> int:
    """Commands Redis has run since the last reset (those the script runs included), minus
    the INFO asking for them."""
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def _count_calls(ledger: RedisLedger) -> list[int]:
    """Count every command the ledger's client sends from now on: one round trip each."""
    sent = [0]
    client = ledger.client
    send: Callable[..., Any] = client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        sent[0] += 1
        return send(*args, **options)

    client.execute_command = counting
    return sent


def _round_trips(client: Any, ledger: RedisLedger, picks: int) -> list[list[object]]:
    """Rows: round trips and Redis commands per acquire and per release, script time."""
    ledger.acquire()  # the script is loaded and this owner registered: steady state
    sent = _count_calls(ledger)
    client.config_resetstat()
    keys = [ledger.acquire() for _ in range(picks)]
    acquire_trips, acquire_commands = sent[0] / picks, _commands(client) / picks
    usec = float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    sent[0] = 0
    client.config_resetstat()
    for key in keys:
        if key is not None:
            ledger.release(key)
    release_trips, release_commands = sent[0] / picks, _commands(client) / picks
    return [
        ["round trips per pick (acquire)", acquire_trips, acquire_commands, usec, "1"],
        ["round trips per release", release_trips, release_commands, "", "-"],
    ]


def _skipped(reason: str) -> list[Table]:
    table = Table(_TITLE, _COLUMNS)
    table.notes.append(f"skipped: {reason}")
    return [table]


def run(quick: bool = False) -> list[Table]:
    """RedisLedger against LocalLedger by size, and the round trips per pick and release."""
    if find_redis_server() is None:
        return _skipped("redis-server is not installed")
    if importlib.util.find_spec("redis") is None:
        return _skipped("redis-py is not installed (pip install 'lbalgo[redis]')")
    import redis

    sizes = QUICK_SIZES if quick else SIZES
    loops = 200 if quick else 2_000
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory)) as server:
        client = redis.Redis.from_url(server.url)
        ledgers: list[RedisLedger] = []
        try:
            speed = Table(_TITLE, _COLUMNS)
            for n in sizes:
                group = sample_group(n)
                local = WeightedLeastConnections(group)
                ledger = RedisLedger(server.url, namespace=f"bench-{uuid.uuid4().hex}")
                ledgers.append(ledger)
                remote_sched = WeightedLeastConnections(group, ledger=ledger)
                load_half(local, group)
                load_half(remote_sched, group)
                # back to back: the floor, the PING floor, the local and the Redis ledger
                floor = empty_call_ns(loops)
                ping = ns_per_call(client.ping, loops)
                local_ns = pick_release_ns(local, loops)
                remote = pick_release_ns(remote_sched, loops)
                speed.rows.append([n, remote / local_ns, remote / ping, local_ns / floor])
                if n != sizes[-1]:
                    ledger.close()  # no heartbeat of its own in the counts below
            trips = Table(
                "Fleet ledger: Redis round trips per operation",
                [
                    "operation",
                    "round trips",
                    "Redis commands (EVALSHA + its script)",
                    "script us/call",
                    "goal (issue 9)",
                ],
            )
            trips.rows += _round_trips(client, ledger, 100 if quick else 1_000)
        finally:
            for ledger in ledgers:
                ledger.close()  # idempotent
            client.close()
    speed.notes.append(
        f"median of 5 runs of {loops:,} pick+release pairs through redis-py on loopback; "
        f"one PING round trip took {ping / 1e3:.0f} us, a Redis pick+release "
        f"{remote / 1e3:.0f} us at {sizes[-1]} backends (absolute times vary with the machine)"
    )
    speed.notes.append(
        "like for like: the same group and standing load behind the same "
        "WeightedLeastConnections; a pick and a release are one round trip each (see the "
        "next table): the cost is network and redis-py, not the O(log n) walk in the script"
    )
    trips.notes.append(
        f"at {sizes[-1]} backends, half holding connections; round trips counted at the "
        "client (every command sent; nothing is pipelined), commands by Redis (INFO "
        "commandstats: the EVALSHA and every command its script runs)"
    )
    return [speed, trips]
