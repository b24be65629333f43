"""The example proxy against every request-smuggling and response-splitting shape: a table.

Each row: the bytes a client (or a backend) sends, the status the client must get, and what
the backend must receive (nothing at all for a refused request). A refused message always
ends its connection. Loopback only; one proxy and one backend per table.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from proxy_harness import Backend, ProxyProcess, Received, raw, send

GET = b"GET / HTTP/1.1\r\nHost: t\r\n"
POST = b"POST / HTTP/1.1\r\nHost: t\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n"


@dataclass(frozen=True)
class Refused:
    """A request the proxy must refuse with ``status``, forwarding nothing."""

    id: str
    data: bytes
    status: int = 400


REFUSED = [
    Refused(
        "te-and-cl", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    Refused("cl-and-te", CHUNKED + b"Content-Length: 5\r\n\r\n0\r\n\r\n"),
    Refused("chunk-0x5", CHUNKED + b"\r\n0x5\r\nhello\r\n0\r\n\r\n"),
    Refused("chunk-plus-5", CHUNKED + b"\r\n+5\r\nhello\r\n0\r\n\r\n"),
    Refused("chunk-1_0", CHUNKED + b"\r\n1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"),
    Refused("chunk-space-5", CHUNKED + b"\r\n 5\r\nhello\r\n0\r\n\r\n"),
    Refused("chunk-arabic-5", CHUNKED + b"\r\n\xd9\xa5\r\nhello\r\n0\r\n\r\n"),
    Refused("chunk-bare-lf", CHUNKED + b"\r\n5\nhello\r\n0\r\n\r\n"),
    Refused("chunk-data-too-long", CHUNKED + b"\r\n5\r\nhelloXX\r\n0\r\n\r\n"),
    Refused("chunk-size-huge", CHUNKED + b"\r\n" + b"f" * 21 + b"\r\n"),
    Refused("cl-superscript-2", POST + b"Content-Length: \xc2\xb2\r\n\r\nab"),
    Refused("cl-plus", POST + b"Content-Length: +5\r\n\r\nhello"),
    Refused("cl-negative", POST + b"Content-Length: -1\r\n\r\n"),
    Refused("cl-hex", POST + b"Content-Length: 0x5\r\n\r\nhello"),
    Refused("cl-underscore", POST + b"Content-Length: 1_0\r\n\r\n0123456789"),
    Refused("cl-conflict", POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    Refused("cl-list-conflict", POST + b"Content-Length: 5, 6\r\n\r\nhello!"),
    Refused("te-unknown", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    Refused("te-twice", CHUNKED + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    Refused("te-xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    Refused("te-space-before-colon", POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    Refused("te-in-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    Refused(
        "connection-content-length",
        POST + b"Connection: content-length\r\n"
        b"Content-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n\r\n",
    ),
    Refused(
        "connection-transfer-encoding", CHUNKED + b"Connection: transfer-encoding\r\n\r\n0\r\n\r\n"
    ),
    Refused("connection-host", GET + b"Connection: close, Host\r\n\r\n"),
    Refused("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: t\n\n"),
    Refused("bare-lf-in-value", GET + b"X-A: a\nX-B: b\r\n\r\n"),
    Refused("bare-cr-in-value", GET + b"X-A: a\rX-B: b\r\n\r\n"),
    Refused("nul-in-value", GET + b"X-A: a\x00b\r\n\r\n"),
    Refused("del-in-value", GET + b"X-A: a\x7fb\r\n\r\n"),
    Refused("ctl-in-value", GET + b"X-A: a\x01b\r\n\r\n"),
    Refused("nul-in-name", GET + b"X\x00A: a\r\n\r\n"),
    Refused("non-token-name", GET + b"X(A): a\r\n\r\n"),
    Refused("space-in-name", GET + b"X A: a\r\n\r\n"),
    Refused("obs-fold", GET + b"X-A: a\r\n b\r\n\r\n"),
    Refused("nul-in-target", b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n"),
    Refused("space-in-target", b"GET /a b HTTP/1.1\r\nHost: t\r\n\r\n"),
    Refused("relative-target", b"GET a HTTP/1.1\r\nHost: t\r\n\r\n"),
    Refused("ctl-in-method", b"G\x01T / HTTP/1.1\r\nHost: t\r\n\r\n"),
    Refused("no-host-http11", b"GET / HTTP/1.1\r\n\r\n"),
    Refused("two-hosts", GET + b"Host: u\r\n\r\n"),
    Refused("empty-host", b"GET / HTTP/1.1\r\nHost: \r\n\r\n"),
    Refused("host-list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n"),
    Refused("host-with-slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
    Refused("http-2-0", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    Refused("http-1-2", b"GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505),
    Refused("connect", b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", 501),
    Refused("expect-other", GET + b"Expect: 200-ok\r\n\r\n", 417),
    Refused("10000-tiny-headers", GET + b"a: b\r\n" * 10_000 + b"\r\n", 431),
    Refused("101-headers", GET + b"".join(b"x%d: y\r\n" % i for i in range(100)) + b"\r\n", 431),
    Refused("huge-header", GET + b"X-A: " + b"a" * 40_000 + b"\r\n\r\n", 431),
]


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    server = Backend("a")
    yield server
    server.kill()


@pytest.fixture(scope="module")
def proxy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    process = ProxyProcess(
        ["--backend", f"127.0.0.1:{backend.port}", "--header-timeout", "2"],
        tmp_path_factory.mktemp("proxy"),
    )
    yield process
    assert process.stop() == 0
    assert "Traceback" not in process.log_text()


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_refused_request(case: Refused, proxy: ProxyProcess, backend: Backend) -> None:
    before = len(backend.received), backend.connections
    reply = send(proxy.port, case.data)
    assert reply.status == case.status, reply.raw[:200]
    assert reply.closed
    assert reply.responses[-1].header(b"connection") == [b"close"]
    assert (len(backend.received), backend.connections) == before  # nothing forwarded at all


@dataclass(frozen=True)
class Forwarded:
    """A request the proxy must forward; ``check`` looks at what the backend received."""

    id: str
    data: bytes
    method: bytes
    target: bytes
    host: bytes
    body: bytes = b""
    absent: tuple[bytes, ...] = ()  # header names that must not reach the backend
    present: tuple[tuple[bytes, bytes], ...] = ()


FORWARDED = [
    Forwarded(
        "hop-by-hop-fields-dropped",
        GET + b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: basic x\r\n"
        b"Proxy-Connection: keep-alive\r\nTrailer: X-T\r\nX-Kept: yes\r\n\r\n",
        b"GET",
        b"/",
        b"t",
        absent=(
            b"connection",
            b"x-secret",
            b"keep-alive",
            b"te",
            b"upgrade",
            b"proxy-authorization",
            b"proxy-connection",
            b"trailer",
        ),
        present=((b"x-kept", b"yes"),),
    ),
    Forwarded(
        "chunked-with-extension-and-trailer",
        CHUNKED + b"\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"POST",
        b"/",
        b"t",
        b"hello world",
        present=((b"transfer-encoding", b"chunked"),),
    ),
    Forwarded(
        "content-length-body",
        POST + b"Content-Length: 5\r\n\r\nhello",
        b"POST",
        b"/",
        b"t",
        b"hello",
        absent=(b"transfer-encoding",),
        present=((b"content-length", b"5"),),
    ),
    Forwarded(
        "equal-content-lengths-merged",
        POST + b"Content-Length: 5, 5\r\n\r\nhello",
        b"POST",
        b"/",
        b"t",
        b"hello",
        present=((b"content-length", b"5"),),
    ),
    Forwarded(
        "absolute-form-target",
        b"GET http://example.com:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
        b"GET",
        b"/p?q=1",
        b"example.com:8080",
    ),
    Forwarded("leading-empty-line", b"\r\n" + GET + b"\r\n", b"GET", b"/", b"t"),
    Forwarded(
        "x-forwarded-for-appended",
        GET + b"X-Forwarded-For: 203.0.113.7\r\n\r\n",
        b"GET",
        b"/",
        b"t",
        present=((b"x-forwarded-for", b"203.0.113.7, 127.0.0.1"),),
    ),
    Forwarded(
        "expect-100-continue",
        POST + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        b"POST",
        b"/",
        b"t",
        b"ok",
        absent=(b"expect",),
    ),
    Forwarded("ipv6-host", b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", b"GET", b"/", b"[::1]:80"),
]


@pytest.mark.parametrize("case", FORWARDED, ids=[c.id for c in FORWARDED])
def test_forwarded_request(case: Forwarded, proxy: ProxyProcess, backend: Backend) -> None:
    before = len(backend.received)
    reply = send(proxy.port, case.data)
    assert reply.status == 200, reply.raw[:200]
    assert not reply.closed  # kept alive
    assert len(backend.received) == before + 1
    got: Received = backend.received[-1]
    assert (got.method, got.target, got.body) == (case.method, case.target, case.body)
    assert got.header(b"host") == [case.host]
    lines = got.raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert not [line for line in lines if b"\r" in line or b"\n" in line]  # CRLF only
    for name in case.absent:
        assert got.header(name) == [], name
    for name, value in case.present:
        assert got.header(name) == [value], name


def test_http10_without_host_gets_the_backend_address(
    proxy: ProxyProcess, backend: Backend
) -> None:
    reply = send(proxy.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.status == 200
    assert reply.closed  # HTTP/1.0: one request per connection
    assert backend.received[-1].header(b"host") == [b"127.0.0.1:%d" % backend.port]


def test_pipelined_requests_each_checked(proxy: ProxyProcess, backend: Backend) -> None:
    """A valid request followed by a smuggling one on the same connection: the first is
    answered, the second refused, and the backend only ever sees the first."""
    before = len(backend.received)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(GET + b"\r\n" + b"GET /2 HTTP/1.1\nHost: t\n\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 400 " in data
    assert [r.target for r in backend.received[before:]] == [b"/"]


# -- backend responses --------------------------------------------------------------------


@dataclass(frozen=True)
class BadResponse:
    """A backend response the proxy must not relay: the client gets ``status`` (502)."""

    id: str
    data: bytes
    status: int = 502


OK_HEAD = b"HTTP/1.1 200 OK\r\n"
BAD_RESPONSES = [
    BadResponse(
        "te-and-cl", OK_HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    BadResponse(
        "bare-lf-injects-header",
        OK_HEAD + b"X-A: a\nSet-Cookie: injected=1\r\nContent-Length: 0\r\n\r\n",
    ),
    BadResponse(
        "bare-cr", OK_HEAD + b"X-A: a\rSet-Cookie: injected=1\r\nContent-Length: 0\r\n\r\n"
    ),
    BadResponse("nul-in-value", OK_HEAD + b"X-A: a\x00\r\nContent-Length: 0\r\n\r\n"),
    BadResponse(
        "obs-fold", OK_HEAD + b"X-A: a\r\n Set-Cookie: injected=1\r\nContent-Length: 0\r\n\r\n"
    ),
    BadResponse(
        "connection-content-length",
        OK_HEAD + b"Connection: content-length\r\nContent-Length: 0\r\n\r\n",
    ),
    BadResponse("te-unknown", OK_HEAD + b"Transfer-Encoding: gzip\r\n\r\n"),
    BadResponse("te-in-http10", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    BadResponse("cl-superscript", OK_HEAD + b"Content-Length: \xc2\xb2\r\n\r\nab"),
    BadResponse("status-two-digits", b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n"),
    BadResponse("status-600", b"HTTP/1.1 600 X\r\nContent-Length: 0\r\n\r\n"),
    BadResponse("http-2-0", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
    BadResponse("unrequested-101", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"),
    BadResponse("garbage", b"hello\r\n\r\n"),
    BadResponse("closed-without-response", b""),
    BadResponse("closed-inside-head", OK_HEAD + b"Content-Len"),
    BadResponse(
        "too-many-103",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 40
        + OK_HEAD
        + b"Content-Length: 0\r\n\r\n",
    ),
    # a malformed body that arrives with the head: nothing reached the client yet
    BadResponse(
        "bad-chunk-size", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"
    ),
    BadResponse(
        "chunk-data-too-long", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"
    ),
    BadResponse(
        "101-header-fields",
        OK_HEAD + b"".join(b"X-%d: y\r\n" % i for i in range(100)) + b"Content-Length: 0\r\n\r\n",
    ),
    BadResponse("huge-head", OK_HEAD + b"X-A: " + b"a" * 40_000 + b"\r\n\r\n"),
]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Backend, ProxyProcess]]:
    """One backend whose answer each test sets, behind one proxy. Passive health is off
    (``--max-fails 0``) so that one case's failure does not suspend the backend for the
    next; the log line shows each failure is still the backend's."""
    server = Backend("scripted")
    process = ProxyProcess(
        ["--backend", f"127.0.0.1:{server.port}", "--read-timeout", "2", "--max-fails", "0"],
        tmp_path_factory.mktemp("scripted"),
    )
    yield server, process
    assert process.stop() == 0
    server.kill()
    assert "Traceback" not in process.log_text()


