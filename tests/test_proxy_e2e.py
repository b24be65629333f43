"""End to end: examples/proxy.py carrying real HTTP between real sockets, loopback only.

Backends are standard-library HTTP servers on 127.0.0.1 (each answers with its name); the
proxy runs as a subprocess exactly as a user starts it; clients are ``http.client``. Every
wait is bounded by a timeout, and every load loop by a request count.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lbalgo import Backend, BackendGroup, SourceIPHash
from proxy_harness import ProxyProcess

PROXY = Path(__file__).resolve().parent.parent / "examples" / "proxy.py"
TIMEOUT = 10.0  # seconds: the bound on every single wait in this module


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Backend

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is for failures."""

    def _reply(self, status: int, body: bytes, *, chunked: bool = False) -> None:
        self.server.record()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Backend", self.server.name)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 7):
                piece = body[start : start + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _info(self, **extra: object) -> bytes:
        info = {
            "backend": self.server.name,
            "path": self.path,
            "xff": self.headers.get("X-Forwarded-For"),
            "connection": self.headers.get("Connection"),
            **extra,
        }
        return json.dumps(info).encode()

    def do_GET(self) -> None:
        if self.path == "/hold":  # a long request: answered once the test opens the gate
            self.server.holding.set()
            self.server.gate.wait(TIMEOUT)
        self._reply(200, self._info(), chunked=self.path == "/chunked")

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.read(2)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        digest = hashlib.sha256(body).hexdigest()
        self._reply(200, self._info(length=len(body), sha256=digest))


class _Backend(ThreadingHTTPServer):
    """One loopback HTTP backend that answers with its name and counts what it served."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.served = 0
        self.holding = threading.Event()
        self.gate = threading.Event()
        self._count_lock = threading.Lock()
        self.open_sockets: list[socket.socket] = []
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.alive = True

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def record(self) -> None:
        with self._count_lock:
            self.served += 1

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            self.open_sockets.append(request)
        super().process_request(request, client_address)

    def kill(self) -> None:
        """Die as a process does: stop accepting (later connects are refused) and cut every
        open connection, the proxy's idle kept-alive ones included."""
        self.gate.set()
        if self.alive:
            self.alive = False
            self.shutdown()
            self.server_close()
            self._thread.join(TIMEOUT)
            with self._count_lock:
                for sock in self.open_sockets:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)


class _Proxy(ProxyProcess):
    """examples/proxy.py in a subprocess, listening on a free loopback port, with plain
    http.client requests (the harness's start and stop)."""

    def __init__(
        self,
        algorithm: str,
        backends: list[tuple[_Backend, int]],
        tmp: Path,
        extra: Sequence[str] = (),
    ) -> None:
        args = ["--algorithm", algorithm, *extra]
        for backend, weight in backends:
            args += ["--backend", f"127.0.0.1:{backend.port}={weight}"]
        super().__init__(args, tmp)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        chunked: bool = False,
        source: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(
            "127.0.0.1",
            self.port,
            timeout=TIMEOUT,
            source_address=(source, 0) if source else None,
        )
        try:
            if chunked:
                assert body is not None
                pieces = iter([body[:5], body[5:]])
                connection.request(method, path, pieces, headers or {}, encode_chunked=True)
            else:
                connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


@pytest.fixture
def backends() -> Iterator[list[_Backend]]:
    servers = [_Backend(name) for name in ("a", "b", "c")]
    yield servers
    for server in servers:
        server.kill()


def _start(
    request: pytest.FixtureRequest,
    algorithm: str,
    backends: list[_Backend],
    weights: list[int],
    *extra: str,
) -> _Proxy:
    tmp: Path = request.getfixturevalue("tmp_path")
    proxy = _Proxy(algorithm, list(zip(backends, weights, strict=True)), tmp, extra)
    request.addfinalizer(proxy.stop)
    return proxy


def _name(body: bytes) -> str:
    return str(json.loads(body)["backend"])


