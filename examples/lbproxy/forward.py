"""One client connection: read requests, forward each to the backend the scheduler picks,
relay the response. Every wait is bounded; every lease is released on every path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import h11

from lbalgo import Lease, NoBackendAvailable, Scheduler

from .framing import (
    CONTINUE,
    LAST_CHUNK,
    MAX_HEAD,
    ProtocolError,
    Request,
    ResponseHead,
    chunk,
    error_response,
    head_end,
    serialize,
)
from .pool import READ_SIZE, Pool, Upstream

log = logging.getLogger("lbproxy")

# a client that closes while its response is awaited is noticed after this long (seconds):
# watching costs a task, which most requests, answered sooner, then never pay for
WATCH_AFTER = 0.25
BODY_BUFFER = 64 * 1024  # request body bytes read before a backend is picked
MAX_INTERIM = 32  # 1xx responses relayed per request before the backend is deemed broken
# as nginx's proxy_next_upstream: once sent, these are not sent again to another backend
NON_IDEMPOTENT = frozenset({b"POST", b"LOCK", b"PATCH"})


# h11 parses a backend's response only once it has seen a request go out; the request itself
# is written by serialize(), so h11 is given a stand-in with the same response framing (a
# HEAD response has no body) and no body. Built once: h11 events are immutable.
_STAND_IN = {
    head: h11.Request(method=b"HEAD" if head else b"GET", target=b"/", headers=[(b"host", b"-")])
    for head in (False, True)
}
_END = h11.EndOfMessage()


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of a proxy (seconds), named after nginx's and HAProxy's."""

    connect: float = 2.0  # proxy_connect_timeout / timeout connect
    read: float = 60.0  # each read or write of either peer: proxy_read_timeout, send_timeout
    head: float = 10.0  # a whole request head: client_header_timeout / timeout http-request
    body: float = 60.0  # a whole request body: a trickling client cannot hold a backend longer
    idle: float = 75.0  # between requests on a kept-alive connection: keepalive_timeout


class ClientGone(Exception):
    """The client closed its connection or stopped reading: nobody is left to answer."""


class BackendError(Exception):
    """The backend failed (refused, reset, timed out, malformed response): counted against it.

    ``retryable``: nothing of the response reached the client and the request can be sent
    again (nothing was sent yet, or it is idempotent and the proxy holds its whole body)."""

    def __init__(self, reason: str, *, retryable: bool, status: int = 502) -> None:
        super().__init__(reason)
        self.retryable = retryable
        self.status = status


