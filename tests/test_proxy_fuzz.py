"""Fuzzing the example proxy with request bytes (hypothesis), over loopback.

Two oracles. Requests built from parts, each part drawn valid or invalid, know whether they
are clean: a clean one must reach the backend exactly (method, target, body) and get 200; an
unclean one must reach no backend at all and get a 4xx/5xx. Arbitrary bytes, and clean
requests with one byte changed, must never reach the backend unless what arrives is a clean
request. Throughout, nothing may surface on the proxy's event loop (no traceback, no
"exception was never retrieved" in its log).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_harness import Backend, ProxyProcess, Received, send


@dataclass
class Built:
    data: bytes
    clean: bool
    method: bytes
    target: bytes
    body: bytes


PARTS = ("method", "target", "version", "host", "field", "framing")


def _part(draw: st.DrawFn, bad: bool, valid: list[bytes], invalid: list[bytes]) -> bytes:
    return draw(st.sampled_from(invalid if bad else valid))


@st.composite
def requests(draw: st.DrawFn) -> Built:
    """Half the requests are clean; the others have exactly one invalid part."""
    bad = draw(st.sampled_from([None, None, None, None, None, None, *PARTS]))
    method = _part(
        draw,
        bad == "method",
        [b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS"],
        [b"G\x01T", b"GE(T", b"GET\x00", b"CONNECT"],
    )
    target = _part(
        draw,
        bad == "target",
        [b"/", b"/a/b?c=d", b"/%20x", b"/~user"],
        [b"/a\x00b", b"/\x7f", b"a", b"/a\tb", b"/\xff", b"/a b"],
    )
    version = _part(draw, bad == "version", [b"1.1"], [b"2.0", b"1.2", b"1", b"1.1 x"])
    host = _part(
        draw,
        bad == "host",
        [b"Host: example.com\r\n", b"Host: a:80\r\n", b"Host: [::1]:8080\r\n"],
        [b"", b"Host: \r\n", b"Host: a, b\r\n", b"Host: a\r\nHost: b\r\n", b"Host: a/b\r\n"],
    )
    valid_fields = [b"X-A: 1\r\n", b"Accept: */*\r\n", b"X-Empty:\r\n", b"X-Tab: a\tb\r\n"]
    fields = b"".join(draw(st.lists(st.sampled_from(valid_fields), max_size=2)))
    fields += _part(
        draw,
        bad == "field",
        [b""],
        [
            b"X-A: a\nX-B: b\r\n",
            b"X-A: a\rb\r\n",
            b"X-A: a\x00\r\n",
            b"X-A: a\x7f\r\n",
            b"X A: a\r\n",
            b"X-A : a\r\n",
            b"X-A: a\r\n b\r\n",
            b"Connection: content-length\r\n",
            b"Connection: host\r\n",
            b"Connection: transfer-encoding\r\n",
            b"Expect: bogus\r\n",
            b"".join(b"X-%d: a\r\n" % i for i in range(101)),
        ],
    )
    body = draw(st.binary(max_size=40))
    chunked = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if bad == "framing":
        size = draw(st.sampled_from([b"0x5", b"+5", b"1_0", b" 5", b"\xd9\xa5", b"5 5"]))
        cl = draw(st.sampled_from([b"+5", b"\xc2\xb2", b"0x5", b"-1", b"5, 6", b"5 5"]))
        fields, payload = draw(
            st.sampled_from(
                [  # the classic smuggling shape: both framings, each consistent on its own
                    (
                        fields
                        + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(chunked),
                        chunked,
                    ),
                    (fields + b"Content-Length: " + cl + b"\r\n", b"hello"),
                    (fields + b"Transfer-Encoding: chunked\r\n", size + b"\r\nhello\r\n0\r\n\r\n"),
                    (fields + b"Transfer-Encoding: gzip, chunked\r\n", chunked),
                ]
            )
        )
    elif framing == "none":
        payload = body = b""
    elif framing == "length":
        fields += b"Content-Length: %d\r\n" % len(body)
        payload = body
    else:
        fields += b"Transfer-Encoding: chunked\r\n"
        payload = chunked
    data = method + b" " + target + b" HTTP/" + version + b"\r\n" + host + fields + b"\r\n"
    return Built(data + payload, bad is None, method, target, body)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Backend, ProxyProcess]]:
    backend = Backend("fuzz")
    proxy = ProxyProcess(
        [
            "--backend",
            f"127.0.0.1:{backend.port}",
            "--max-fails",
            "0",
            "--header-timeout",
            "1",
            "--body-timeout",
            "1",
        ],
        tmp_path_factory.mktemp("fuzz"),
    )
    yield backend, proxy
    assert proxy.stop() == 0
    backend.kill()
    log = proxy.log_text()
    for sign in ("Traceback", "never retrieved", "Exception in callback", "unexpected error"):
        assert sign not in log


def _clean(got: Received) -> bool:
    """What a backend received is one clean request: CRLF lines only, h11 parses it whole,
    one framing header at most, and no Connection field but the proxy's own."""
    head = got.raw.split(b"\r\n\r\n", 1)[0]
    if any(b"\r" in line or b"\n" in line for line in head.split(b"\r\n")):
        return False
    framing = [k for k, _ in got.headers if k in (b"content-length", b"transfer-encoding")]
    return len(framing) <= 1 and got.header(b"connection") in ([], [b"close"])


