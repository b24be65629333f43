"""A real nginx in front of loopback backends, for differential tests against lbalgo.

Reusable by any test module: start N loopback HTTP backends that each answer with their own id,
put a single-process nginx in front of them with an ``upstream`` block whose body the caller
writes (``server 127.0.0.1:PORT weight=W;`` lines, ``down``, ``hash $http_x_client
consistent;``...), send a bounded number of requests (optionally with headers) and read which
backend answered each. Everything lives in a temporary directory and on 127.0.0.1, and is torn
down on exit. nginx counts as started once it answers a probe location of its own (which takes
no pick from the upstream); if another process took its port first, another port is tried.

    with loopback_backends(3) as backends, nginx_proxy(upstream_servers(backends, [5, 1, 1]),
                                                        workdir=tmp_path) as proxy:
        proxy.answers(14)  # ['0', '0', '1', '0', '2', '0', '0', ...]

In pytest, the ``nginx_harness`` fixture does the same with automatic teardown (import it into
the test module: ``from nginx_harness import nginx_harness  # noqa: F401``); it skips the test
with a clear reason when no nginx binary is installed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.ports import free_port

__all__ = [
    "MAX_REQUESTS",
    "Attempt",
    "HeldRequest",
    "LoopbackBackend",
    "NginxHarness",
    "NginxProxy",
    "find_nginx",
    "loopback_backends",
    "nginx_harness",
    "nginx_proxy",
    "require_nginx",
    "upstream_servers",
]

MAX_REQUESTS = 200_000
"""The most requests one ``answers`` call sends: every load loop here is bounded."""

_START_TIMEOUT = 10.0  # seconds for nginx to accept connections
_REQUEST_TIMEOUT = 10.0  # seconds for one request through nginx
_PORT_ATTEMPTS = 3  # free ports tried, in case another process binds one first
_BACKEND_HEADER = "X-Lbalgo-Backend"
_READY_PATH = "/__lbalgo_ready"  # answered by nginx itself: probing it costs no upstream pick


def find_nginx() -> str | None:
    """The nginx binary: ``$LBALGO_NGINX``, ``nginx`` on PATH, or ``/usr/sbin/nginx``."""
    candidates = [os.environ.get("LBALGO_NGINX"), shutil.which("nginx"), "/usr/sbin/nginx"]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_nginx() -> str:
    """The nginx binary, or skip the calling test saying why and how to get one."""
    binary = find_nginx()
    if binary is None:
        pytest.skip(
            "nginx is not installed (looked at $LBALGO_NGINX, PATH and /usr/sbin/nginx); "
            "install it (Debian: apt-get install nginx-light) to run the differential tests"
        )
    return binary


class LoopbackBackend:
    """One HTTP server on 127.0.0.1 answering every request with its ``ident``.

    ``stop()`` closes its port (nginx then gets "connection refused", a failed try) and
    ``restart()`` listens on the same port again. With ``hold(arrivals)`` each request is
    announced on ``arrivals`` as a :class:`HeldRequest` and answered only once released,
    so a test decides when each connection ends.
    """

    def __init__(self, ident: str) -> None:
        self.ident = ident
        self._arrivals: queue.Queue[HeldRequest] | None = None
        answer = ident.encode()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                arrivals = backend._arrivals
                if arrivals is not None:
                    held = HeldRequest(backend.ident, self.path, threading.Event())
                    arrivals.put(held)
                    if not held.released.wait(_REQUEST_TIMEOUT):
                        return  # never released: the test failed; close without an answer
                self.send_response(200)
                self.send_header(_BACKEND_HEADER, ident)
                self.send_header("Content-Length", str(len(answer)))
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: thousands of requests per test

        self._handler = Handler
        self.port = 0
        self._serve()

    def _serve(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # a short poll interval: shutdown() waits for it, once per backend at teardown
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"backend-{self.ident}",
            daemon=True,
        )
        self.running = False

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as written in an nginx ``server`` line."""
        return f"127.0.0.1:{self.port}"

    def hold(self, arrivals: queue.Queue[HeldRequest] | None) -> None:
        """Hold every request until released, announcing it on ``arrivals`` (None: answer at
        once again)."""
        self._arrivals = arrivals

    def start(self) -> None:
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def restart(self) -> None:
        """Listen again on the same port after ``stop()`` (the listening socket reuses the
        address, so connections left in TIME_WAIT do not block it)."""
        if self.running:
            raise RuntimeError(f"backend {self.ident} is running")
        self._serve()
        self.start()


@dataclass
class HeldRequest:
    """A request a holding backend received: which backend, its path, and its release."""

    backend: str
    path: str
    released: threading.Event