class ClientConnection:
    """Serves one client connection until it closes, errs, idles out or the proxy stops."""

    def __init__(
        self,
        proxy: Proxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str | None,
    ) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer
        self.client = client
        self.pending = bytearray()  # received bytes not yet given to h11
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.idle = True  # waiting for a request's first byte: a stopping proxy may close it
        self.gone = False  # set by watch() when the client closes while a response is awaited
        self.upstream: Upstream | None = None  # aborted by watch() when the client leaves
        self.watcher: asyncio.Task[None] | None = None
        self.out: list[bytes] = []  # framed bytes for the client, not yet written
        self.answered = False  # a final response head was written: no error answer now
        self.head_queued = False  # a final response head is queued
        self.keep_alive = False  # the response relayed lets the connection carry another
        self.chunked = False  # the response body is chunked for the client
        self.head_only = False  # the response has no body (HEAD, 204, 304)
        self.linger = False  # an error answer was sent: close without losing it
        self.queued = 0  # their size

    def queue(self, data: bytes) -> None:
        """Bytes for the client, written by the next :meth:`flush`."""
        self.out.append(data)
        self.queued += len(data)

    async def flush(self) -> None:
        """Write what is queued (one system call) and wait, bounded, until the client's socket
        takes it: a client that does not read stalls the relay, not the proxy's memory."""
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out.clear()
            self.queued = 0
            self.answered = self.head_queued
        try:
            async with asyncio.timeout(self.proxy.limits.read):
                await self.writer.drain()
        except (ConnectionError, TimeoutError) as error:
            raise ClientGone(f"writing: {error!r}") from None

    async def answer_error(self, status: int, *, keep_alive: bool) -> bool:
        """Answer ``status`` from the proxy itself, if no response has started; return
        whether the connection can carry another request."""
        if self.answered:
            return False  # a response is under way: closing is the only signal left
        keep = keep_alive and not self.proxy.stopping and self.conn.their_state is h11.DONE
        self.writer.write(error_response(status, close=not keep))
        self.linger = not keep
        try:
            async with asyncio.timeout(self.proxy.limits.read):
                await self.writer.drain()
        except (ConnectionError, TimeoutError):
            return False
        return keep

    async def _read(self, deadline: float) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(min(loop.time() + self.proxy.limits.read, deadline)):
                return await self.reader.read(READ_SIZE)
        except ConnectionError as error:
            raise ClientGone(f"reading: {error!r}") from None

    async def read_request(self) -> Request | None:
        """The next request's head; None when the client closes or idles out between requests."""
        loop = asyncio.get_running_loop()
        limits = self.proxy.limits
        self.idle = not self.pending
        self.answered = self.head_queued = self.keep_alive = False
        deadline = loop.time() + (limits.idle if self.idle else limits.head)
        while True:
            # RFC 9112 2.2: a server should ignore empty lines before a request line
            while self.pending.startswith(b"\r\n"):
                del self.pending[:2]
            end = head_end(self.pending) if self.pending else 0
            if end:
                break
            try:
                data = await self._read(deadline)
            except TimeoutError:
                if self.pending:
                    raise ProtocolError("request head not complete in time", 408) from None
                return None
            if not data:
                if self.pending:
                    raise ClientGone("closed inside a request head")
                return None
            if self.idle:  # the first byte: now the head must be complete within its own bound
                self.idle = False
                deadline = loop.time() + limits.head
            self.pending += data
        self.conn.receive_data(bytes(self.pending[:end]))
        rest = bytes(self.pending[end:])
        self.pending.clear()
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as error:
            raise ProtocolError(str(error), error.error_status_hint) from None
        if not isinstance(event, h11.Request):
            raise ProtocolError("no request in the head")
        request = Request(event)
        if rest:
            self.conn.receive_data(rest)
        return request

    async def read_body(self, deadline: float, limit: int) -> tuple[list[bytes], bool]:
        """Request body pieces, about ``limit`` bytes at most; and whether the body is done."""
        pieces: list[bytes] = []
        size = 0
        while size < limit:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as error:
                raise ProtocolError(str(error), error.error_status_hint) from None
            if event is h11.NEED_DATA:
                try:
                    data = await self._read(deadline)
                except TimeoutError:
                    raise ProtocolError("request body not complete in time", 408) from None
                if not data:
                    raise ClientGone("closed inside a request body")
                self.conn.receive_data(data)
            elif isinstance(event, h11.Data):
                pieces.append(event.data)
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return pieces, True  # trailer fields are dropped, as nginx does
            else:
                raise ProtocolError(f"{type(event).__name__} inside a request body")
        return pieces, False

    async def watch(self) -> None:
        """While a response is awaited: notice a client that leaves (its lease and backend
        connection are then let go at once), and keep what a pipelining client sends for its
        next request (up to a head's worth; then stop reading: TCP pushes back)."""
        with contextlib.suppress(ConnectionError):
            while len(self.pending) <= MAX_HEAD:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    self.gone = True
                    if self.upstream is not None:
                        self.upstream.close()
                    return
                self.pending += data

    def start_watching(self) -> None:
        if self.watcher is None and self.upstream is not None:
            self.watcher = asyncio.get_running_loop().create_task(self.watch())

    async def stop_watching(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None and not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def serve(self) -> None:
        """Serve requests until the connection ends. Raises nothing but cancellation."""
        try:
            while await self.one_exchange():
                # a fresh h11 state per request, so that the next head passes our byte check
                # too: bytes h11 already holds go back in front of those read since
                leftover, _ = self.conn.trailing_data
                self.pending[:0] = leftover
                self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        except ProtocolError as error:
            log.info("client %s: %s (answered %d)", self.client, error, error.status)
            await self.answer_error(error.status, keep_alive=False)
        except ClientGone as error:
            log.debug("client %s gone: %s", self.client, error)

    async def one_exchange(self) -> bool:
        """Serve one request; return whether the connection carries another one."""
        request = await self.read_request()
        if request is None:
            return False
        proxy = self.proxy
        if request.expects_continue and self.conn.they_are_waiting_for_100_continue:
            self.queue(CONTINUE)
            await self.flush()
        # Read a small body whole before picking a backend (nginx's request buffering): a slow
        # client then holds no lease, and the request can be retried on another backend.
        deadline = asyncio.get_running_loop().time() + proxy.limits.body
        body, complete = await self.read_body(deadline, BODY_BUFFER)
        try:
            status = await proxy.forward(self, request, body, complete, deadline)
        except ProtocolError as error:  # the client's body went bad after a backend was picked
            log.info("client %s: %s (answered %d)", self.client, error, error.status)
            await self.answer_error(error.status, keep_alive=False)
            return False
        if status:
            return await self.answer_error(status, keep_alive=request.keep_alive)
        return self.keep_alive


class Proxy:
    """Forwards each client request to the backend ``scheduler`` picks for it."""

    def __init__(
        self, scheduler: Scheduler, limits: Limits | None = None, pool: Pool | None = None
    ) -> None:
        self.scheduler = scheduler
        self.limits = limits or Limits()
        self.pool = pool or Pool(max_idle=0, idle_timeout=1.0)
        self.stopping = False  # set by a graceful stop: responses then carry Connection: close

    async def forward(
        self,
        client: ClientConnection,
        request: Request,
        body: list[bytes],
        complete: bool,
        deadline: float,
    ) -> int:
        """Forward one request, retrying on other backends while that is safe. Returns 0 once
        the response is relayed, else the status (502/503/504) the client is owed."""
        replayable = complete and request.method not in NON_IDEMPOTENT
        status = 502
        tried: list[str] = []  # as lbalgo.attempts(), written out: no check per request
        for _ in range(len(self.scheduler.group)):
            try:
                lease = self.scheduler.connection(client.client, exclude=tried)
            except NoBackendAvailable as error:
                if tried:
                    break  # every eligible backend was tried
                log.warning("no backend for %s: %s", request.target[:200].decode("latin-1"), error)
                return 503
            tried.append(lease.backend.key)
            try:
                await self.exchange(lease, client, request, body, complete, replayable, deadline)
            except BackendError as error:
                lease.fail()  # only the backend's own failures count against it
                log.warning(
                    "backend %s failed %s %s: %s",
                    lease.backend.key,
                    request.method.decode(),
                    request.target[:200].decode("latin-1"),
                    error,
                )
                if not error.status:
                    raise ClientGone("the response was cut short") from None
                status = error.status
                if error.retryable:
                    continue
                return status
            except BaseException:
                # the client's malformed body, the client leaving, cancellation: none is
                # the backend's failure
                lease.release()
                raise
            lease.release()
            return 0
        return status

    async def exchange(
        self,
        lease: Lease,
        client: ClientConnection,
        request: Request,
        body: list[bytes],
        complete: bool,
        replayable: bool,
        deadline: float,
    ) -> None:
        backend = lease.backend
        # a pooled connection only for a request that can be sent again: the backend may have
        # closed it just now, and then the request goes once more on a new connection
        for reuse in (replayable, False):
            try:
                upstream = await self.pool.connect(backend, self.limits.connect, reuse=reuse)
            except (OSError, TimeoutError) as error:
                raise BackendError(f"connect: {error!r}", retryable=True) from None
            try:
                await self.send_request(
                    upstream, client, request, body, complete, replayable, deadline
                )
                # the whole request is in: from now on a client that closes ends the exchange
                client.upstream = upstream
                timer = asyncio.get_running_loop().call_later(WATCH_AFTER, client.start_watching)
                try:
                    await self.relay_response(upstream, client, request, replayable)
                finally:
                    timer.cancel()
                    client.upstream = None
                    await client.stop_watching()
            except BackendError as error:
                upstream.close()
                if upstream.reused and not upstream.received and error.status != 504:
                    continue  # a stale kept-alive connection: not the backend's failure
                raise
            except BaseException:
                upstream.close()
                raise
            self.pool.give_back(backend, upstream)
            return

    async def send_request(
        self,
        upstream: Upstream,
        client: ClientConnection,
        request: Request,
        body: list[bytes],
        complete: bool,
        replayable: bool,
        deadline: float,
    ) -> None:
        fields = [(b"Host", request.host or upstream_host(upstream)), *request.head_fields]
        chain = request.forwarded_for
        if client.client:
            chain = [*chain, client.client.encode()]
        if chain:
            fields.append((b"X-Forwarded-For", b", ".join(chain)))
        fields += request.framing
        if not self.pool.max_idle:
            fields.append((b"Connection", b"close"))  # one upstream connection per request
        conn = upstream.conn
        conn.send(_STAND_IN[request.method == b"HEAD"])
        conn.send(_END)
        chunked = request.chunked
        start = b"%s %s HTTP/1.1\r\n" % (request.method, request.target)
        out = [serialize(start, fields), *(chunk(p) if chunked else p for p in body if p)]
        if complete and chunked:
            out.append(LAST_CHUNK)
        await self._write_upstream(upstream, out, replayable)
        while not complete:  # a large body: relay the rest as it streams, with backpressure
            pieces, complete = await client.read_body(deadline, READ_SIZE)
            out = [chunk(p) if chunked else p for p in pieces if p]
            if complete and chunked:
                out.append(LAST_CHUNK)
            await self._write_upstream(upstream, out, False)

    async def _write_upstream(
        self, upstream: Upstream, out: Sequence[bytes], replayable: bool
    ) -> None:
        try:
            upstream.writer.write(b"".join(out))
            async with asyncio.timeout(self.limits.read):
                await upstream.writer.drain()
        except (ConnectionError, TimeoutError) as error:
            raise BackendError(f"sending the request: {error!r}", retryable=replayable) from None

    async def _read_upstream(self, upstream: Upstream, what: str, retryable: bool) -> bytes:
        try:
            async with asyncio.timeout(self.limits.read):
                return await upstream.reader.read(READ_SIZE)
        except TimeoutError:
            raise BackendError(f"timed out {what}", retryable=retryable, status=504) from None
        except ConnectionError as error:
            raise BackendError(f"{what}: {error!r}", retryable=retryable) from None

    async def _response_head(
        self, upstream: Upstream, retryable: bool
    ) -> h11.Response | h11.InformationalResponse:
        """The backend's next response head; each head's bytes are checked before h11 sees
        them (h11 would take a bare LF as a line end: a header injected into the response)."""
        pending = upstream.pending
        while True:
            end = head_end(pending) if pending else 0
            if end:
                break
            data = await self._read_upstream(upstream, "waiting for the response", retryable)
            if not data:
                why = "inside a response head" if pending else "without a response"
                raise BackendError(f"closed {why}", retryable=retryable and not pending)
            upstream.received = True
            pending += data
        conn = upstream.conn
        conn.receive_data(bytes(pending[:end]))
        del pending[:end]
        event = conn.next_event()
        if isinstance(event, h11.Response) and pending:
            conn.receive_data(bytes(pending))  # body bytes: h11's own framing checks
            pending.clear()
        if not isinstance(event, h11.Response | h11.InformationalResponse):
            raise ProtocolError(f"{type(event).__name__} instead of a response head", 502)
        return event

    async def relay_response(
        self, upstream: Upstream, client: ClientConnection, request: Request, replayable: bool
    ) -> None:
        interim = 0
        while True:
            try:
                event = await self._response_head(upstream, replayable and not interim)
                head = ResponseHead(event)
            except (h11.RemoteProtocolError, ProtocolError) as error:
                if client.gone:
                    raise ClientGone("while the response head was read") from None
                raise BackendError(f"malformed response: {error}", retryable=False) from None
            except BackendError:
                if client.gone:
                    raise ClientGone("while the response was awaited") from None
                raise
            if isinstance(event, h11.Response):
                break
            interim += 1
            if interim > MAX_INTERIM:
                raise BackendError(f"more than {MAX_INTERIM} interim responses", retryable=False)
            # the proxy answered Expect itself and does not forward it, so a 100 is not owed;
            # an HTTP/1.0 client must get no 1xx at all (RFC 9110 15.2)
            if head.status != 100 and request.version == b"1.1":
                client.queue(
                    serialize(b"HTTP/1.1 %d %s\r\n" % (head.status, head.reason), head.fields)
                )
                await client.flush()
        self._queue_head(client, request, head)
        # The body. Whatever has arrived is written with the head in one system call; each
        # write is drained before the next read (backpressure).
        conn = upstream.conn
        chunked = client.chunked
        flushed = False
        while True:
            try:
                body_event = conn.next_event()
                if body_event is h11.NEED_DATA:
                    await client.flush()
                    flushed = True
                    conn.receive_data(await self._read_upstream(upstream, "in the body", False))
                    continue
            except (h11.RemoteProtocolError, BackendError) as error:
                if client.gone:
                    raise ClientGone("while the response body was relayed") from None
                if not flushed:  # nothing reached the client yet: it can still get a 502
                    client.out.clear()
                    client.head_queued = False
                    raise BackendError(
                        f"malformed response body: {error}", retryable=False
                    ) from None
                # too late for a 502: the client has the head; dropping its connection is the
                # only way left to tell it the body is incomplete (status 0)
                raise BackendError(f"response body: {error}", retryable=False, status=0) from None
            if isinstance(body_event, h11.Data):
                if client.head_only:
                    continue  # h11 gives none for HEAD, 204, 304: belt and braces
                client.queue(chunk(body_event.data) if chunked else body_event.data)
                if client.queued >= READ_SIZE:
                    await client.flush()
                    flushed = True
            elif isinstance(body_event, h11.EndOfMessage):
                if chunked:
                    client.queue(LAST_CHUNK)  # trailer fields are dropped, as nginx does
                await client.flush()
                return
            else:
                raise ClientGone(f"backend sent {type(body_event).__name__} inside a body")

    def _queue_head(self, client: ClientConnection, request: Request, head: ResponseHead) -> None:
        """Queue the final response head for the client, framed for it: Content-Length kept,
        a chunked body or one that ends at the backend's close re-chunked for an HTTP/1.1
        client (so its connection stays open), sent as is and then closed for HTTP/1.0."""
        fields = head.fields
        head_only = request.method == b"HEAD" or head.status in (204, 304)
        keep = request.keep_alive and not self.stopping
        chunked = False
        if head.mode == "chunked" or (head.mode == "close" and not head_only):
            if request.version == b"1.1":
                fields.append((b"Transfer-Encoding", b"chunked"))
                chunked = not head_only
            else:
                keep = False
        if not keep:
            fields.append((b"Connection", b"close"))
        status = b"HTTP/1.1 %d %s\r\n" % (head.status, head.reason)
        client.queue(serialize(status, fields))
        client.head_queued = True
        client.keep_alive = keep
        client.chunked = chunked
        client.head_only = head_only


def upstream_host(upstream: Upstream) -> bytes:
    """``host:port`` of the backend's socket (the Host of an HTTP/1.0 request that had none)."""
    peer = upstream.writer.get_extra_info("peername")
    if not peer:
        return b"localhost"
    host = str(peer[0])
    return (f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}").encode()