@settings(max_examples=300)
@given(requests())
def test_built_requests(setup: tuple[Backend, ProxyProcess], built: Built) -> None:
    backend, proxy = setup
    before = len(backend.received)
    reply = send(proxy.port, built.data, method=built.method, wait=3, probe=not built.clean)
    arrived = backend.received[before:]
    if built.clean:
        assert reply.status == 200, (built.data, reply.raw[:200])
        assert len(arrived) == 1
        got = arrived[0]
        assert (got.method, got.target, got.body) == (built.method, built.target, built.body)
        assert _clean(got)
    else:
        assert arrived == [], built.data
        assert 400 <= reply.status < 600, (built.data, reply.raw[:200])
        assert reply.closed


@given(st.binary(max_size=300))
def test_arbitrary_bytes(setup: tuple[Backend, ProxyProcess], data: bytes) -> None:
    backend, proxy = setup
    before = len(backend.received)
    # ends like a head, so the proxy judges it at once rather than waiting for the rest
    reply = send(proxy.port, data + b"\r\n\r\n", wait=1.5)
    for got in backend.received[before:]:
        assert _clean(got)
        assert reply.status == 200


_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+;=%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")


def strictly_clean(data: bytes) -> tuple[bytes, bytes] | None:
    """The test's own reading of RFC 9110/9112 for one request: (method, target) if ``data``
    begins with a request a careful proxy may forward, else None. Written from the RFCs'
    grammar, separately from the proxy's checks; h11 only confirms the body framing."""
    while data.startswith(b"\r\n"):
        data = data[2:]
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    if any(b"\r" in line or b"\n" in line for line in lines):
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or method == b"CONNECT":
        return None
    if not re.fullmatch(rb"/[\x21-\x7e]*", target):
        return None
    fields: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name):
            return None
        if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value):
            return None
        fields.append((name.lower(), value))
    if len(fields) > 100:
        return None
    names = [k for k, _ in fields]
    hosts = [v for k, v in fields if k == b"host"]
    if len(hosts) > 1 or (version == b"HTTP/1.1" and not hosts):
        return None
    if hosts and not _HOST.fullmatch(hosts[0]):
        return None
    if b"content-length" in names and b"transfer-encoding" in names:
        return None
    te = [v for k, v in fields if k == b"transfer-encoding"]
    if te and ([v.lower() for v in te] != [b"chunked"] or version != b"HTTP/1.1"):
        return None
    for _, value in (f for f in fields if f[0] == b"connection"):
        tokens = {t.strip().lower() for t in value.split(b",")}
        if tokens & {b"content-length", b"transfer-encoding", b"host"}:
            return None
    if any(k == b"expect" and v.lower() != b"100-continue" for k, v in fields):
        return None
    conn = h11.Connection(h11.SERVER)  # the body's framing, and the whole message, complete
    conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.EndOfMessage):
                return method, target
    except h11.RemoteProtocolError:
        return None


@given(requests().filter(lambda b: b.clean), st.data())
def test_one_byte_changed(
    setup: tuple[Backend, ProxyProcess], built: Built, data: st.DataObject
) -> None:
    """Any one byte of a clean request replaced: the backend gets the request exactly when
    the test's own strict reading of the bytes accepts it."""
    backend, proxy = setup
    position = data.draw(st.integers(0, len(built.data) - 1))
    byte = data.draw(st.sampled_from([0, 9, 10, 13, 32, 43, 44, 58, 95, 127, 178, 255]))
    mutated = built.data[:position] + bytes([byte]) + built.data[position + 1 :]
    expected = strictly_clean(mutated)
    before = len(backend.received)
    reply = send(proxy.port, mutated, method=built.method, wait=1.5, probe=False)
    arrived = backend.received[before:]
    if expected is None:
        assert arrived == [], mutated
        assert reply.status == 0 or reply.status >= 400
    else:
        assert len(arrived) == 1, (mutated, reply.raw[:200])
        assert _clean(arrived[0])
        assert (arrived[0].method, arrived[0].target) == expected
        assert reply.status == 200


def test_log_is_clean_so_far(setup: tuple[Backend, ProxyProcess], tmp_path: Path) -> None:
    _, proxy = setup
    assert "Traceback" not in proxy.log_text()
