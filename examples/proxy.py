"""An asyncio HTTP/1.1 reverse proxy built on lbalgo: the library's real use, end to end.

    python examples/proxy.py --listen 127.0.0.1:8080 --algorithm swrr \\
        --backend 127.0.0.1:9001=5 --backend 127.0.0.1:9002=1 --backend 127.0.0.1:9003=1

What it shows:

- one pick per client request, held as a ``connection()`` lease for exactly as long as the
  request and its response are in flight (so least connections sees real load);
- retries with :func:`lbalgo.attempts`: a backend that refuses the connection (or times out,
  or closes before answering a request that is safe to resend) is reported with
  ``Lease.fail()`` and excluded for this request, and the next pick is tried; the client
  sees no error while any backend is alive.
  ``max_fails=1`` makes passive health stop sending new requests to it for
  ``--fail-timeout`` seconds, as nginx's ``max_fails``/``fail_timeout`` do;
- ``X-Forwarded-For`` (appended to the client's own, if any);
- source-IP hashing from the peer address of the client's TCP connection;
- bodies framed by ``Content-Length`` or ``Transfer-Encoding: chunked`` in both directions,
  relayed as they stream (never buffered whole); keep-alive on the client side;
- bounded: heads up to ``MAX_HEAD`` bytes, bodies relayed ``COPY_CHUNK`` bytes at a time, and
  every wait limited (``--connect-timeout``, ``--read-timeout`` for each read and write of a
  message, ``--idle-timeout`` between requests), so no peer can hold a lease forever;
- only failures before the response head reached the client count against a backend
  (``Lease.fail()``); a client that goes away releases its lease normally.

Kept simple on purpose: one upstream connection per request (``Connection: close`` to the
backend), no TLS, no ``Upgrade``/WebSocket, no active health checks (a health checker would
call ``mark_down``/``mark_up``). Standard library plus lbalgo only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import math
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from lbalgo import (
    Backend,
    BackendGroup,
    NoBackendAvailable,
    Scheduler,
    SmoothWeightedRoundRobin,
    SourceIPHash,
    WeightedLeastConnections,
    attempts,
)

log = logging.getLogger("lbalgo.proxy")

MAX_HEAD = 64 * 1024  # largest request/response head accepted (nginx's large buffers: 4x8k+)
COPY_CHUNK = 64 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded. Transfer-Encoding is one too, but
# bodies are relayed in their original framing, so it travels with them.
# as nginx's proxy_next_upstream: once sent, these are not resent to another backend
NON_IDEMPOTENT = frozenset({"POST", "LOCK", "PATCH"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
ALGORITHMS = {
    "swrr": SmoothWeightedRoundRobin,
    "wlc": WeightedLeastConnections,
    "source-ip-hash": SourceIPHash,
}


class BadMessage(Exception):
    """A malformed HTTP message (answered with 400 when it comes from the client)."""


class BackendFailed(Exception):
    """The backend failed before any part of its response reached the client.

    ``retryable``: the request can still go to another backend (the connection was refused
    or timed out, or the backend closed without answering a request that is safe to resend).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Head:
    """The start line and header fields of one HTTP message."""

    start: str
    fields: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.fields if k.lower() == name]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        value = self.get(name)
        return {t.strip().lower() for t in value.split(",")} if value else set()

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.fields), "", ""]
        return "\r\n".join(lines).encode("latin-1")


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """Read one message head; ``None`` if the peer closed cleanly before sending anything."""
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial.strip():
            return None
        raise BadMessage("connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise BadMessage(f"message head larger than {MAX_HEAD} bytes") from None
    lines = data.decode("latin-1").split("\r\n")[:-2]
    while lines and not lines[0]:  # RFC 9112 2.2: ignore empty lines before a request line
        lines.pop(0)
    if not lines:
        raise BadMessage("empty message head")
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or " " in name:
            raise BadMessage(f"malformed header line {line!r}")
        fields.append((name, value.strip()))
    return Head(lines[0], fields)


def body_framing(head: Head) -> tuple[str, int]:
    """How a message's body is delimited: ("chunked", 0), ("length", n) or ("none", 0)."""
    encodings = head.tokens("transfer-encoding")
    if encodings:
        if encodings != {"chunked"}:
            raise BadMessage(f"unsupported Transfer-Encoding {head.get('transfer-encoding')!r}")
        return "chunked", 0
    length = head.get("content-length")
    if length is None:
        return "none", 0
    values = {v.strip() for v in length.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise BadMessage(f"invalid Content-Length {length!r}")
    return "length", int(values.pop())


async def copy_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framing: str,
    length: int,
    *,
    timeout: float,
) -> None:
    """Relay one body as it streams, keeping its framing ("until-close": up to EOF).

    Bounded: at most ``COPY_CHUNK`` bytes are held at a time (also for a chunk that claims
    to be huge), and every read and every write waits at most ``timeout`` seconds
    (``TimeoutError``), like nginx's ``proxy_read_timeout``/``send_timeout``.
    """

    async def read(size: int) -> bytes:
        async with asyncio.timeout(timeout):
            data = await reader.read(size)
        if not data:
            raise asyncio.IncompleteReadError(b"", size)
        return data

    async def read_line() -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError:
            raise BadMessage(f"chunked body line longer than {MAX_HEAD} bytes") from None

    async def send(data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(timeout):
            await writer.drain()

    async def relay(left: int) -> None:
        while left:
            data = await read(min(left, COPY_CHUNK))
            await send(data)
            left -= len(data)

    if framing == "length":
        await relay(length)
    elif framing == "chunked":
        while True:
            line = await read_line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadMessage(f"bad chunk size line {line[:40]!r}") from None
            if size < 0:
                raise BadMessage(f"bad chunk size line {line[:40]!r}")
            await send(line)
            if size == 0:
                while True:  # trailer fields, then the empty line that ends the body
                    trailer = await read_line()
                    await send(trailer)
                    if trailer == b"\r\n":
                        return
            await relay(size)
            if await read_line() != b"\r\n":
                raise BadMessage("chunk data longer than its size line says")
            await send(b"\r\n")
    elif framing == "until-close":
        while True:
            async with asyncio.timeout(timeout):
                data = await reader.read(COPY_CHUNK)
            if not data:  # EOF ends this body
                return
            await send(data)


def simple_response(status: str, text: str, *, close: bool) -> bytes:
    body = text.encode()
    head = Head(
        f"HTTP/1.1 {status}",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    if close:
        head.fields.append(("Connection", "close"))
    return head.encode() + body


def client_address(writer: asyncio.StreamWriter) -> str | None:
    """The client's IP from its TCP connection (the zone of a link-local address dropped)."""
    peer = writer.get_extra_info("peername")
    if not peer:
        return None
    host = str(peer[0]).split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:  # a Unix socket or another non-IP transport: no address to hash
        return None


class Proxy:
    """Forwards each client request to the backend ``scheduler`` picks for it."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 60.0,
        idle_timeout: float = 75.0,
    ) -> None:
        self.scheduler = scheduler
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # how long a client connection may sit between requests (nginx keepalive_timeout)
        self.idle_timeout = idle_timeout

    async def handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        client = client_address(writer)
        try:
            while True:
                head = await asyncio.wait_for(read_head(reader), self.idle_timeout)
                if head is None:
                    break
                if not await self.forward(head, reader, writer, client):
                    break
        except BadMessage as error:
            log.info("bad request from %s: %s", client, error)
            with contextlib.suppress(ConnectionError):
                writer.write(simple_response("400 Bad Request", f"{error}\n", close=True))
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client or the backend went away mid-message: nothing left to tell
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def forward(
        self,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str | None,
    ) -> bool:
        """Forward one request and its response; return whether the client stays connected."""
        method, _, rest = head.start.partition(" ")
        target, _, version = rest.partition(" ")
        if not method or not target or version not in ("HTTP/1.1", "HTTP/1.0"):
            raise BadMessage(f"malformed request line {head.start!r}")
        framing, length = body_framing(head)
        has_body = framing == "chunked" or length > 0
        keep_alive = version == "HTTP/1.1" and "close" not in head.tokens("connection")

        upstream_head = self.upstream_request(head, method, target, client)
        # resending is safe when the body was not streamed out and the method allows it
        resendable = not has_body and method not in NON_IDEMPOTENT
        continue_first = has_body and "100-continue" in head.tokens("expect")
        failed: list[str] = []
        try:
            # lbalgo.attempts: one lease per try, each on a backend not tried yet
            for lease in attempts(self.scheduler, client, tries=len(self.scheduler.group)):
                try:
                    reusable = await self.exchange(
                        lease.backend,
                        upstream_head,
                        method,
                        reader,
                        writer,
                        framing,
                        length,
                        resendable=resendable,
                        continue_first=continue_first,
                        keep_alive=keep_alive,
                    )
                except BackendFailed as error:
                    lease.fail()  # counts towards max_fails: passive health
                    failed.append(lease.backend.key)
                    log.warning("backend %s failed: %s", lease.backend.key, error)
                    if error.retryable:
                        continue
                    writer.write(simple_response("502 Bad Gateway", f"{error}\n", close=True))
                    await writer.drain()
                    return False
                except BaseException:
                    # the client's malformed message, the client going away, a response
                    # cut off after its head reached the client, cancellation: none is a
                    # failed attempt on this backend (nginx counts only failures before the
                    # response head as max_fails), so release without a failure
                    lease.release()
                    raise
                lease.release()
                return reusable
            reason = f"every backend failed ({', '.join(failed)})"
        except NoBackendAvailable as error:
            reason = str(error)
        log.warning("502 for %s %s: %s", method, target, reason)
        # an unread request body would be taken for the next request: close instead
        keep = keep_alive and not has_body
        writer.write(simple_response("502 Bad Gateway", f"{reason}\n", close=not keep))
        await writer.drain()
        return keep

    def upstream_request(self, head: Head, method: str, target: str, client: str | None) -> Head:
        named = head.tokens("connection")
        # "Expect: 100-continue" is answered by the proxy itself once a backend is connected
        dropped = HOP_BY_HOP | named | {"expect"}
        fields = [(k, v) for k, v in head.fields if k.lower() not in dropped]
        forwarded = [v for k, v in fields if k.lower() == "x-forwarded-for"]
        fields = [(k, v) for k, v in fields if k.lower() != "x-forwarded-for"]
        chain = ", ".join([*forwarded, client]) if client else ", ".join(forwarded)
        if chain:
            fields.append(("X-Forwarded-For", chain))
        fields.append(("Connection", "close"))  # one upstream connection per request
        return Head(f"{method} {target} HTTP/1.1", fields)

    async def exchange(
        self,
        backend: Backend,
        request: Head,
        method: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        framing: str,
        length: int,
        *,
        resendable: bool,
        continue_first: bool,
        keep_alive: bool,
    ) -> bool:
        """One request/response with ``backend``; returns whether the client connection can
        carry another request. Raises :class:`BackendFailed` while nothing has reached the
        client yet."""
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(backend.host, backend.port, limit=MAX_HEAD),
                self.connect_timeout,
            )
        except (TimeoutError, OSError) as error:
            reason = str(error) or type(error).__name__
            raise BackendFailed(f"connect: {reason}", retryable=True) from None
        try:
            up_writer.write(request.encode())
            if continue_first:  # the client waits for this before it sends the body
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            try:
                await copy_body(reader, up_writer, framing, length, timeout=self.read_timeout)
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as error:
                if not up_writer.is_closing():
                    raise  # the client's side failed: not the backend's fault
                reason = f"lost sending the request: {str(error) or type(error).__name__}"
                raise BackendFailed(reason, retryable=False) from None
            response, code = await self.response_head(backend, up_reader, writer, resendable)
            return await self.relay_response(
                response, code, method, up_reader, writer, keep_alive=keep_alive
            )
        finally:
            up_writer.close()
            with contextlib.suppress(ConnectionError):
                await up_writer.wait_closed()

    async def response_head(
        self,
        backend: Backend,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        resendable: bool,
    ) -> tuple[Head, int]:
        """The final response head (interim 1xx ones, such as 100 Continue, are relayed)."""
        while True:
            try:
                response = await asyncio.wait_for(read_head(up_reader), self.read_timeout)
            except (TimeoutError, ConnectionError) as error:
                reason = str(error) or type(error).__name__
                raise BackendFailed(f"no response: {reason}", retryable=resendable) from None
            except BadMessage as error:
                raise BackendFailed(f"bad response: {error}", retryable=False) from None
            if response is None:
                raise BackendFailed("closed without responding", retryable=resendable)
            status = response.start.split(" ", 2)
            code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
            if not response.start.startswith("HTTP/1.") or not 100 <= code <= 599:
                raise BackendFailed(f"bad status line {response.start!r}", retryable=False)
            if code >= 200:
                return response, code
            writer.write(response.encode())

    async def relay_response(
        self,
        response: Head,
        code: int,
        method: str,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        keep_alive: bool,
    ) -> bool:
        """Relay the response; return whether the client connection stays open."""
        if method == "HEAD" or code in (204, 304):
            framing, length = "none", 0
        else:
            try:
                framing, length = body_framing(response)
            except BadMessage as error:
                raise BackendFailed(f"bad response: {error}", retryable=False) from None
            if framing == "none":
                framing = "until-close"  # no length, not chunked: the body ends at EOF
        named = response.tokens("connection")
        fields = [
            (k, v)
            for k, v in response.fields
            if k.lower() not in HOP_BY_HOP and k.lower() not in named
        ]
        # a body delimited by the backend's close can only be delimited the same way for us
        reusable = keep_alive and framing != "until-close"
        if not reusable:
            fields.append(("Connection", "close"))
        writer.write(Head(response.start, fields).encode())
        try:
            await copy_body(up_reader, writer, framing, length, timeout=self.read_timeout)
        except BadMessage as error:  # too late for a 502: the client got the head already
            raise ConnectionError(f"backend sent a malformed body: {error}") from None
        await writer.drain()
        return reusable


def parse_backend(spec: str) -> Backend:
    """``host:port`` or ``host:port=weight`` (IPv6 hosts in brackets) as a Backend."""
    address, _, weight_text = spec.partition("=")
    host, colon, port_text = address.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT[=WEIGHT], got {spec!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if weight_text and not weight_text.isdigit():
        raise argparse.ArgumentTypeError(f"weight must be an integer 0..100, got {spec!r}")
    try:
        return Backend(host, int(port_text), int(weight_text) if weight_text else 1)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{spec!r}: {error}") from None


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def parse_listen(spec: str) -> tuple[str, int]:
    host, colon, port_text = spec.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {spec!r}")
    return host.strip("[]") or "127.0.0.1", int(port_text)


async def serve(args: argparse.Namespace) -> None:
    group = BackendGroup(args.backend)
    scheduler = ALGORITHMS[args.algorithm](group, max_fails=1, fail_timeout=args.fail_timeout)
    proxy = Proxy(
        scheduler,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        idle_timeout=args.idle_timeout,
    )
    host, port = args.listen
    server = await asyncio.start_server(proxy.handle_client, host, port, limit=MAX_HEAD)
    bound = server.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    # the first line on stdout says where we listen (port 0 picks a free one; tests read it)
    print(
        f"listening on http://{shown}:{bound[1]} ({args.algorithm} over {len(group)} backends)",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="An HTTP/1.1 reverse proxy that balances requests with lbalgo."
    )
    parser.add_argument(
        "--listen", type=parse_listen, default=("127.0.0.1", 8080), metavar="HOST:PORT"
    )
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="swrr")
    parser.add_argument(
        "--backend",
        type=parse_backend,
        action="append",
        required=True,
        metavar="HOST:PORT[=WEIGHT]",
        help="a backend (repeat for each); the weight defaults to 1",
    )
    parser.add_argument("--connect-timeout", type=parse_seconds, default=2.0, metavar="SECONDS")
    parser.add_argument(
        "--read-timeout",
        type=parse_seconds,
        default=60.0,
        metavar="SECONDS",
        help="longest wait for a response head, and for each read or write of a body (default 60)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=parse_seconds,
        default=75.0,
        metavar="SECONDS",
        help="close a client connection idle this long between requests (default 75)",
    )
    parser.add_argument(
        "--fail-timeout",
        type=parse_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long a backend that failed gets no new requests (default 10)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every retry")
    args = parser.parse_args(argv)
    try:
        BackendGroup(args.backend)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(args))
    except OSError as error:  # the listen address is taken or not ours
        print(
            f"proxy: cannot listen on {args.listen[0]}:{args.listen[1]}: {error}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
