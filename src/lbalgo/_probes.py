"""The built-in probes of :mod:`lbalgo.health`: a TCP connect and one HTTP/1.1 GET.

Each is a factory returning an ``async def check(backend) -> bool`` that
:class:`~lbalgo.health.HealthChecker` calls; a failure raises, with the reason in the
exception's text (:class:`~lbalgo.errors.HealthCheckFailed` for a wrong answer, ``OSError``
for a refused connection). Import them from :mod:`lbalgo.health`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Collection
from typing import TypeAlias

from lbalgo.backend import Backend
from lbalgo.errors import HealthCheckFailed, InvalidOptionError

__all__ = ["MAX_RESPONSE_HEAD", "Check", "close_quietly", "http", "tcp"]

Check: TypeAlias = Callable[[Backend], Awaitable[bool]]
"""A health check: ``async def check(backend) -> bool`` (``True`` means healthy)."""

MAX_RESPONSE_HEAD = 16_384
"""Bytes :func:`http` reads at most before it has a final status line (1xx heads included)."""

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?\r?\n")
_TOKEN = re.compile(r"[!-~]+")  # visible ASCII: nothing that could split a request line


def tcp() -> Check:
    """A check that passes when a TCP connection to the backend's address opens.

    One connection per probe, closed at once. O(1).

    >>> import asyncio
    >>> from lbalgo import Backend
    >>> async def demo():
    ...     server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    ...     async with server:
    ...         return await tcp()(Backend("127.0.0.1", server.sockets[0].getsockname()[1]))
    >>> asyncio.run(demo())
    True
    """

    async def tcp_check(backend: Backend) -> bool:
        _, writer = await asyncio.open_connection(backend.host, backend.port)
        await close_quietly(writer)
        return True

    return tcp_check


def http(
    path: str = "/", *, expect: Collection[int] = range(200, 400), host: str | None = None
) -> Check:
    """A check that sends one ``GET path HTTP/1.1`` and passes when the status is in ``expect``.

    The ``Host`` header is ``host`` if given, else the backend's address (``"10.0.0.1"`` on
    port 80, ``"10.0.0.1:8080"`` or ``"[2001:db8::1]:8080"`` otherwise). The request says
    ``Connection: close``; only the status line is read (interim 1xx responses skipped), at most
    :data:`MAX_RESPONSE_HEAD` bytes, and the connection is closed, so a slow or endless body
    costs nothing. Anything else (no status line, a malformed one, an unexpected status) fails
    with the reason in :class:`~lbalgo.errors.HealthCheckFailed`. Bad arguments raise
    :class:`~lbalgo.errors.InvalidOptionError` here, not at probe time.

    >>> http("/healthz", expect={200, 204}, host="api.example.com")  # doctest: +ELLIPSIS
    <function http.<locals>.http_check at 0x...>
    >>> http("healthz")
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: path must start with '/' and be visible ASCII, got 'healthz'
    """
    if not _visible(path, 2048) or path[0] != "/":
        raise InvalidOptionError(f"path must start with '/' and be visible ASCII, got {path!r}")
    codes = _check_expect(expect)
    wanted = _describe_codes(codes, expect)
    if host is not None and not _visible(host, 261):
        raise InvalidOptionError(f"host must be None or a visible-ASCII host name, got {host!r}")

    async def http_check(backend: Backend) -> bool:
        name = host or _host_header(backend)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: lbalgo-health\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        ).encode("ascii")
        reader, writer = await asyncio.open_connection(
            backend.host, backend.port, limit=MAX_RESPONSE_HEAD
        )
        try:
            writer.write(request)
            await writer.drain()
            status = await _read_status(reader)
        finally:
            await close_quietly(writer)
        if status not in codes:
            raise HealthCheckFailed(f"HTTP status {status}, expected {wanted}")
        return True

    return http_check


def _host_header(backend: Backend) -> str:
    if backend.port != 80:
        return backend.address
    return f"[{backend.host}]" if ":" in backend.host else backend.host


def _check_expect(expect: Collection[int]) -> frozenset[int]:
    bad = InvalidOptionError(
        f"expect must be a non-empty collection of HTTP status codes 100..599, got {expect!r}"
    )
    if isinstance(expect, (str, bytes)) or not isinstance(expect, Collection) or len(expect) == 0:
        raise bad
    if len(expect) > 500:  # at most 500 codes exist; bounds the copy below
        raise bad
    codes = frozenset(expect)
    if any(type(c) is not int or not 100 <= c <= 599 for c in codes):
        raise bad
    return codes


def _visible(value: object, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit and bool(_TOKEN.fullmatch(value))


def _describe_codes(codes: frozenset[int], expect: Collection[int]) -> str:
    if isinstance(expect, range) and expect.step == 1:
        return f"{expect.start}..{expect.stop - 1}"
    return ", ".join(str(c) for c in sorted(codes))


async def _read_status(reader: asyncio.StreamReader) -> int:
    budget = MAX_RESPONSE_HEAD
    while True:
        line = await _read_line(reader, budget)
        budget -= len(line)
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            raise HealthCheckFailed(f"not an HTTP/1.x status line: {line[:80]!r}")
        status = int(match[1])
        if status >= 200 or status == 101:
            return status
        # an interim response (100 Continue, 103 Early Hints): skip its head, read the next
        while (header := await _read_line(reader, budget)) not in (b"\r\n", b"\n"):
            budget -= len(header)
        budget -= len(header)


async def _read_line(reader: asyncio.StreamReader, budget: int) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        raise HealthCheckFailed(
            f"connection closed after {len(exc.partial)} bytes, before a status line"
        ) from None
    except asyncio.LimitOverrunError:
        line = b""  # over the stream's limit: same verdict as over the budget below
        budget = -1
    if len(line) > budget:
        raise HealthCheckFailed(f"response head longer than {MAX_RESPONSE_HEAD} bytes")
    return line


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # a peer that resets the connection has answered all the same
    with contextlib.suppress(OSError):
        await writer.wait_closed()
