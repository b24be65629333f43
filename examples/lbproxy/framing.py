"""HTTP/1.1 framing for the proxy: h11 parses, this module adds the checks h11 leaves to us.

h11 (a maintained, sans-I/O HTTP/1.1 library) parses request and response heads, chunk sizes
and Content-Length values strictly. What it accepts and a proxy must not (each one a way to
make the proxy and the backend see different messages: request smuggling, response splitting):

- bare LF line ends, and obs-fold continuation lines (it unfolds them);
- DEL and other control bytes in header values (it refuses only some);
- ``Transfer-Encoding`` together with ``Content-Length`` (RFC 9112 6.3: an intermediary must
  not forward both), and ``Transfer-Encoding`` in an HTTP/1.0 message (RFC 9112 6.1);
- a ``Connection`` header naming ``Content-Length``, ``Transfer-Encoding`` or ``Host``
  (removing the named fields, as RFC 9110 7.6.1 asks, would drop the framing or the Host);
- an empty or malformed ``Host``; versions other than 1.0 and 1.1; status codes over 599;
- any number of header fields within the head size.

Every message is written out again from the parts h11 parsed and this module checked, never
copied as raw bytes, so what the backend (or the client) reads is exactly the message the
proxy checked.
"""

from __future__ import annotations

import re
from typing import Protocol

import h11

MAX_HEAD = 32 * 1024  # largest head accepted (bytes): nginx's large_client_header_buffers 4x8k
MAX_HEADERS = 100  # most header fields in one head (HAProxy's tune.http.maxhdr is 101)

# Bytes that never belong in a head outside a CRLF line end: NUL and other controls except
# HTAB, DEL, a CR not followed by LF, an LF not preceded by CR, and an obs-fold line start.
_BAD_HEAD = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n|\n[ \t]")
# RFC 9110 4.2.3 uri-host [":" port]: a reg-name (no comma, no space, no "/"; a comma list
# would be two hosts) or a bracketed IP literal
_HOST = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+;=%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")
_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#@]+)([^#]*)")
# Hop-by-hop fields (RFC 9110 7.6.1) and the ones the proxy sets itself: never forwarded.
# Framing (Content-Length, Transfer-Encoding) is rebuilt by h11 from the parsed message.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
_NEVER_NAMED = frozenset({b"content-length", b"transfer-encoding", b"host"})
VERSIONS = frozenset({b"1.0", b"1.1"})

Headers = list[tuple[bytes, bytes]]


class ProtocolError(Exception):
    """A message the proxy refuses; ``status`` is the answer when a client sent it."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


def head_end(buffer: bytearray) -> int:
    """The length of the complete head at the start of ``buffer``, or 0 if incomplete.

    Refuses (``ProtocolError``) a head with a forbidden byte as soon as it arrives, so a client
    sending bare-LF heads gets its 400 at once instead of after a timeout, and a head longer
    than ``MAX_HEAD`` (431). O(n) in the bytes buffered, in C (one regex, one find).
    """
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    scan = end + 4 if end >= 0 else min(len(buffer), MAX_HEAD + 4)
    if end < 0 and buffer[scan - 1] == 13:
        scan -= 1  # a CR at the end of what is scanned may still be followed by its LF
    bad = _BAD_HEAD.search(buffer, 0, scan)
    if bad:
        raise ProtocolError(f"forbidden byte {bad.group()!r} at offset {bad.start()} of the head")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise ProtocolError(f"head larger than {MAX_HEAD} bytes", 431)
        return 0
    return end + 4


class _RawItems(Protocol):
    """h11's parsed headers (their type is private to h11)."""

    def raw_items(self) -> list[tuple[bytes, bytes]]: ...


class _Fields:
    """A parsed head split up: ``framing`` (the Content-Length or Transfer-Encoding field,
    lower-case name), ``kept`` (end-to-end fields with their names as sent), ``taken`` (the
    values of the fields named in ``take``, which the proxy rewrites), ``close``.

    Raises on the framing shapes h11 lets through. h11 has already refused a Transfer-Encoding
    other than ``chunked``, a malformed or conflicting Content-Length, and merged equal copies.
    """

    __slots__ = ("close", "framing", "kept", "taken")

    def __init__(self, headers: _RawItems, version: bytes, take: frozenset[bytes]) -> None:
        raw = headers.raw_items()  # names as the sender wrote them: some peers care
        if len(raw) > MAX_HEADERS:
            raise ProtocolError(f"more than {MAX_HEADERS} header fields", 431)
        framing: Headers = []
        kept: list[tuple[bytes, bytes, bytes]] = []
        taken: dict[bytes, list[bytes]] = {name: [] for name in take}
        named: set[bytes] = set()
        for name, value in raw:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                if lower == b"content-length" or lower == b"transfer-encoding":
                    framing.append((lower, value))
                elif lower == b"connection":
                    named.update(t.strip().lower() for t in value.split(b","))
            elif lower in take:
                taken[lower].append(value)
            else:
                kept.append((lower, name, value))
        if len(framing) > 1:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        if framing and framing[0][0] == b"transfer-encoding" and version != b"1.1":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 message")
        forbidden = named & _NEVER_NAMED
        if forbidden:
            raise ProtocolError(f"Connection names {sorted(forbidden)[0].decode()}")
        self.close = b"close" in named
        named.discard(b"close")
        named.discard(b"keep-alive")
        # fields the sender marked hop-by-hop (for this hop only) are dropped too
        self.kept = [(name, value) for lower, name, value in kept if lower not in named]
        self.framing = framing
        self.taken = taken


