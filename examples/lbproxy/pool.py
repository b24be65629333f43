"""Connections to backends, kept alive between requests (nginx's upstream ``keepalive``,
HAProxy's ``http-reuse safe``): a new TCP connection per request costs more than the rest of
the request together."""

from __future__ import annotations

import asyncio
from collections import deque

import h11

from lbalgo import Backend

from .framing import MAX_HEAD

READ_SIZE = 64 * 1024  # bytes per socket read


class Upstream:
    """One HTTP/1.1 connection to a backend, with h11's state for the request it carries."""

    __slots__ = ("conn", "idle_since", "pending", "reader", "received", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.pending = bytearray()  # response bytes not yet given to h11 (heads in progress)
        self.received = False  # any byte of a response arrived on this request
        self.reused = False  # taken from the pool (the backend may have closed it meanwhile)
        self.idle_since = 0.0

    def reusable(self) -> bool:
        """Whether the request and response ended cleanly and both sides keep the connection."""
        conn = self.conn
        return (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and not conn.trailing_data[0]
            and not self.pending
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        # abort, not close: nothing more is owed to a backend we are done with
        self.writer.transport.abort()


class Pool:
    """Idle connections per backend address: at most ``max_idle`` each, none older than
    ``idle_timeout`` seconds (keep it below the backends' own keep-alive timeout). The most
    recently used is taken first, so the idle tail ages out. O(1) per take and give back."""

    def __init__(self, max_idle: int, idle_timeout: float) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], deque[Upstream]] = {}

    async def connect(self, backend: Backend, timeout: float, *, reuse: bool) -> Upstream:
        """An idle connection to ``backend`` if ``reuse`` and one is left, else a new one
        (``OSError``/``TimeoutError`` if it cannot be opened within ``timeout``)."""
        if reuse:
            idle = self._idle.get((backend.host, backend.port))
            if idle:
                oldest_allowed = asyncio.get_running_loop().time() - self.idle_timeout
                while idle:
                    upstream = idle.pop()
                    if upstream.idle_since < oldest_allowed:
                        upstream.close()
                        while idle:  # the rest are older still
                            idle.popleft().close()
                        break
                    if upstream.reader.at_eof() or upstream.writer.is_closing():
                        upstream.close()  # the backend closed it while idle
                        continue
                    upstream.conn.start_next_cycle()
                    upstream.received = False
                    upstream.reused = True
                    return upstream
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                backend.host, backend.port, limit=READ_SIZE
            )
        return Upstream(reader, writer)

    def give_back(self, backend: Backend, upstream: Upstream) -> None:
        """Keep ``upstream`` for the next request to ``backend`` if it can carry one."""
        if self.max_idle and upstream.reusable():
            idle = self._idle.setdefault((backend.host, backend.port), deque())
            if len(idle) < self.max_idle:
                upstream.idle_since = asyncio.get_running_loop().time()
                idle.append(upstream)
                return
        upstream.close()

    def sweep(self) -> None:
        """Close connections idle too long (called now and then: a backend removed by a
        reload is never asked for again)."""
        oldest_allowed = asyncio.get_running_loop().time() - self.idle_timeout
        for address, idle in list(self._idle.items()):
            while idle and idle[0].idle_since < oldest_allowed:
                idle.popleft().close()
            if not idle:
                del self._idle[address]

    def close(self) -> None:
        for idle in self._idle.values():
            for upstream in idle:
                upstream.close()
        self._idle.clear()