def _names_on_one_connection(proxy: _Proxy, count: int) -> list[str]:
    """``count`` GETs one after another on one kept-alive connection. The proxy reads the
    next request only once it has released the previous one's lease, so the requests do not
    overlap in the scheduler; with a new connection per request, the next one may be picked
    while the proxy is still closing the previous one's upstream connection."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=TIMEOUT)
    names = []
    try:
        for _ in range(count):
            connection.request("GET", "/")
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Connection") is None  # kept alive
            names.append(_name(response.read()))
    finally:
        connection.close()
    return names


def test_swrr_splits_5_1_1_exactly_in_nginx_order(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "swrr", backends, [5, 1, 1])
    names = []
    for _ in range(70):
        status, _, body = proxy.request()
        assert status == 200
        names.append(_name(body))
    assert names[:7] == ["a", "a", "b", "a", "c", "a", "a"]
    assert Counter(names) == {"a": 50, "b": 10, "c": 10}
    assert [b.served for b in backends] == [50, 10, 10]


def test_keep_alive_connection_carries_many_requests(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "swrr", backends, [5, 1, 1])
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=TIMEOUT)
    try:
        names = []
        for _ in range(14):
            connection.request("GET", "/")
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Connection") is None  # kept alive
            names.append(_name(response.read()))
            sock = connection.sock
        assert connection.sock is sock  # one TCP connection all along
    finally:
        connection.close()
    assert Counter(names) == {"a": 10, "b": 2, "c": 2}


def test_wlc_follows_weights_when_requests_do_not_overlap(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "wlc", backends, [5, 1, 1])
    names = _names_on_one_connection(proxy, 70)
    # light load: every request ends before the next starts, so whole periods are exact
    assert Counter(names) == {"a": 50, "b": 10, "c": 10}
    for n in range(1, 71):  # and every prefix is within one pick of its share
        prefix = Counter(names[:n])
        assert all(abs(prefix[k] * 7 - n * w) <= 7 for k, w in (("a", 5), ("b", 1), ("c", 1)))


def test_wlc_avoids_backends_busy_with_long_requests(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "wlc", backends, [1, 1, 1])
    held: list[str] = []

    def long_request() -> None:
        held.append(_name(proxy.request(path="/hold")[2]))

    first = threading.Thread(target=long_request)
    first.start()
    deadline = time.monotonic() + TIMEOUT
    busy: list[_Backend] = []
    while not busy and time.monotonic() < deadline:
        busy = [b for b in backends if b.holding.wait(0.01)]
    assert len(busy) == 1
    # the long request's lease stays open while it is in flight: short ones go elsewhere
    quick = _names_on_one_connection(proxy, 6)
    assert busy[0].name not in quick
    assert Counter(quick) == {b.name: 3 for b in backends if b is not busy[0]}
    busy[0].gate.set()
    first.join(TIMEOUT)
    assert held == [busy[0].name]


def test_forwarded_for_and_hop_by_hop_headers(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "swrr", backends, [1, 1, 1])
    _, _, body = proxy.request(headers={"X-Forwarded-For": "203.0.113.7"})
    info = json.loads(body)
    assert info["xff"] == "203.0.113.7, 127.0.0.1"
    assert info["connection"] is None  # the client's hop-by-hop fields stay with the proxy
    _, _, body = proxy.request(path="/a/b?c=d")
    assert json.loads(body)["xff"] == "127.0.0.1"
    assert json.loads(body)["path"] == "/a/b?c=d"


def test_request_and_response_bodies_in_both_framings(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "swrr", backends, [1, 1, 1])
    payload = bytes(range(256)) * 300  # 76,800 bytes: several reads and writes
    digest = hashlib.sha256(payload).hexdigest()
    status, _, body = proxy.request("POST", "/upload", body=payload)
    assert status == 200
    assert json.loads(body)["sha256"] == digest
    status, _, body = proxy.request("POST", "/upload", body=payload, chunked=True)
    assert status == 200
    assert json.loads(body)["length"] == len(payload)
    assert json.loads(body)["sha256"] == digest
    status, headers, body = proxy.request("GET", "/chunked")
    assert status == 200
    assert headers.get("Transfer-Encoding") == "chunked"
    assert json.loads(body)["path"] == "/chunked"


def test_source_ip_hash_uses_the_peer_address(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "source-ip-hash", backends, [1, 1, 1])
    group = BackendGroup(Backend("127.0.0.1", b.port) for b in backends)
    by_port = {b.port: b.name for b in backends}
    for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"):
        expected = by_port[SourceIPHash(group).pick(source).port]
        got = {_name(proxy.request(source=source)[2]) for _ in range(5)}
        assert got == {expected}, source


def test_a_backend_killed_mid_run_fails_no_request(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "swrr", backends, [5, 1, 1])
    statuses: list[int] = []
    names: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    def client() -> None:
        for _ in range(40):
            status, _, body = proxy.request()
            with lock:
                statuses.append(status)
                names.append(_name(body) if status == 200 else "")
                if len(statuses) == 30:
                    backends[1].kill()
                    killed.set()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(4 * TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert killed.is_set()
    assert len(statuses) == 160
    assert statuses == [200] * 160
    after = names[35:]  # a few requests may have been in flight on b as it was killed
    assert "b" not in after
    assert Counter(after)["a"] > Counter(after)["c"] > 0


def test_killed_between_requests_then_all_dead_gives_502(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "wlc", backends, [5, 1, 1])
    for _ in range(7):
        assert proxy.request()[0] == 200
    backends[0].kill()
    names = []
    for _ in range(20):
        status, _, body = proxy.request()
        assert status == 200
        names.append(_name(body))
    assert set(names) == {"b", "c"}
    backends[1].kill()
    backends[2].kill()
    status, _, body = proxy.request()
    assert status == 502
    assert body == b"502 Bad Gateway\n"  # names no backend: they are internal addresses
    # every backend is now suspended by passive health; the proxy itself keeps answering
    status, _, body = proxy.request()
    assert status == 503
    assert body == b"503 Service Unavailable\n"
    log = proxy.log.read_text()  # the log is where the operator finds which backend failed
    assert all(f"backend 127.0.0.1:{b.port} failed" in log for b in backends[1:])


def test_malformed_request_gets_400(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    import socket

    proxy = _start(request, "swrr", backends, [1, 1, 1])
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert [b.served for b in backends] == [0, 0, 0]


def test_expect_100_continue(request: pytest.FixtureRequest, backends: list[_Backend]) -> None:
    import socket

    proxy = _start(request, "swrr", backends, [1, 1, 1])
    body = b"x" * 1000
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = sock.recv(4096)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Connection: close" in head
    assert json.loads(payload)["sha256"] == hashlib.sha256(body).hexdigest()


def test_idle_client_connections_are_closed(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    import socket

    proxy = _start(request, "swrr", backends, [1, 1, 1], "--idle-timeout", "0.3")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the proxy, not by our timeout
        assert time.monotonic() - started < TIMEOUT


def test_bad_command_lines_are_refused(tmp_path: Path) -> None:
    for args in (
        ["--backend", "127.0.0.1"],
        ["--backend", "127.0.0.1:80=101"],
        ["--backend", "127.0.0.1:80", "--backend", "127.0.0.1:80"],
        ["--backend", "127.0.0.1:80", "--idle-timeout", "-1"],
        ["--backend", "127.0.0.1:80", "--algorithm", "random"],
        [],
    ):
        done = subprocess.run(
            [sys.executable, str(PROXY), *args], capture_output=True, text=True, timeout=TIMEOUT
        )
        assert done.returncode == 2, args
        assert "error: " in done.stderr.splitlines()[-1]
        assert "Traceback" not in done.stderr


def test_source_ip_hash_client_moves_only_when_its_backend_dies(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "source-ip-hash", backends, [1, 1, 1])
    home = {_name(proxy.request()[2]) for _ in range(3)}
    assert len(home) == 1
    dead = next(b for b in backends if b.name in home)
    dead.kill()
    after = []
    for _ in range(6):
        status, _, body = proxy.request()
        assert status == 200  # the retry hides the dead backend from the client
        after.append(_name(body))
    assert len(set(after)) == 1  # and the client settles on one new backend
    assert after[0] != dead.name


def test_source_ip_hash_nginx_compat_places_clients_as_nginx(
    request: pytest.FixtureRequest, backends: list[_Backend]
) -> None:
    proxy = _start(request, "source-ip-hash", backends, [2, 1, 1], "--compat", "nginx")
    group = BackendGroup(
        Backend("127.0.0.1", b.port, w) for b, w in zip(backends, [2, 1, 1], strict=True)
    )
    nginx_like = SourceIPHash(group, compat="nginx")
    by_port = {b.port: b.name for b in backends}
    for last in range(1, 9):
        source = f"127.0.0.{last}"
        expected = by_port[nginx_like.pick(source).port]
        assert _name(proxy.request(source=source)[2]) == expected, source
