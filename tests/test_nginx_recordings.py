"""Recordings of a real nginx, replayed pick for pick through the plain models of its C code
(lbalgo.testing.nginx) and through ``load_upstream(...).scheduler()``.

Each test starts loopback backends and a single-process nginx (``worker_processes 1``, one try
per request, ``$upstream_addr`` and nginx's clock in response headers), drives it, and records
every try: which peer, whether it failed, and nginx's second. Recorded during the run, never
stored. Skipped with a clear reason when nginx is not installed; CI installs it.
"""

from __future__ import annotations

import queue
import random
import socket
import time
from collections.abc import Callable

import pytest

from lbalgo.nginx import load_upstream
from lbalgo.testing.nginx import NginxPeer, NginxPeers
from nginx_harness import (
    Attempt,
    HeldRequest,
    NginxProxy,
    loopback_backends,
    nginx_proxy,
    require_nginx,
)

pytestmark = pytest.mark.nginx

_MAX_ATTEMPTS = 400  # bound on the requests of one recording
_SPACING = 0.025  # seconds between requests while a phase lasts


def _aligned(send: Callable[[], Attempt]) -> Attempt:
    """``send`` away from a second's end: nginx's clock then reads the same second for the
    pick and for a failure reported by the same request."""
    fraction = time.time() % 1.0
    if fraction > 0.9:
        time.sleep(1.0 - fraction + 0.01)
    return send()


def _record_phase(proxy: NginxProxy, seconds: float, out: list[Attempt]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(out) < _MAX_ATTEMPTS:
        out.append(_aligned(proxy.attempt))
        time.sleep(_SPACING)


def _replay_model(peers: NginxPeers, addresses: list[str], record: list[Attempt]) -> list[str]:
    picked = []
    for attempt in record:
        index = peers.get_round_robin_peer(attempt.second)
        assert index is not None
        picked.append(addresses[index])
        peers.free_peer(index, attempt.second, failed=attempt.status != 200)
    return picked


def _replay_scheduler(text: str, record: list[Attempt]) -> list[str]:
    now = [0.0]
    sched = load_upstream(text).scheduler(clock=lambda: now[0])
    picked = []
    for attempt in record:
        now[0] = float(attempt.second)
        lease = sched.connection()
        picked.append(lease.backend.key)
        if attempt.status == 200:
            lease.release()
        else:
            lease.fail()
    return picked


@pytest.fixture(scope="module")
def swrr_recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Attempt]]:
    """nginx's round robin with max_fails=2 fail_timeout=1s while the heaviest backend is
    stopped for about 3 s (failures, a failed trial) and then restarted (a good trial, then
    effective_weight climbing back one pick at a time)."""

    binary = require_nginx()
    weights = [5, 3, 2, 1]
    with loopback_backends(len(weights)) as backends:
        text = "\n".join(
            f"server {b.address} weight={w} max_fails=2 fail_timeout=1s;"
            for b, w in zip(backends, weights, strict=True)
        )
        workdir = tmp_path_factory.mktemp("nginx-swrr")
        with nginx_proxy(text, workdir=workdir, binary=binary) as proxy:
            record: list[Attempt] = []
            for _ in range(12):
                record.append(_aligned(proxy.attempt))
            backends[0].stop()
            _record_phase(proxy, 3.3, record)
            backends[0].restart()
            _record_phase(proxy, 3.3, record)
    return text, record


def test_swrr_recording_is_meaningful(swrr_recording: tuple[str, list[Attempt]]) -> None:
    text, record = swrr_recording
    first = load_upstream(text).group.keys()[0]
    failures = [a for a in record if a.status != 200]
    assert failures
    assert all(a.upstream == first for a in failures)
    # two failures, then at least one failed trial after fail_timeout, then a good trial
    assert len(failures) >= 3
    last_failure = record.index(failures[-1])
    assert any(a.upstream == first and a.status == 200 for a in record[last_failure:])


