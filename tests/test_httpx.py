"""lbalgo.httpx against real HTTP servers on 127.0.0.1 (standard-library servers in threads),
one port refusing connections, with httpx's real transports: sync and async clients, SWRR, WLC
and SourceIPHash, streamed bodies, retries, leases returned. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from lbalgo import (
    Backend,
    BackendGroup,
    NoBackendAvailable,
    Scheduler,
    SmoothWeightedRoundRobin,
    SourceIPHash,
    StickySessions,
    WeightedLeastConnections,
)
from lbalgo.errors import InvalidOptionError, InvalidTypeError
from lbalgo.httpx import AsyncLoadBalancedTransport, LoadBalancedTransport

TIMEOUT = httpx.Timeout(10.0)
BIG = 256 * 1024  # a body larger than the socket buffers: a streamed response stays open


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is for failures."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/big"):
            payload = b"x" * BIG
        elif self.path.startswith("/cut"):
            # promise 1000 bytes, send 10, hang up: a failure after the response started
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True
            return
        else:
            payload = json.dumps(
                {
                    "name": self.server.name,
                    "method": self.command,
                    "path": self.path,
                    "host": self.headers.get("Host"),
                    "x-test": self.headers.get("X-Test"),
                    "body": body.decode(),
                }
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Backend", self.server.name)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def backend(self) -> Backend:
        return Backend("127.0.0.1", self.server_address[1], name=self.name)

    def handle_error(self, request: object, client_address: object) -> None:
        """Quiet: a client closing a streamed body early is what some tests do."""

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def servers() -> Iterator[list[_Server]]:
    started = [_Server(name) for name in ("a", "b", "c")]
    yield started
    for server in started:
        server.stop()


def refusing_backend(name: str = "refusing") -> Backend:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return Backend("127.0.0.1", port, name=name)


def all_released(sched: Scheduler) -> bool:
    return all(s.open_connections == 0 for s in sched.stats().values())


def client_for(sched: Scheduler, retries: int = 2) -> httpx.Client:
    return httpx.Client(transport=LoadBalancedTransport(sched, retries=retries), timeout=TIMEOUT)


# --- routing ------------------------------------------------------------------------------------


def test_url_host_and_port_replaced_the_rest_kept(servers: list[_Server]) -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup([servers[0].backend]))
    with client_for(sched) as client:
        reply = client.post(
            "http://api.internal:9999/items/7?sort=name&page=2",
            headers={"X-Test": "kept"},
            content=b"payload",
        ).json()
    assert reply == {
        "name": "a",
        "method": "POST",
        "path": "/items/7?sort=name&page=2",
        "host": "api.internal:9999",  # the caller's Host, not the backend's address
        "x-test": "kept",
        "body": "payload",
    }
    assert all_released(sched)


def test_swrr_follows_the_weights_and_skips_a_refusing_backend(servers: list[_Server]) -> None:
    refusing = refusing_backend()
    group = BackendGroup(
        [servers[0].backend.with_weight(3), refusing.with_weight(2), servers[1].backend]
    )
    sched = SmoothWeightedRoundRobin(group)
    with client_for(sched) as client:
        names = Counter(client.get("http://svc/").headers["X-Backend"] for _ in range(30))
    # every request succeeded; the refused ones were retried on the next backend of the rotation
    assert sum(names.values()) == 30
    assert set(names) == {"a", "b"}
    stats = sched.stats()
    assert stats["refusing"].failures == stats["refusing"].picks > 0
    assert stats["a"].picks + stats["b"].picks == 30
    assert all_released(sched)


def test_swrr_exact_shares_when_every_backend_answers(servers: list[_Server]) -> None:
    group = BackendGroup([servers[0].backend.with_weight(2), servers[1].backend])
    sched = SmoothWeightedRoundRobin(group)
    with client_for(sched) as client:
        order = [client.get("http://svc/").headers["X-Backend"] for _ in range(9)]
    assert order == ["a", "b", "a"] * 3  # nginx's smooth sequence for weights 2, 1


def test_wlc_counts_streamed_responses_until_they_are_closed(servers: list[_Server]) -> None:
    sched = WeightedLeastConnections(BackendGroup([s.backend for s in servers]))
    with client_for(sched) as client:
        streams = [client.stream("GET", "http://svc/big") for _ in range(6)]
        responses = [s.__enter__() for s in streams]
        # six open bodies over three equal backends: least connections spread them 2, 2, 2
        assert {k: sched.open_connections(k) for k in "abc"} == {"a": 2, "b": 2, "c": 2}
        # reading a body to its end closes the response (httpx does): its lease is back
        assert len(responses[0].read()) == BIG
        assert sched.open_connections(responses[0].headers["X-Backend"]) == 1
        for stream in streams:
            stream.__exit__(None, None, None)
    assert all_released(sched)
    assert all(s.picks == 2 for s in sched.stats().values())


def test_read_errors_release_without_failing_and_are_not_retried(
    servers: list[_Server],
) -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup([s.backend for s in servers]))
    with client_for(sched) as client, pytest.raises(httpx.RemoteProtocolError):
        client.get("http://svc/cut")
    stats = sched.stats()
    assert sum(s.picks for s in stats.values()) == 1
    assert sum(s.failures for s in stats.values()) == 0
    assert all_released(sched)


# --- retries ------------------------------------------------------------------------------------


def test_every_attempt_refused_reaches_the_caller_as_connect_error() -> None:
    refused = [refusing_backend(f"r{i}") for i in range(5)]
    sched = WeightedLeastConnections(BackendGroup(refused))
    with client_for(sched, retries=2) as client, pytest.raises(httpx.ConnectError):
        client.get("http://svc/")
    stats = sched.stats()
    assert sum(s.failures for s in stats.values()) == 3  # one try and two retries
    assert max(s.picks for s in stats.values()) == 1  # each on another backend
    assert all_released(sched)


def test_retries_stop_when_every_backend_was_tried() -> None:
    sched = WeightedLeastConnections(BackendGroup([refusing_backend("r0"), refusing_backend()]))
    with client_for(sched, retries=5) as client, pytest.raises(httpx.ConnectError) as info:
        client.get("http://svc/")
    assert not isinstance(info.value.__cause__, NoBackendAvailable)  # the real connect error
    assert sum(s.failures for s in sched.stats().values()) == 2


def test_no_eligible_backend_is_a_connect_error_caused_by_no_backend_available(
    servers: list[_Server],
) -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup([servers[0].backend]))
    sched.mark_down("a")
    with client_for(sched) as client, pytest.raises(httpx.ConnectError) as info:
        client.get("http://svc/")
    assert isinstance(info.value.__cause__, NoBackendAvailable)
    assert "no backend available" in str(info.value)


def test_a_body_that_cannot_be_resent_is_not_retried(servers: list[_Server]) -> None:
    group = BackendGroup([refusing_backend(), servers[0].backend])
    sched = SmoothWeightedRoundRobin(group)
    with client_for(sched) as client:
        with pytest.raises(httpx.ConnectError):
            client.post("http://svc/", content=iter([b"once ", b"only"]))
        assert sched.stats()["refusing"].failures == 1
        assert sched.stats()["a"].picks == 0
        # the same request with its body in memory is retried on the next backend
        sched.update(group)
        reply = client.post("http://svc/", content=b"again").json()
        assert (reply["name"], reply["body"]) == ("a", "again")
        reply = client.post("http://svc/", json={"k": 1}).json()
        assert reply["body"] == '{"k":1}'
    assert all_released(sched)


def test_zero_retries_means_one_attempt(servers: list[_Server]) -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup([refusing_backend(), servers[0].backend]))
    with client_for(sched, retries=0) as client, pytest.raises(httpx.ConnectError):
        client.get("http://svc/")
    assert sched.stats()["a"].picks == 0


# --- client keys ----------------------------------------------------------------------------------


def test_source_ip_hash_key_from_the_request_extension(servers: list[_Server]) -> None:
    sched = SourceIPHash(BackendGroup([s.backend for s in servers]))
    clients = [f"198.51.100.{i}" for i in range(60)]
    with client_for(sched) as client:
        first = {
            c: client.get("http://svc/", extensions={"lbalgo_key": c}).headers["X-Backend"]
            for c in clients
        }
        again = {
            c: client.get("http://svc/", extensions={"lbalgo_key": c}).headers["X-Backend"]
            for c in clients
        }
        assert first == again
        assert first == {c: sched.pick(c).key for c in clients}
        assert set(first.values()) == {"a", "b", "c"}
        with pytest.raises(ValueError, match="client must be an IPv4 or IPv6 address"):
            client.get("http://svc/")  # no key: the scheduler's own error
    for c in clients:
        sched.release(sched.group[first[c]])  # the picks made by the check above
    assert all_released(sched)


def test_sticky_sessions_by_cookie_value(servers: list[_Server]) -> None:
    sched = StickySessions(WeightedLeastConnections(BackendGroup([s.backend for s in servers])))
    with client_for(sched) as client:
        seen = {
            client.get("http://svc/", extensions={"lbalgo_key": "session-42"}).headers["X-Backend"]
            for _ in range(10)
        }
    assert len(seen) == 1


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [-1, 101, True, 1.0, "2", None])
def test_bad_retries(retries: object) -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup())
    for cls in (LoadBalancedTransport, AsyncLoadBalancedTransport):
        with pytest.raises(InvalidOptionError, match=rf"^retries .*got {retries!r}$"):
            cls(sched, retries=retries)  # type: ignore[arg-type]


def test_bad_transport_and_scheduler() -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup())
    with pytest.raises(InvalidOptionError, match=r"transport must be an httpx\.BaseTransport"):
        LoadBalancedTransport(sched, transport=httpx.AsyncHTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match=r"transport must be an httpx\.AsyncBaseTransport"):
        AsyncLoadBalancedTransport(sched, transport=httpx.HTTPTransport())  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="scheduler must implement"):
        LoadBalancedTransport("sched")  # type: ignore[arg-type]


class _CountingTransport(httpx.HTTPTransport):
    """httpx's real transport, counting what goes through it and whether it was closed."""

    def __init__(self) -> None:
        super().__init__(retries=0)
        self.urls: list[str] = []
        self.extensions: list[dict[str, object]] = []
        self.closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        self.extensions.append(dict(request.extensions))
        return super().handle_request(request)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_inner_transport_is_used_and_closed(servers: list[_Server]) -> None:
    inner = _CountingTransport()
    sched = SmoothWeightedRoundRobin(BackendGroup([servers[0].backend]))
    with httpx.Client(transport=LoadBalancedTransport(sched, transport=inner)) as client:
        assert client.get("http://svc/p?q", extensions={"lbalgo_key": "k"}).status_code == 200
        with pytest.raises(httpx.ConnectError):  # https to a plain server: TLS fails
            client.get("https://api.example.com/")
    assert inner.urls[0] == f"http://{servers[0].backend.address}/p?q"
    assert "lbalgo_key" not in inner.extensions[0]  # ours: not passed down
    assert "sni_hostname" not in inner.extensions[0]
    assert inner.extensions[1]["sni_hostname"] == "api.example.com"  # TLS checks the name
    assert inner.closed
    assert all_released(sched)