@contextlib.contextmanager
def loopback_backends(count: int) -> Iterator[list[LoopbackBackend]]:
    """``count`` running loopback backends with ids ``"0"``, ``"1"``, ...; stopped on exit."""
    if not 1 <= count <= 1000:
        raise ValueError(f"count must be from 1 to 1000, got {count!r}")
    backends: list[LoopbackBackend] = []
    try:
        for index in range(count):
            backend = LoopbackBackend(str(index))
            backends.append(backend)
            backend.start()
        yield backends
    finally:
        for backend in backends:
            backend.stop()


def upstream_servers(
    backends: Sequence[LoopbackBackend],
    weights: Sequence[int] | None = None,
    *,
    down: Sequence[int] = (),
) -> str:
    """An upstream block body: one ``server`` line per backend, in order, with its weight
    (omitted when ``weights`` is None) and ``down`` for the indexes in ``down``."""
    lines = []
    for index, backend in enumerate(backends):
        line = f"server {backend.address}"
        if weights is not None:
            line += f" weight={weights[index]}"
        if index in down:
            line += " down"
        lines.append(line + ";")
    return "\n".join(lines)


@dataclass(frozen=True)
class Attempt:
    """One try nginx made: the HTTP status, the peer (``$upstream_addr``), the backend id
    that answered (None for a 502) and when the request started in nginx's milliseconds."""

    status: int
    upstream: str
    backend: str | None
    start_ms: int

    @property
    def second(self) -> int:
        """nginx's ``ngx_time()`` when it chose the peer (the request's start second)."""
        return self.start_ms // 1000

    @classmethod
    def from_headers(cls, status: int, header: Callable[[str], str | None]) -> Attempt:
        upstream = header("X-Upstream-Addr")
        clock = header("X-Lbalgo-Clock")
        if not upstream or not clock:
            raise RuntimeError(f"nginx answered {status} without its upstream/clock headers")
        msec, request_time = clock.split()
        # both are cached-clock readings printed with exactly 3 decimals: exact in integers
        start_ms = int(msec.replace(".", "")) - int(request_time.replace(".", ""))
        return cls(status, upstream, header(_BACKEND_HEADER), start_ms)


