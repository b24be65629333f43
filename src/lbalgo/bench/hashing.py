"""Consistent source-IP hashing: SourceIPHash against the Python libraries people use.

Peers: ``uhashring`` and ``hashring`` (rings with 160 points per node), ``clandestined``
(rendezvous hashing) and ``jump-consistent-hash`` (module ``jump``; jump hash can only drop the
last bucket, so removing a backend in the middle shifts every later one). For every group size
the same clients go through every contender, in one run:

- lookup cost per client: ours is ``pick(address)`` (parsing the address and counting the
  pick), theirs ``get_node(address)`` / ``find_node`` / ``jump.hash(mmh3(address), n)``;
- balance: the busiest backend's clients over the mean, next to the same figure for a purely
  random assignment of the same sample (the sampling-noise floor);
- movement when the middle backend is removed: clients moved over the ideal (those of the
  removed backend), and the share of all clients that moved between two staying backends;
- build time of a group (ours builds a 393,209-cell table; the rings sort their points).

A second table gives the bounded-load pick cost (``balance_factor=1.25``) next to the plain one.
"""

from __future__ import annotations

import importlib
import ipaddress
import random
import time
from collections import Counter
from collections.abc import Callable
from types import ModuleType

import mmh3

from lbalgo.backend import Backend, BackendGroup
from lbalgo.bench._core import Table, empty_call_ns, time_loop
from lbalgo.source_ip_hash import SourceIPHash

__all__ = ["run"]

SIZES = (10, 100, 500)
QUICK_SIZES = (10, 100)

Lookup = Callable[[str], object]