# --- asyncio ------------------------------------------------------------------------------------


def run(coro: object) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, 30)  # type: ignore[arg-type]

    asyncio.run(bounded())


def test_async_swrr_with_a_refusing_backend(servers: list[_Server]) -> None:
    group = BackendGroup([servers[0].backend, refusing_backend(), servers[2].backend])
    sched = SmoothWeightedRoundRobin(group)

    async def main() -> None:
        transport = AsyncLoadBalancedTransport(sched)
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
            replies = await asyncio.gather(*(client.get("http://svc/x?y=1") for _ in range(20)))
        assert all(r.status_code == 200 for r in replies)
        assert {r.json()["path"] for r in replies} == {"/x?y=1"}
        assert Counter(r.headers["X-Backend"] for r in replies).keys() == {"a", "c"}

    run(main())
    assert sched.stats()["refusing"].failures > 0
    assert all_released(sched)


def test_async_wlc_streams_hold_their_leases(servers: list[_Server]) -> None:
    sched = WeightedLeastConnections(BackendGroup([s.backend for s in servers]))

    async def main() -> None:
        transport = AsyncLoadBalancedTransport(sched)
        async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
            contexts = [client.stream("GET", "http://svc/big") for _ in range(3)]
            responses = [await c.__aenter__() for c in contexts]
            assert {k: sched.open_connections(k) for k in "abc"} == {"a": 1, "b": 1, "c": 1}
            total = 0
            async for chunk in responses[1].aiter_bytes():
                total += len(chunk)
            assert total == BIG
            for context in contexts:
                await context.__aexit__(None, None, None)
            assert all_released(sched)
            # all refused: the caller gets the connect error
            sched.update(BackendGroup([refusing_backend("r1"), refusing_backend("r2")]))
            with pytest.raises(httpx.ConnectError):
                await client.get("http://svc/")

    run(main())
    assert sum(s.failures for s in sched.stats().values()) == 2
    assert all_released(sched)
