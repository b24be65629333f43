"""Loopback harness for the example proxy's end-to-end tests (tests/test_proxy_*.py).

``Backend``: a threaded TCP server that parses each request with h11, records exactly what
arrived (raw bytes and the parsed message), and answers with whatever its ``respond``
function writes (well-formed or not). ``ProxyProcess``: examples/proxy.py in a subprocess on
a free port, as a user starts it. ``send``: raw request bytes in, the parsed responses and
whether the proxy closed the connection out. Every wait is bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h11

PROXY = Path(__file__).resolve().parent.parent / "examples" / "proxy.py"
TIMEOUT = 10.0  # seconds: the bound on every single wait


@dataclass
class Received:
    """One request as a backend got it."""

    raw: bytes
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


Respond = Callable[[Received, socket.socket], None]


def ok(request: Received, sock: socket.socket, name: str = "a", *, close: bool = True) -> None:
    """A well-formed 200 whose body names the backend."""
    body = name.encode()
    connection = b"Connection: close\r\n" if close else b""
    sock.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %s\r\n%s\r\n%s"
        % (len(body), body, connection, body)
    )


def raw(data: bytes) -> Respond:
    """Answer every request with exactly ``data``, then close."""

    def respond(request: Received, sock: socket.socket) -> None:
        sock.sendall(data)

    return respond


@dataclass
class Backend:
    """A loopback HTTP/1.1 backend; one thread per connection, one request per connection."""

    name: str = "a"
    respond: Respond | None = None
    received: list[Received] = field(default_factory=list)
    connections: int = 0  # connections accepted (including those that sent no full request)
    closed_early: int = 0  # connections the peer closed before a full request arrived
    bind_port: int = 0  # 0: a free port; a backend restarted on its old port gives that
    keep_alive: bool = False  # serve several requests per connection (else one, then close)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.gate = threading.Event()  # /hold requests wait for it
        self.holding = threading.Semaphore(0)  # released once per /hold request that arrived
        self.listener = socket.create_server(("127.0.0.1", self.bind_port))
        self.listener.settimeout(0.05)
        self.port = int(self.listener.getsockname()[1])
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            sock.settimeout(TIMEOUT)
            first = True
            while True:
                request = self._read(sock)
                if request is None:
                    if first:
                        with self.lock:
                            self.closed_early += 1
                    return
                first = False
                with self.lock:
                    self.received.append(request)
                if request.target == b"/hold":
                    self.holding.release()
                    self.gate.wait(TIMEOUT)
                keep = self.keep_alive and self.respond is None
                try:
                    if self.respond is None:
                        ok(request, sock, self.name, close=not keep)
                    else:
                        self.respond(request, sock)
                except OSError:
                    return
                if not keep:
                    return

    @staticmethod
    def _read(sock: socket.socket) -> Received | None:
        conn = h11.Connection(h11.SERVER)
        data = b""
        head: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return None
                if not chunk:
                    return None
                data += chunk
                conn.receive_data(chunk)
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Received(data, head.method, head.target, list(head.headers), body)

    def names(self) -> list[str]:
        return [r.target.decode() for r in self.received]

    def kill(self) -> None:
        """Stop accepting and close the listening socket: later connects are refused."""
        self.gate.set()
        self.running = False
        self.listener.close()
        self.thread.join(TIMEOUT)


class ProxyProcess:
    """examples/proxy.py in a subprocess, listening on a free loopback port."""

    def __init__(self, args: Sequence[str], tmp: Path) -> None:
        self.log = tmp / f"proxy-{time.monotonic_ns()}.log"
        command = [sys.executable, str(PROXY), "--listen", "127.0.0.1:0", *args]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], TIMEOUT)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on http://127.0.0.1:"):
            self.stop()
            raise AssertionError(f"proxy did not start: {line!r} {self.log.read_text()}")
        self.port = int(line.split("http://127.0.0.1:", 1)[1].split()[0])

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait_log(self, text: str, *, count: int = 1) -> None:
        """Wait (bounded) until ``text`` appears ``count`` times in the proxy's log."""
        deadline = time.monotonic() + TIMEOUT
        while self.log.read_text().count(text) < count:
            assert time.monotonic() < deadline, f"{text!r} not logged: {self.log.read_text()}"
            time.sleep(0.01)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            code = self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code

    def log_text(self) -> str:
        return self.log.read_text()


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Reply:
    """What a client got back for its bytes."""

    responses: list[Response]  # interim (1xx) ones included, in order
    raw: bytes
    closed: bool  # the proxy closed the connection
    complete: bool  # the last response's body arrived whole

    @property
    def status(self) -> int:
        return self.responses[-1].status if self.responses else 0


def read_reply(sock: socket.socket, *, method: bytes = b"GET", wait: float = TIMEOUT) -> Reply:
    """Read responses until a final one is complete or the proxy closes (bounded)."""
    conn = h11.Connection(h11.CLIENT)
    # h11 must know a request went out to parse a response; its exact form does not matter
    # (only whether it was a HEAD matters: a HEAD response has no body)
    head_only = method == b"HEAD"
    conn.send(
        h11.Request(method=b"HEAD" if head_only else b"GET", target="/", headers=[("Host", "t")])
    )
    conn.send(h11.EndOfMessage())
    responses: list[Response] = []
    data = b""
    closed = complete = False
    deadline = time.monotonic() + wait
    while not complete:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            break
        if event is h11.NEED_DATA:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionError:
                chunk = b""
            if not chunk:
                closed = True
            data += chunk
            conn.receive_data(chunk)
        elif isinstance(event, h11.InformationalResponse | h11.Response):
            responses.append(Response(event.status_code, list(event.headers), b""))
        elif isinstance(event, h11.Data):
            responses[-1].body += event.data
        elif isinstance(event, h11.EndOfMessage):
            complete = True
        elif isinstance(event, h11.ConnectionClosed):
            closed = True
            break
    return Reply(responses, data, closed, complete)


def send(
    port: int, data: bytes, *, method: bytes = b"GET", wait: float = TIMEOUT, probe: bool = True
) -> Reply:
    """Send raw bytes on a new connection and read the reply; then (``probe``: waiting up to
    0.2 s) check whether the proxy closes the connection (a refused message must end it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        with contextlib.suppress(ConnectionError):
            sock.sendall(data)
        reply = read_reply(sock, method=method, wait=wait)
        if probe and not reply.closed:
            sock.settimeout(0.2)
            try:
                reply.closed = sock.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionError:  # a reset is a close too
                reply.closed = True
    return reply


def rss_kib(pid: int) -> int:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