def _peer(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def _nodes(n: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(n)]


def _clients(count: int) -> list[str]:
    rng = random.Random(count)
    return [str(ipaddress.IPv4Address(v)) for v in rng.sample(range(1 << 32), count)]


def _ours(nodes: list[str]) -> Lookup:
    # pick itself is the lookup (as get_node is theirs); _name maps its answer to a node name
    return SourceIPHash(
        BackendGroup(Backend(node.rsplit(":", 1)[0], 8080) for node in nodes)
    ).pick


def _name(answer: object) -> object:
    return answer.key if isinstance(answer, Backend) else answer


def _builders() -> dict[str, Callable[[list[str]], Lookup] | str]:
    """Each contender's builder, or the note why it is skipped."""
    builders: dict[str, Callable[[list[str]], Lookup] | str] = {"lbalgo SourceIPHash": _ours}
    uhashring, hashring = _peer("uhashring"), _peer("hashring")
    clandestined, jump = _peer("clandestined"), _peer("jump")
    if uhashring is not None:
        builders["uhashring"] = lambda nodes: uhashring.HashRing(nodes=nodes).get_node
    else:
        builders["uhashring"] = "uhashring is not installed"
    if hashring is not None:
        builders["hashring"] = lambda nodes: hashring.HashRing(nodes).get_node
    else:
        builders["hashring"] = "hashring is not installed"
    if clandestined is not None:
        builders["clandestined"] = lambda nodes: clandestined.RendezvousHash(
            nodes=list(nodes)
        ).find_node
    else:
        builders["clandestined"] = "clandestined is not installed"
    if jump is not None:

        def jump_builder(nodes: list[str]) -> Lookup:
            count, pick, hash32 = len(nodes), jump.hash, mmh3.hash
            return lambda address: nodes[pick(hash32(address, 0, False), count)]

        builders["jump"] = jump_builder
    else:
        builders["jump"] = "jump-consistent-hash (module jump) is not installed"
    return builders


def _random_floor(clients: int, n: int) -> float:
    """Busiest over mean for a purely random assignment of the same number of clients."""
    rng = random.Random(n)
    counts = Counter(rng.randrange(n) for _ in range(clients))
    return max(counts.values()) / (clients / n)


def _lookup_ns(lookup: Lookup, clients: list[str], loops: int) -> float:
    sample = clients[:1000]

    def body(rounds: int) -> None:
        for _ in range(rounds // len(sample)):
            for address in sample:
                lookup(address)

    return time_loop(body, loops)


def run(quick: bool = False) -> list[Table]:
    """Lookup cost, balance, movement and build time for every contender, by size."""
    sizes = QUICK_SIZES if quick else SIZES
    clients = _clients(2_000 if quick else 100_000)
    loops = 2_000 if quick else 20_000
    floor = empty_call_ns(loops)
    builders = _builders()
    table = Table(
        "Consistent source-IP hashing: lookup, balance, movement on removing one backend",
        [
            "backends",
            "library",
            "lookup ns / ours",
            "lookup / empty call",
            "busiest / mean",
            "moved / ideal",
            "moved between stayers",
            "build ms",
        ],
    )
    for n in sizes:
        nodes = _nodes(n)
        gone = nodes[n // 2]
        remaining = [node for node in nodes if node != gone]
        ours_ns = 0.0
        for name, builder in builders.items():
            if isinstance(builder, str):
                continue
            start = time.perf_counter()
            lookup = builder(nodes)
            build_ms = (time.perf_counter() - start) * 1000
            cost = _lookup_ns(lookup, clients, loops)
            if name == "lbalgo SourceIPHash":
                ours_ns = cost
            before = [_name(lookup(address)) for address in clients]
            after_lookup = builder(remaining)
            after = [_name(after_lookup(address)) for address in clients]
            counts = Counter(before)
            moved = sum(a != b for a, b in zip(before, after, strict=True))
            stray = sum(a != b and a != gone for a, b in zip(before, after, strict=True))
            table.rows.append(
                [
                    n,
                    name,
                    cost / ours_ns,
                    cost / floor,
                    max(counts.values()) / (len(clients) / n),
                    moved / (len(clients) / n),
                    f"{stray / len(clients):.2%}",
                    build_ms,
                ]
            )
        table.notes.append(
            f"{n} backends: a random assignment of the same {len(clients):,} clients gives "
            f"busiest / mean {_random_floor(len(clients), n):.3f} (sampling noise alone)"
        )
    table.notes.extend(
        [
            f"lookup: median of 5 runs of {loops:,} lookups over 1,000 distinct IPv4 clients; "
            "ours includes parsing the address and counting the pick",
            "moved / ideal: clients that changed backend when the middle backend was removed, "
            "over the clients an ideal scheme moves (1/n of them)",
            *(f"skipped: {note}" for note in builders.values() if isinstance(note, str)),
        ]
    )
    return [table, _bounded(quick, floor, loops)]


def _bounded(quick: bool, floor: float, loops: int) -> Table:
    table = Table(
        "Bounded-load hashing (balance_factor=1.25): pick + release against plain hashing",
        ["backends", "bounded / plain", "plain / empty call", "bounded / empty call"],
    )
    clients = _clients(1000)
    for n in QUICK_SIZES if quick else SIZES:
        group = BackendGroup(Backend(f"10.0.{i // 250}.{i % 250 + 1}", 8080) for i in range(n))
        costs = []
        for sched in (SourceIPHash(group), SourceIPHash(group, balance_factor=1.25)):
            # a standing load of 5 connections per backend, so the caps are in play
            for i in range(5 * n):
                sched.pick(clients[i % len(clients)])
            def body(rounds: int, sched: SourceIPHash = sched) -> None:
                pick, release = sched.pick, sched.release
                for i in range(rounds):
                    release(pick(clients[i % 1000]))

            costs.append(time_loop(body, loops))
        plain, bounded = costs
        table.rows.append([n, bounded / plain, plain / floor, bounded / floor])
    table.notes.append(
        "bounded mode takes the scheduler's lock and keeps exact open counts on every pick; "
        f"plain mode is lock-free; median of 5 runs of {loops:,} pick+release pairs"
    )
    return table
