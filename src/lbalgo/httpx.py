"""Client-side load balancing for httpx: transports that send each request to a picked backend.

:class:`LoadBalancedTransport` (for ``httpx.Client``) and :class:`AsyncLoadBalancedTransport`
(for ``httpx.AsyncClient``) wrap a real transport (``httpx.HTTPTransport()`` by default). For
each request they take a lease from the scheduler (``scheduler.connection()``), send the request
to that backend, and hold the lease until the response is closed, so a streamed body counts as
an open connection until it is read or closed. Needs the ``httpx`` extra.

What is sent where:

- the URL's host and port become the backend's; scheme, path, query and headers are kept. The
  ``Host`` header stays the one of the URL the caller wrote (``api.internal``): the service
  name, as the backends behind a load balancer expect (nginx's ``proxy_set_header Host
  $host``). For ``https`` URLs the TLS server name (SNI) and the certificate check use that
  name too (httpcore's ``sni_hostname`` extension), not the backend's address.
- a connect error or connect timeout is reported with ``Lease.fail()`` (passive health) and
  the request is sent to another backend (``exclude``), at most ``retries`` more times, and only
  when it can be sent again: no body, or a body given as bytes, text, JSON or a form (not an
  iterator, a file or multipart upload, which may be readable once). When every attempt fails,
  the last ``httpx.ConnectError``/``httpx.ConnectTimeout`` reaches the caller; when no backend
  is eligible at all, ``httpx.ConnectError`` whose ``__cause__`` is the
  ``NoBackendAvailable``. Any other error (a read timeout, a reset mid-response) is not
  retried, since the backend may have acted on the request; its lease is released, not failed.
- for ``SourceIPHash`` (or ``StickySessions``), the client key is
  ``request.extensions["lbalgo_key"]``:
  ``client.get(url, extensions={"lbalgo_key": "203.0.113.7"})``.

A response that is never closed (``client.stream(...)`` without its ``with``, for instance)
keeps its lease open, exactly as it keeps its connection.

>>> import httpx
>>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
>>> sched = SmoothWeightedRoundRobin(BackendGroup([Backend("10.0.0.1", 8000)]))
>>> client = httpx.Client(transport=LoadBalancedTransport(sched))
>>> client.close()
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from lbalgo._extras import missing_extra
from lbalgo._options import check_scheduler
from lbalgo.errors import InvalidOptionError, NoBackendAvailable
from lbalgo.scheduler import Lease, Scheduler

try:
    import httpx
except ImportError:
    raise missing_extra("lbalgo.httpx", "httpx", "httpx") from None

__all__ = ["AsyncLoadBalancedTransport", "LoadBalancedTransport"]

_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


class _Balancer:
    """What the sync and async transports share: options, routing, the retry decision."""

    def __init__(self, scheduler: Scheduler, retries: int) -> None:
        check_scheduler(scheduler)
        if type(retries) is not int or not 0 <= retries <= 100:
            raise InvalidOptionError(f"retries must be an integer from 0 to 100, got {retries!r}")
        self.scheduler = scheduler
        self.retries = retries

    def attempts(self, request: httpx.Request) -> Iterator[Lease]:
        """Leases on distinct backends for this request, as ``lbalgo.attempts`` gives them.

        Not ``lbalgo.attempts`` itself: its argument checks (a run-time ``Protocol``
        ``isinstance``, some 70 µs) would run on every request, where ours ran once."""
        key = request.extensions.get("lbalgo_key")
        tried: list[str] = []
        for attempt in range(self.retries + 1):
            try:
                lease = self.scheduler.connection(key, exclude=tried)
            except NoBackendAvailable as exc:
                if attempt:
                    return  # every eligible backend was tried
                raise httpx.ConnectError(str(exc), request=request) from exc
            tried.append(lease.backend.key)
            yield lease

    @staticmethod
    def route(request: httpx.Request, lease: Lease) -> httpx.Request:
        backend = lease.backend
        extensions = dict(request.extensions)
        extensions.pop("lbalgo_key", None)
        if request.url.scheme == "https":
            extensions.setdefault("sni_hostname", request.url.host)
        return httpx.Request(
            request.method,
            request.url.copy_with(host=backend.host, port=backend.port),
            headers=request.headers,  # Host included: it stays the caller's
            stream=request.stream,
            extensions=extensions,
        )

    @staticmethod
    def resendable(request: httpx.Request) -> bool:
        # a ByteStream is bytes held in memory (also an empty body, JSON, a form): sendable again
        return isinstance(request.stream, httpx.ByteStream)


class _LeasedStream(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, lease: Lease) -> None:
        self._stream = stream
        self._lease = lease

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._lease.release()


class _AsyncLeasedStream(httpx.AsyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, lease: Lease) -> None:
        self._stream = stream
        self._lease = lease

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._lease.release()


class LoadBalancedTransport(httpx.BaseTransport):
    """An ``httpx`` transport that balances each request over ``scheduler``'s backends.

    ``transport`` is the one that really sends (default ``httpx.HTTPTransport()``; pass one
    configured with your TLS, HTTP/2 or connection-pool limits); ``retries`` (0..100, default
    2) bounds the extra attempts after connect failures. Each request costs one
    ``connection()`` and one release on top of the inner transport: O(1) for SWRR and
    SourceIPHash, O(log n) for WLC. See the module documentation for what is routed how.

    >>> import httpx
    >>> from lbalgo import Backend, BackendGroup, WeightedLeastConnections
    >>> sched = WeightedLeastConnections(BackendGroup([Backend("127.0.0.1", 8001)]))
    >>> with httpx.Client(transport=LoadBalancedTransport(sched, retries=1)) as client:
    ...     pass  # client.get("http://api.internal/items") goes to 127.0.0.1:8001
    >>> LoadBalancedTransport(sched, retries=-1)
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: retries must be an integer from 0 to 100, got -1
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        transport: httpx.BaseTransport | None = None,
        retries: int = 2,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            raise InvalidOptionError(
                f"transport must be an httpx.BaseTransport or None, got {transport!r}"
            )
        self._balancer = _Balancer(scheduler, retries)
        self._transport = transport if transport is not None else httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to a picked backend, retrying connect failures elsewhere."""
        balancer = self._balancer
        error: Exception | None = None
        for lease in balancer.attempts(request):
            try:
                response = self._transport.handle_request(balancer.route(request, lease))
            except _CONNECT_ERRORS as exc:
                lease.fail()
                error = exc
                if balancer.resendable(request):
                    continue
                raise
            except BaseException:
                lease.release()
                raise
            assert isinstance(response.stream, httpx.SyncByteStream)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_LeasedStream(response.stream, lease),
                extensions=response.extensions,
            )
        assert error is not None  # attempts() yields at least once or raises
        raise error

    def close(self) -> None:
        """Close the inner transport (its pooled connections)."""
        self._transport.close()


class AsyncLoadBalancedTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`LoadBalancedTransport`, for ``httpx.AsyncClient``.

    ``transport`` defaults to ``httpx.AsyncHTTPTransport()``; everything else is the same.

    >>> import asyncio, httpx
    >>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
    >>> sched = SmoothWeightedRoundRobin(BackendGroup([Backend("127.0.0.1", 8001)]))
    >>> async def demo():
    ...     async with httpx.AsyncClient(transport=AsyncLoadBalancedTransport(sched)) as client:
    ...         return client.is_closed
    >>> asyncio.run(demo())
    False
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retries: int = 2,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise InvalidOptionError(
                f"transport must be an httpx.AsyncBaseTransport or None, got {transport!r}"
            )
        self._balancer = _Balancer(scheduler, retries)
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to a picked backend, retrying connect failures elsewhere."""
        balancer = self._balancer
        error: Exception | None = None
        for lease in balancer.attempts(request):
            try:
                response = await self._transport.handle_async_request(
                    balancer.route(request, lease)
                )
            except _CONNECT_ERRORS as exc:
                lease.fail()
                error = exc
                if balancer.resendable(request):
                    continue
                raise
            except BaseException:
                lease.release()
                raise
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_AsyncLeasedStream(response.stream, lease),
                extensions=response.extensions,
            )
        assert error is not None  # attempts() yields at least once or raises
        raise error

    async def aclose(self) -> None:
        """Close the inner transport (its pooled connections)."""
        await self._transport.aclose()