_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream lbalgo_under_test {{
{upstream}
    }}
    server {{
{listen}
        location = {ready} {{
            return 204;
        }}
        location / {{
            proxy_pass http://lbalgo_under_test;
            # one try per request: a retry would hide which peer nginx chose first
            proxy_next_upstream off;
            proxy_connect_timeout 5s;
            proxy_read_timeout 10s;
            # which peer was tried, and when the request started on nginx's own clock
            add_header X-Upstream-Addr $upstream_addr always;
            add_header X-Lbalgo-Clock "$msec $request_time" always;
            # the client as nginx hashes it ($remote_addr: mapped on a dual-stack listener)
            add_header X-Remote-Addr $remote_addr always;
        }}
    }}
}}
"""


class NginxProxy:
    """A running single-process nginx listening on ``127.0.0.1:port``; with ``dual_stack``
    on ``[::ffff:127.0.0.1]:port`` (IPv4 clients reach it as IPv4-mapped addresses, as on
    a dual-stack listener) and ``[::1]:port``."""

    def __init__(
        self, binary: str, workdir: Path, upstream: str, *, dual_stack: bool = False
    ) -> None:
        self.workdir = workdir
        self.config = workdir / "nginx.conf"
        self._connection: http.client.HTTPConnection | None = None
        body = "\n".join(f"        {line}" for line in upstream.strip().splitlines())
        # A free port can be taken by another process before nginx binds it: then nginx logs
        # "Address already in use", and the next attempt takes another port.
        for _attempt in range(_PORT_ATTEMPTS):
            self.port = free_port()
            listen = (
                f"        listen [::ffff:127.0.0.1]:{self.port} ipv6only=off;\n"
                f"        listen [::1]:{self.port};"
                if dual_stack
                else f"        listen 127.0.0.1:{self.port};"
            )
            text = _CONFIG.format(dir=workdir, upstream=body, listen=listen, ready=_READY_PATH)
            self.config.write_text(text)
            log = workdir / "error.log"
            log.unlink(missing_ok=True)
            self._process = subprocess.Popen(
                [binary, "-p", str(workdir), "-e", str(log), "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_ready():
                return
        raise RuntimeError(f"nginx found no free port in {_PORT_ATTEMPTS} attempts:\n{self._log()}")

    def _wait_ready(self) -> bool:
        """Whether this nginx answers on its port (False: the port was taken, nginx stopped)."""
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if "Address already in use" in self._log_file():
                self.stop()
                return False
            if self._process.poll() is not None:
                raise RuntimeError(f"nginx exited at start:\n{self._log()}")
            if self._answers_ready():
                return True
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nginx did not accept connections in {_START_TIMEOUT}s:\n{self._log()}")

    def _answers_ready(self) -> bool:
        """Whether nginx itself (not some other server on the port) answers the ready probe."""
        probe = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
        try:
            probe.request("GET", _READY_PATH)
            response = probe.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            return False
        finally:
            probe.close()
        server = response.getheader("Server") or ""
        return response.status == 204 and server.startswith("nginx")

    def _log_file(self) -> str:
        log = self.workdir / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def _log(self) -> str:
        stderr = b""
        pipe = self._process.stderr
        if self._process.poll() is not None and pipe is not None and not pipe.closed:
            stderr = pipe.read()
        return (stderr.decode(errors="replace") + self._log_file()).strip()

    def answer(self, headers: Mapping[str, str] | None = None, path: str = "/") -> str:
        """Send one GET through nginx; the id of the backend that answered it."""
        for attempt in range(2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=_REQUEST_TIMEOUT
                )
            try:
                self._connection.request("GET", path, headers=dict(headers or {}))
                response = self._connection.getresponse()
                body = response.read()
            except (http.client.HTTPException, ConnectionError):
                # nginx may close a kept-alive client connection; reconnect once
                self._connection.close()
                self._connection = None
                if attempt:
                    raise
                continue
            ident = response.getheader(_BACKEND_HEADER)
            if response.status != 200 or ident is None:
                raise RuntimeError(
                    f"nginx answered {response.status} without a backend id: {body[:200]!r}\n"
                    f"{self._log()}"
                )
            return ident
        raise AssertionError("unreachable")

    def attempt(self, path: str = "/") -> Attempt:
        """Send one GET through nginx and report its one try, whatever the status (a 502
        from a stopped backend included): nginx's peer and clock come from its headers."""
        for retry in range(2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=_REQUEST_TIMEOUT
                )
            try:
                self._connection.request("GET", path)
                response = self._connection.getresponse()
                response.read()
            except (http.client.HTTPException, ConnectionError):
                self._connection.close()
                self._connection = None
                if retry:
                    raise
                continue
            return Attempt.from_headers(response.status, response.getheader)
        raise AssertionError("unreachable")

    def send(self, path: str) -> socket.socket:
        """Start one GET on a connection of its own without reading the answer (for
        requests a holding backend keeps open); ``finish`` reads it."""
        client = socket.create_connection(("127.0.0.1", self.port), timeout=_REQUEST_TIMEOUT)
        client.sendall(
            f"GET {path} HTTP/1.1\r\nHost: lbalgo\r\nConnection: close\r\n\r\n".encode()
        )
        return client

    def finish(self, client: socket.socket) -> Attempt:
        """Read the whole answer of a request started by ``send`` (nginx closes after it, so
        by then it has freed the peer) and close the connection."""
        with client:
            chunks = []
            while chunk := client.recv(65536):
                chunks.append(chunk)
        head = b"".join(chunks).split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        return Attempt.from_headers(status, lambda name: fields.get(name.lower()))

    def answers(self, count: int, headers: Mapping[str, str] | None = None) -> list[str]:
        """Send ``count`` requests one after another (each ends before the next starts)."""
        if not 0 <= count <= MAX_REQUESTS:
            raise ValueError(f"count must be from 0 to {MAX_REQUESTS}, got {count!r}")
        return [self.answer(headers) for _ in range(count)]

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        if self._process.stderr is not None:
            self._process.stderr.close()


@contextlib.contextmanager
def nginx_proxy(
    upstream: str, *, workdir: Path, binary: str | None = None, dual_stack: bool = False
) -> Iterator[NginxProxy]:
    """A running nginx whose upstream block body is ``upstream``; stopped on exit.

    ``workdir`` (an empty directory) receives the config, pid, log and temp paths.
    """
    proxy = NginxProxy(binary or require_nginx(), workdir, upstream, dual_stack=dual_stack)
    try:
        yield proxy
    finally:
        proxy.stop()


class NginxHarness:
    """What the ``nginx_harness`` fixture gives a test: backends and proxies, torn down after."""

    def __init__(self, binary: str, workdir: Path, stack: contextlib.ExitStack) -> None:
        self.binary = binary
        self._workdir = workdir
        self._stack = stack
        self._proxies = 0

    def backends(self, count: int) -> list[LoopbackBackend]:
        """``count`` running loopback backends with ids ``"0"``, ``"1"``, ..."""
        return self._stack.enter_context(loopback_backends(count))

    def proxy(self, upstream: str) -> NginxProxy:
        """A running nginx with that upstream block body (one per call, each in its own dir)."""
        self._proxies += 1
        workdir = self._workdir / f"nginx-{self._proxies}"
        workdir.mkdir()
        return self._stack.enter_context(nginx_proxy(upstream, workdir=workdir, binary=self.binary))


@pytest.fixture
def nginx_harness(tmp_path: Path) -> Iterator[NginxHarness]:
    """Loopback backends and real nginx proxies for one test (skips when nginx is absent)."""
    binary = require_nginx()
    with contextlib.ExitStack() as stack:
        yield NginxHarness(binary, tmp_path, stack)