@pytest.mark.parametrize("case", BAD_RESPONSES, ids=[c.id for c in BAD_RESPONSES])
def test_bad_backend_response(case: BadResponse, scripted: tuple[Backend, ProxyProcess]) -> None:
    backend, proxy = scripted
    backend.respond = raw(case.data)
    before = len(backend.received)
    failures = proxy.log_text().count(f"backend 127.0.0.1:{backend.port} failed")
    reply = send(proxy.port, GET + b"\r\n")
    assert reply.status == case.status, reply.raw[:300]
    assert reply.responses[-1].body == b"502 Bad Gateway\n"  # names no backend
    assert b"injected" not in reply.raw
    assert len(backend.received) == before + 1  # not retried on the same backend
    # the log names the backend, and the failure is counted against it (Lease.fail)
    proxy.wait_log(f"backend 127.0.0.1:{backend.port} failed", count=failures + 1)


GOOD_RESPONSES = [
    (
        "early-hints-then-200",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        + OK_HEAD
        + b"Content-Length: 2\r\n\r\nok",
        [103, 200],
        b"ok",
    ),
    ("http10-body-until-close", b"HTTP/1.0 200 OK\r\n\r\nuntil close", [200], b"until close"),
    ("chunked", OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", [200], b"ok"),
    (
        "backend-100-not-relayed",
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HEAD + b"Content-Length: 2\r\n\r\nok",
        [200],
        b"ok",
    ),
]


@pytest.mark.parametrize(
    ("data", "statuses", "body"),
    [c[1:] for c in GOOD_RESPONSES],
    ids=[c[0] for c in GOOD_RESPONSES],
)
def test_good_backend_response(
    data: bytes, statuses: list[int], body: bytes, scripted: tuple[Backend, ProxyProcess]
) -> None:
    backend, proxy = scripted
    backend.respond = raw(data)
    reply = send(proxy.port, GET + b"\r\n")
    assert [r.status for r in reply.responses] == statuses
    assert reply.responses[-1].body == body
    assert reply.complete
    assert not reply.closed  # re-framed for the client (chunked), so still kept alive


@pytest.mark.parametrize(
    "body",
    [b"0x5\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"5\r\nhello\r\n"],
    ids=["bad-chunk-size", "chunk-too-long", "cut-short"],
)
def test_malformed_response_body_cuts_the_client_connection(
    body: bytes, scripted: tuple[Backend, ProxyProcess]
) -> None:
    """After the head reached the client a 502 is no longer possible: the proxy closes the
    client's connection without ending the body, so the client knows it is incomplete; the
    failure is the backend's."""
    backend, proxy = scripted

    def head_then_body(request: Received, sock: socket.socket) -> None:
        sock.sendall(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        time.sleep(0.3)  # the head is relayed to the client meanwhile
        sock.sendall(body)

    backend.respond = head_then_body
    failures = proxy.log_text().count("response body")
    reply = send(proxy.port, GET + b"\r\n")
    assert [r.status for r in reply.responses] == [200]
    assert not reply.complete
    assert reply.closed
    proxy.wait_log("response body", count=failures + 1)


def test_head_response_keeps_its_length_and_has_no_body(
    scripted: tuple[Backend, ProxyProcess],
) -> None:
    backend, proxy = scripted
    backend.respond = raw(OK_HEAD + b"Content-Length: 100\r\nX-MiXed-Case: 1\r\n\r\n")
    reply = send(proxy.port, b"HEAD / HTTP/1.1\r\nHost: t\r\nX-CaSe: 2\r\n\r\n", method=b"HEAD")
    assert reply.status == 200
    assert reply.responses[-1].header(b"content-length") == [b"100"]
    assert reply.responses[-1].body == b""
    assert reply.complete
    assert not reply.closed
    assert b"X-MiXed-Case: 1\r\n" in reply.raw  # field names keep the sender's spelling
    assert backend.received[-1].method == b"HEAD"
    assert b"X-CaSe: 2\r\n" in backend.received[-1].raw


def test_http10_client_gets_a_chunked_response_unchunked(
    scripted: tuple[Backend, ProxyProcess],
) -> None:
    backend, proxy = scripted
    backend.respond = raw(
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n!\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Transfer-Encoding" not in head
    assert b"Connection: close" in head
    assert body == b"ok!"  # the end of the body is the end of the connection


def test_no_content_and_not_modified_have_no_body(scripted: tuple[Backend, ProxyProcess]) -> None:
    backend, proxy = scripted
    for status in (204, 304):
        backend.respond = raw(b"HTTP/1.1 %d X\r\n\r\n" % status)
        reply = send(proxy.port, GET + b"\r\n")
        assert reply.status == status
        assert reply.complete
        assert not reply.closed
        assert reply.responses[-1].header(b"transfer-encoding") == []
