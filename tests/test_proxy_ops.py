"""The example proxy in operation: reload and drain under load, graceful stop, bounds on
connections, slow clients and interim responses, passive health that only blames backends.

Real backends and the real proxy process over loopback; every loop bounded in count and time.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy_harness import TIMEOUT, Backend, ProxyProcess, Received, ok, read_reply, rss_kib, send

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    servers = [Backend(name) for name in ("a", "b", "c")]
    yield servers
    for server in servers:
        server.kill()


def _start(tmp_path: Path, *args: str) -> ProxyProcess:
    return ProxyProcess(list(args), tmp_path)


def _get(connection: http.client.HTTPConnection, path: str = "/") -> tuple[int, str]:
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, response.read().decode()


def _write_config(path: Path, backends: list[Backend], weights: list[int]) -> None:
    entries = [
        {"host": "127.0.0.1", "port": b.port, "weight": w}
        for b, w in zip(backends, weights, strict=True)
    ]
    path.write_text(json.dumps(entries))


def test_reload_drains_a_backend_under_load_with_no_error(
    tmp_path: Path, backends: list[Backend]
) -> None:
    config = tmp_path / "backends.json"
    _write_config(config, backends, [1, 1, 1])
    proxy = _start(tmp_path, "--config", str(config), "--algorithm", "wlc")
    statuses: Counter[int] = Counter()
    after_drain: Counter[str] = Counter()
    lock = threading.Lock()
    drained = threading.Event()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=TIMEOUT)
        try:
            for _ in range(150):
                status, name = _get(connection)
                with lock:
                    statuses[status] += 1
                    if drained.is_set():
                        after_drain[name] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while sum(statuses.values()) < 100 and time.monotonic() < deadline:
            time.sleep(0.005)
        _write_config(config, backends, [1, 0, 1])  # drain b: weight 0
        proxy.signal(signal.SIGHUP)
        proxy.wait_log("reloaded")
        # requests already picked before the reload may still end on b; none picked after
        drained.set()
        served_b = len(backends[1].received)
        time.sleep(0.05)
        # a broken file is logged and the running group kept
        config.write_text('[{"host": "127.0.0.1", "port": 1, "wieght": 5}]')
        proxy.signal(signal.SIGHUP)
        proxy.wait_log("reload of")
    finally:
        for thread in threads:
            thread.join(4 * TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert statuses == {200: 600}  # no client saw an error through the drain
    assert "unknown field 'wieght'" in proxy.log_text()
    assert len(backends[1].received) <= served_b + 4  # at most the ones in flight at reload
    assert after_drain["b"] <= 4
    assert after_drain["a"] > 50
    assert after_drain["c"] > 50
    assert proxy.stop() == 0
    assert "Traceback" not in proxy.log_text()


def test_toml_config_and_reload_back(tmp_path: Path, backends: list[Backend]) -> None:
    config = tmp_path / "backends.toml"
    config.write_text(
        "".join(
            f'[[backends]]\nhost = "127.0.0.1"\nport = {b.port}\nweight = {w}\n\n'
            for b, w in zip(backends, [1, 0, 0], strict=True)
        )
    )
    proxy = _start(tmp_path, "--config", str(config))
    try:
        assert {send(proxy.port, GET).responses[-1].body for _ in range(6)} == {b"a"}
        config.write_text(config.read_text().replace("weight = 0", "weight = 1"))
        proxy.signal(signal.SIGHUP)
        proxy.wait_log("reloaded")
        assert {send(proxy.port, GET).responses[-1].body for _ in range(6)} == {b"a", b"b", b"c"}
    finally:
        assert proxy.stop() == 0


def test_bad_config_at_start_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    from proxy_harness import PROXY

    config = tmp_path / "bad.json"
    config.write_text('[{"host": "127.0.0.1", "port": 80, "weight": 101}]')
    done = subprocess.run(
        [sys.executable, str(PROXY), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert "entry 0: weight" in done.stderr
    assert "Traceback" not in done.stderr


def test_graceful_stop_with_keep_alive_and_in_flight_requests(
    tmp_path: Path, backends: list[Backend]
) -> None:
    proxy = _start(tmp_path, "--backend", f"127.0.0.1:{backends[0].port}")
    idle = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=TIMEOUT)
    assert _get(idle) == (200, "a")  # now idle, kept alive
    busy = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    busy.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
    assert backends[0].holding.acquire(timeout=TIMEOUT)  # in flight at the backend
    started = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert idle.sock is not None
    idle.sock.settimeout(TIMEOUT)
    assert idle.sock.recv(1) == b""  # the idle kept-alive connection is closed at once
    # new connections are no longer accepted
    time.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        send(proxy.port, GET, wait=1.0)
    backends[0].gate.set()  # the request in flight finishes, with Connection: close
    reply = read_reply(busy)
    assert reply.status == 200
    assert reply.responses[-1].header(b"connection") == [b"close"]
    assert proxy.process.wait(TIMEOUT) == 0
    assert time.monotonic() - started < 5
    busy.close()
    idle.close()
    assert "Traceback" not in proxy.log_text()


def test_stop_is_bounded_when_a_request_does_not_finish(
    tmp_path: Path, backends: list[Backend]
) -> None:
    proxy = _start(
        tmp_path, "--backend", f"127.0.0.1:{backends[0].port}", "--shutdown-timeout", "0.5"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as busy:
        busy.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        assert backends[0].holding.acquire(timeout=TIMEOUT)
        started = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert proxy.process.wait(TIMEOUT) == 0
        assert time.monotonic() - started < 3
        assert busy.recv(1) == b""  # cut: no partial response
    assert "cut 1 connections" in proxy.log_text()
    assert "Traceback" not in proxy.log_text()


def test_connection_bound(tmp_path: Path, backends: list[Backend]) -> None:
    proxy = _start(tmp_path, "--backend", f"127.0.0.1:{backends[0].port}", "--max-connections", "2")
    try:
        held = [
            socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) for _ in range(2)
        ]
        time.sleep(0.2)  # both accepted and counted
        reply = send(proxy.port, GET)
        assert reply.status == 503
        assert reply.closed
        for sock in held:
            sock.close()
        deadline = time.monotonic() + TIMEOUT
        while send(proxy.port, GET).status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        assert proxy.stop() == 0


def test_trickling_client_holds_no_backend(tmp_path: Path, backends: list[Backend]) -> None:
    """A body sent one byte every 0.2 s: the request-body deadline ends it (408); a small
    body is read whole before any backend is picked, so no lease or backend connection
    was ever held."""
    proxy = _start(
        tmp_path,
        "--backend",
        f"127.0.0.1:{backends[0].port}",
        "--body-timeout",
        "1",
        "--read-timeout",
        "0.5",
    )
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
            started = time.monotonic()
            reply = None
            for _ in range(50):
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                sock.settimeout(0.2)
                try:
                    reply = read_reply(sock, method=b"POST", wait=0.2)
                except OSError:
                    break
                if reply.responses:
                    break
            assert reply is not None
            assert reply.status == 408
            assert time.monotonic() - started < 3
        assert backends[0].connections == 0
    finally:
        assert proxy.stop() == 0


def test_trickling_large_body_releases_its_backend(tmp_path: Path, backends: list[Backend]) -> None:
    """Past the buffered first 64 KiB a body streams to the backend; when the deadline ends
    it, the backend connection is dropped and the lease released (WLC then spreads
    sequential requests evenly again)."""
    proxy = _start(
        tmp_path,
        "--algorithm",
        "wlc",
        "--body-timeout",
        "1",
        *(f"--backend=127.0.0.1:{b.port}" for b in backends[:2]),
    )
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n")
            sock.sendall(b"x" * 100_000)
            reply = read_reply(sock, method=b"POST", wait=5)
            assert reply.status == 408
        deadline = time.monotonic() + TIMEOUT  # its partial request is dropped at the backend
        while sum(b.closed_early for b in backends[:2]) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        names = Counter(send(proxy.port, GET).responses[-1].body for _ in range(10))
        assert names == {b"a": 5, b"b": 5}
    finally:
        assert proxy.stop() == 0


def test_malformed_client_bodies_never_suspend_a_backend(
    tmp_path: Path, backends: list[Backend]
) -> None:
    """Chunk size 1_0 after 70 KB of good chunks: the request was already streaming to a
    backend. The client gets 400, and passive health (max_fails=1) counts nothing."""
    proxy = _start(
        tmp_path,
        "--max-fails",
        "1",
        "--fail-timeout",
        "30",
        *(f"--backend=127.0.0.1:{b.port}" for b in backends),
    )
    try:
        good = b"1000\r\n" + b"x" * 4096 + b"\r\n"
        bad = (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + good * 18
            + b"1_0\r\n"
            + b"y" * 16
            + b"\r\n0\r\n\r\n"
        )
        for _ in range(6):
            assert send(proxy.port, bad, method=b"POST").status == 400
        replies = [send(proxy.port, GET) for _ in range(9)]
        assert [r.status for r in replies] == [200] * 9
        assert Counter(r.responses[-1].body for r in replies) == {b"a": 3, b"b": 3, b"c": 3}
        assert "failed" not in proxy.log_text()
    finally:
        assert proxy.stop() == 0


def test_client_leaving_releases_the_lease_and_the_backend(
    tmp_path: Path, backends: list[Backend]
) -> None:
    proxy = _start(
        tmp_path, "--algorithm", "wlc", *(f"--backend=127.0.0.1:{b.port}" for b in backends[:2])
    )
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        holder = next(b for b in backends[:2] if b.holding.acquire(timeout=TIMEOUT))
        sock.close()  # the client leaves while the backend is still working
        time.sleep(0.2)
        # released: sequential requests alternate again instead of avoiding the holder
        names = Counter(send(proxy.port, GET).responses[-1].body for _ in range(10))
        assert names == {b"a": 5, b"b": 5}
        assert holder.name.encode() in names
        assert "failed" not in proxy.log_text()  # the client left: not the backend's fault
    finally:
        assert proxy.stop() == 0


def test_endless_interim_responses_to_a_client_that_does_not_read(
    tmp_path: Path, backends: list[Backend]
) -> None:
    """A backend streaming 103s without end to a client that never reads: the proxy's memory
    stays flat (backpressure, and a bound on interim responses), and the lease comes back."""
    stopped = threading.Event()

    def flood(request: object, sock: socket.socket) -> None:
        hint = b"HTTP/1.1 103 Early Hints\r\nLink: </" + b"a" * 4000 + b">\r\n\r\n"
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline:
                sock.sendall(hint * 16)
        except OSError:
            stopped.set()  # the proxy dropped the connection

    backends[0].respond = flood
    proxy = _start(
        tmp_path,
        "--algorithm",
        "wlc",
        "--read-timeout",
        "1",
        "--max-fails",
        "0",  # the flood is the backend's failure: off here, to see the lease come back
        *(f"--backend=127.0.0.1:{b.port}" for b in backends[:2]),
    )
    try:
        before = rss_kib(proxy.process.pid)
        socks = []
        for _ in range(2):  # swrr-like ties: one of these lands on the flooding backend
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(GET)
            socks.append(sock)
        assert stopped.wait(TIMEOUT)
        grown = rss_kib(proxy.process.pid) - before
        assert grown < 8 * 1024, f"grew {grown} KiB"
        for sock in socks:
            sock.close()
        time.sleep(0.2)
        backends[0].respond = None
        names = Counter(send(proxy.port, GET).responses[-1].body for _ in range(10))
        assert names == {b"a": 5, b"b": 5}  # no lease left open on either
    finally:
        assert proxy.stop() == 0
    assert "Traceback" not in proxy.log_text()


def test_no_uvloop_and_uvloop_behave_alike(tmp_path: Path, backends: list[Backend]) -> None:
    proxy = _start(tmp_path, "--no-uvloop", "--backend", f"127.0.0.1:{backends[0].port}")
    try:
        assert send(proxy.port, GET).responses[-1].body == b"a"
        assert send(proxy.port, b"GET / HTTP/1.1\nHost: t\n\n").status == 400
    finally:
        assert proxy.stop() == 0


def test_active_health_checks_take_a_backend_out_and_bring_it_back(
    tmp_path: Path, backends: list[Backend]
) -> None:
    a, b = backends[:2]
    proxy = _start(
        tmp_path,
        "--health-check",
        "http:/healthz",
        "--health-interval",
        "1",
        "--health-rise",
        "1",
        "--health-fall",
        "1",
        "--max-fails",
        "0",  # passive health off: what happens here is the checker's doing
        f"--backend=127.0.0.1:{a.port}",
        f"--backend=127.0.0.1:{b.port}",
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not any(r.target == b"/healthz" for r in b.received):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert b.received[0].header(b"user-agent") == [b"lbalgo-health"]
        port = b.port
        b.kill()
        # marked down: requests stop even trying b (no more failed attempts in the log)
        deadline = time.monotonic() + TIMEOUT
        while True:
            failures = proxy.log_text().count("failed")
            replies = [send(proxy.port, GET, probe=False) for _ in range(4)]
            assert [r.status for r in replies] == [200] * 4
            if proxy.log_text().count("failed") == failures:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        revived = Backend("b", bind_port=port)
        backends.append(revived)  # killed by the fixture
        deadline = time.monotonic() + TIMEOUT
        while not [r for r in revived.received if r.target == b"/"]:
            assert time.monotonic() < deadline
            assert send(proxy.port, GET, probe=False).status == 200
            time.sleep(0.1)
    finally:
        assert proxy.stop() == 0
    assert "Traceback" not in proxy.log_text()


def test_health_check_options_are_validated(tmp_path: Path) -> None:
    import subprocess
    import sys

    from proxy_harness import PROXY

    for args, message in (
        (["--health-check", "ftp:/x"], "expected tcp or http:/PATH"),
        (["--health-check", "tcp", "--health-interval", "0.5"], "interval"),
        (["--health-check", "tcp", "--health-rise", "11"], "healthy_threshold"),
        (["--algorithm", "swrr", "--compat", "nginx"], "--compat"),
    ):
        done = subprocess.run(
            [sys.executable, str(PROXY), "--backend", "127.0.0.1:9", *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 2, args
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_backend_connections_are_kept_alive_and_stale_ones_retried(
    tmp_path: Path, backends: list[Backend]
) -> None:
    kept, silent = backends[0], backends[1]
    kept.keep_alive = True

    def close_without_saying(request: Received, sock: socket.socket) -> None:
        ok(request, sock, "b", close=False)  # keep-alive implied, then the socket is closed

    silent.respond = close_without_saying
    proxy = _start(tmp_path, f"--backend=127.0.0.1:{kept.port}")
    try:
        for _ in range(10):
            assert send(proxy.port, GET, probe=False).responses[-1].body == b"a"
        assert len(kept.received) == 10
        assert kept.connections < 10  # reused
    finally:
        assert proxy.stop() == 0
    proxy = _start(tmp_path, f"--backend=127.0.0.1:{silent.port}", "--max-fails", "1")
    try:
        replies = [send(proxy.port, GET, probe=False) for _ in range(20)]
        assert [r.status for r in replies] == [200] * 20
        assert "failed" not in proxy.log_text()  # a stale pooled connection is no failure
    finally:
        assert proxy.stop() == 0
    proxy = _start(tmp_path, f"--backend=127.0.0.1:{kept.port}", "--upstream-keepalive", "0")
    try:
        before = kept.connections
        for _ in range(3):
            assert send(proxy.port, GET, probe=False).status == 200
        assert kept.connections == before + 3
        assert kept.received[-1].header(b"connection") == [b"close"]
    finally:
        assert proxy.stop() == 0


def test_sighup_without_a_config_file_changes_nothing(
    tmp_path: Path, backends: list[Backend]
) -> None:
    proxy = _start(tmp_path, f"--backend=127.0.0.1:{backends[0].port}")
    try:
        proxy.signal(signal.SIGHUP)
        proxy.wait_log("no --config file to reload")
        assert send(proxy.port, GET).responses[-1].body == b"a"
    finally:
        assert proxy.stop() == 0