def test_swrr_model_matches_nginx(swrr_recording: tuple[str, list[Attempt]]) -> None:
    text, record = swrr_recording
    upstream = load_upstream(text)
    peers = NginxPeers(
        [NginxPeer(s.backend.weight, s.max_fails, s.fail_timeout) for s in upstream.servers]
    )
    assert _replay_model(peers, list(upstream.group.keys()), record) == [
        a.upstream for a in record
    ]


def test_swrr_scheduler_matches_nginx(swrr_recording: tuple[str, list[Attempt]]) -> None:
    text, record = swrr_recording
    assert _replay_scheduler(text, record) == [a.upstream for a in record]


@pytest.fixture(scope="module")
def least_conn_recording(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, list[tuple[str, str]]]:
    """nginx's least_conn with requests held open by the backends and released in a seeded
    order: a list of ("pick", address) and ("release", address)."""

    binary = require_nginx()
    weights = [3, 1, 2, 2, 1, 4]
    rng = random.Random(16)
    with loopback_backends(len(weights)) as backends:
        text = "least_conn;\n" + "\n".join(
            f"server {b.address} weight={w};" for b, w in zip(backends, weights, strict=True)
        )
        arrivals: queue.Queue[HeldRequest] = queue.Queue()
        address = {b.ident: b.address for b in backends}
        for backend in backends:
            backend.hold(arrivals)
        workdir = tmp_path_factory.mktemp("nginx-least-conn")
        ops: list[tuple[str, str]] = []
        held: list[tuple[socket.socket, HeldRequest]] = []
        with nginx_proxy(text, workdir=workdir, binary=binary) as proxy:
            try:
                for step in range(160):
                    # phases of light load (ties at 0) and of piling up
                    limit = 1 if (step // 40) % 2 == 0 else 12
                    if held and (len(held) >= limit or rng.random() < 0.4):
                        client, request = held.pop(rng.randrange(len(held)))
                        request.released.set()
                        done = proxy.finish(client)
                        assert done.status == 200
                        assert done.upstream == address[request.backend]
                        ops.append(("release", address[request.backend]))
                    else:
                        client = proxy.send(f"/r{step}")
                        request = arrivals.get(timeout=10)
                        assert request.path == f"/r{step}"
                        held.append((client, request))
                        ops.append(("pick", address[request.backend]))
                while held:
                    client, request = held.pop()
                    request.released.set()
                    proxy.finish(client)
                    ops.append(("release", address[request.backend]))
            finally:
                for client, request in held:
                    request.released.set()
                    client.close()
    return text, ops


def test_least_conn_recording_is_meaningful(
    least_conn_recording: tuple[str, list[tuple[str, str]]],
) -> None:
    text, ops = least_conn_recording
    picked = {address for op, address in ops if op == "pick"}
    assert picked == set(load_upstream(text).group.keys())
    assert sum(op == "pick" for op, _ in ops) == sum(op == "release" for op, _ in ops)


def test_least_conn_model_matches_nginx(
    least_conn_recording: tuple[str, list[tuple[str, str]]],
) -> None:
    text, ops = least_conn_recording
    upstream = load_upstream(text)
    keys = list(upstream.group.keys())
    peers = NginxPeers([NginxPeer(s.backend.weight) for s in upstream.servers])
    expected, got = [], []
    for op, address in ops:
        if op == "pick":
            index = peers.get_least_conn_peer(now=0)
            assert index is not None
            got.append(keys[index])
            expected.append(address)
        else:
            peers.free_peer(keys.index(address), now=0, failed=False)
    assert got == expected


def test_least_conn_scheduler_matches_nginx(
    least_conn_recording: tuple[str, list[tuple[str, str]]],
) -> None:
    text, ops = least_conn_recording
    upstream = load_upstream(text)
    sched = upstream.scheduler()
    expected, got = [], []
    for op, address in ops:
        if op == "pick":
            got.append(sched.pick().key)
            expected.append(address)
        else:
            sched.release(upstream.group[address])
    assert got == expected
