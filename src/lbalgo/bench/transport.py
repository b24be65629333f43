"""The httpx transports: what balancing costs per request next to a plain httpx client.

Both clients talk to the same local HTTP/1.1 keep-alive server, run in a child process so
that its work does not share our interpreter; they are timed in alternating batches, and the
ratio of each round is kept, so both see the same machine load. A second table times the same
clients over ``httpx.MockTransport`` (no network at all): the overhead of the transport alone.
Needs the ``httpx`` extra (the module is skipped with a note without it).
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from lbalgo.backend import Backend, BackendGroup
from lbalgo.bench._core import Table, sample_taken
from lbalgo.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport
from lbalgo.scheduler import Scheduler
from lbalgo.swrr import SmoothWeightedRoundRobin
from lbalgo.wlc import WeightedLeastConnections

__all__ = ["run"]

ROUNDS = 5
"""Alternating batches per client; the median ratio over the rounds is reported."""

_SERVER = """
import asyncio, sys
REPLY = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nContent-Type: text/plain\\r\\n\\r\\nok"
async def handle(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(REPLY)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


@contextmanager
def _local_server() -> Iterator[int]:
    child = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        yield int(child.stdout.readline())
    finally:
        child.terminate()
        child.wait(10)


def _schedulers(port: int) -> list[tuple[str, Scheduler]]:
    group = BackendGroup([Backend("127.0.0.1", port)])
    return [
        ("SmoothWeightedRoundRobin", SmoothWeightedRoundRobin(group)),
        ("WeightedLeastConnections", WeightedLeastConnections(group)),
    ]


def _sync_us(client: httpx.Client, url: str, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        client.get(url)
    return (time.perf_counter() - start) / count * 1e6


def _async_us(
    loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, url: str, count: int
) -> float:
    async def batch() -> float:
        start = time.perf_counter()
        for _ in range(count):
            await client.get(url)
        return (time.perf_counter() - start) / count * 1e6

    return loop.run_until_complete(batch())


def _compare(
    plain: Callable[[], float], balanced: Callable[[], float], rounds_: int
) -> tuple[float, ...]:
    plain(), balanced()  # warm up: connections opened, code paths hot
    rounds = []
    for _ in range(rounds_):
        a, b = plain(), balanced()
        sample_taken()
        rounds.append((a, b, b / a))
    return tuple(statistics.median(column) for column in zip(*rounds, strict=True))


def _table(title: str, port: int | None, count: int, rounds: int) -> Table:
    table = Table(
        title,
        ["client", "scheduler", "plain httpx µs/request", "balanced µs/request", "ratio"],
    )
    url = f"http://127.0.0.1:{port}/" if port else "http://127.0.0.1:1/"
    for name, sched in _schedulers(port or 1):
        mock = httpx.MockTransport(lambda request: httpx.Response(200, text="ok"))
        inner: httpx.BaseTransport = mock if port is None else httpx.HTTPTransport()
        with (
            httpx.Client(transport=mock if port is None else httpx.HTTPTransport()) as plain,
            httpx.Client(transport=LoadBalancedTransport(sched, transport=inner)) as balanced,
        ):
            a, b, ratio = _compare(
                functools.partial(_sync_us, plain, url, count),
                functools.partial(_sync_us, balanced, url, count),
                rounds,
            )
        table.rows.append(["sync", name, a, b, ratio])
    loop = asyncio.new_event_loop()
    try:
        for name, sched in _schedulers(port or 1):
            amock = httpx.MockTransport(lambda request: httpx.Response(200, text="ok"))
            ainner: httpx.AsyncBaseTransport = amock if port is None else httpx.AsyncHTTPTransport()
            aplain = httpx.AsyncClient(
                transport=amock if port is None else httpx.AsyncHTTPTransport()
            )
            abalanced = httpx.AsyncClient(
                transport=AsyncLoadBalancedTransport(sched, transport=ainner)
            )
            a, b, ratio = _compare(
                functools.partial(_async_us, loop, aplain, url, count),
                functools.partial(_async_us, loop, abalanced, url, count),
                rounds,
            )
            loop.run_until_complete(aplain.aclose())
            loop.run_until_complete(abalanced.aclose())
            table.rows.append(["async", name, a, b, ratio])
            assert all(s.open_connections == 0 for s in sched.stats().values())
    finally:
        loop.close()
    return table


def run(quick: bool = False) -> list[Table]:
    """The two tables: over a local server, and over ``httpx.MockTransport``."""
    count = 10 if quick else 100
    rounds = 1 if quick else ROUNDS
    with _local_server() as port:
        network = _table(
            "httpx transport: one GET to a local keep-alive server, plain client vs balanced",
            port,
            count,
            rounds,
        )
    network.notes.append(
        f"{count} requests per batch, batches of both clients alternating, median of "
        f"{rounds} rounds; one backend (the same server) so the only difference is lbalgo"
    )
    alone = _table(
        "httpx transport over httpx.MockTransport: the balancing overhead alone",
        None,
        count * 3,
        rounds,
    )
    alone.notes.append(
        "no network: each client's inner transport answers at once, so the ratio is the "
        "cost of connection(), the URL rewrite, the wrapped response stream and the release"
    )
    return [network, alone]