_REQUEST_TAKES = frozenset({b"host", b"expect", b"x-forwarded-for"})
_RESPONSE_TAKES: frozenset[bytes] = frozenset()


class Request:
    """A checked client request, ready to send upstream.

    ``head_fields``: the end-to-end fields (hop-by-hop ones removed; Host, Expect and
    X-Forwarded-For apart: the proxy writes its own); ``forwarded_for`` the client's own
    X-Forwarded-For values; ``framing``: a ``Content-Length`` or ``Transfer-Encoding:
    chunked`` field, if the request has a body.
    """

    __slots__ = (
        "chunked",
        "expects_continue",
        "forwarded_for",
        "framing",
        "head_fields",
        "host",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(self, event: h11.Request) -> None:
        if event.http_version not in VERSIONS:
            raise ProtocolError(f"HTTP version {event.http_version.decode()!r}", 505)
        method, target = event.method, event.target
        if method == b"CONNECT":
            raise ProtocolError("CONNECT is not supported", 501)
        fields = _Fields(event.headers, event.http_version, _REQUEST_TAKES)
        hosts = fields.taken[b"host"]  # h11 refused two of them
        host = hosts[0] if hosts else None
        absolute = _ABSOLUTE.fullmatch(target)
        if absolute:
            # RFC 9112 3.2.2: the target's authority replaces Host; the backend gets origin form
            host, target = absolute.group(1), absolute.group(2) or b"/"
            if not target.startswith(b"/"):
                target = b"/" + target
        elif not target.startswith(b"/") and not (target == b"*" and method == b"OPTIONS"):
            raise ProtocolError(f"request target {target[:64]!r}")
        if host is not None and not _HOST.fullmatch(host):
            raise ProtocolError(f"Host {host[:64]!r}")
        if host is None and event.http_version == b"1.1":
            raise ProtocolError("no Host")
        expect = fields.taken[b"expect"]
        if expect and [v.lower() for v in expect] != [b"100-continue"]:
            raise ProtocolError(f"Expect {b', '.join(expect)[:64]!r}", 417)
        self.method = method
        self.target = target
        self.version = event.http_version
        # HTTP/1.0 keep-alive is not offered (as h11): 1.0 clients get one request each
        self.keep_alive = event.http_version == b"1.1" and not fields.close
        self.host = host
        self.expects_continue = bool(expect)  # answered by the proxy itself
        self.forwarded_for = fields.taken[b"x-forwarded-for"]
        self.head_fields = fields.kept
        self.chunked = bool(fields.framing) and fields.framing[0][0] == b"transfer-encoding"
        if self.chunked:
            self.framing = [(b"Transfer-Encoding", b"chunked")]
        elif fields.framing:
            self.framing = [(b"Content-Length", fields.framing[0][1])]
        else:
            self.framing = []


class ResponseHead:
    """A checked backend response head: what to pass on, and how its body is framed
    (``"length"``: Content-Length, ``"chunked"``, or ``"close"``: until the backend closes)."""

    __slots__ = ("fields", "mode", "reason", "status")

    def __init__(self, event: h11.Response | h11.InformationalResponse) -> None:
        if event.http_version not in VERSIONS:
            raise ProtocolError(f"HTTP version {event.http_version.decode()!r}", 502)
        if event.status_code > 599:
            raise ProtocolError(f"status {event.status_code}", 502)
        try:
            fields = _Fields(event.headers, event.http_version, _RESPONSE_TAKES)
        except ProtocolError as error:
            raise ProtocolError(str(error), 502) from None
        self.status = event.status_code
        self.reason = event.reason
        self.fields = fields.kept
        if not fields.framing:
            self.mode = "close"
        elif fields.framing[0][0] == b"transfer-encoding":  # h11 checked: exactly "chunked"
            self.mode = "chunked"
        else:
            self.mode = "length"
            self.fields.append((b"Content-Length", fields.framing[0][1]))


def serialize(start: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """A message head from checked parts (h11 parsed and validated every field, so writing
    them out needs no second validation)."""
    return start + b"".join([b"%s: %s\r\n" % field for field in fields]) + b"\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def error_response(status: int, *, close: bool) -> bytes:
    """A short plain-text answer from the proxy itself, as bytes (it is also sent where h11
    has refused the request and so will not frame an answer). It never names a backend
    (those are internal addresses); the log line written next to it does."""
    reason = REASONS.get(status, b"Error")
    body = b"%d %s\n" % (status, reason)
    connection = b"close" if close else b"keep-alive"
    head = b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: %s"
    return head % (status, reason, len(body), connection) + b"\r\n\r\n" + body
