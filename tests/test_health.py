"""lbalgo.health against real asyncio servers on 127.0.0.1 that stop, come back, answer 503,
hang, or answer garbage. Thresholds are driven probe by probe with ``run_once`` (no sleeping);
the background schedule is tested with the shortest interval the product allows (1 s), every
wait bounded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import re
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lbalgo import (
    Backend,
    BackendGroup,
    LbalgoError,
    SmoothWeightedRoundRobin,
    SourceIPHash,
    StickySessions,
    WeightedLeastConnections,
)
from lbalgo.errors import HealthCheckFailed, InvalidOptionError, InvalidTypeError
from lbalgo.health import HealthChecker, HealthStatus, http, tcp
from support.clocks import FakeClock
from support.ports import free_port

WAIT = 10.0  # seconds: the bound on every wait in this module


class Server:
    """A real HTTP/1.1 server on 127.0.0.1 whose answer the test switches (``reply``): a full
    response (status, or raw bytes), ``"hang"`` (read the request, answer nothing) or
    ``"close"`` (close without a word). ``stop()`` frees the port; ``start()`` comes back on
    the same port. It records each request head and the peak of connections open at once."""

    def __init__(self) -> None:
        self.reply: int | bytes | str = 200
        self.port = 0
        self.requests: list[bytes] = []
        self.open = 0
        self.peak = 0
        self.closed = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def backend(self) -> Backend:
        return Backend("127.0.0.1", self.port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.wait_for(self._server.wait_closed(), WAIT)
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                reply = self.reply
                if reply == "hang":
                    await reader.read()  # until the prober gives up and closes
                elif reply == "close":
                    pass
                elif isinstance(reply, bytes):
                    writer.write(reply)
                else:
                    writer.write(
                        b"HTTP/1.1 %d Whatever\r\nContent-Length: 2\r\n\r\nok" % int(reply)
                    )
                await writer.drain()
        finally:
            self.open -= 1
            self.closed += 1
            self._writers.discard(writer)
            writer.close()


def aio(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop, bounded in time; a first parameter named
    ``server`` gets a started :class:`Server` (stopped afterwards). Kept here rather than a
    pytest plugin: the suite needs no asyncio plugin for a handful of tests."""
    signature = inspect.signature(test)
    params = list(signature.parameters.values())
    wants_server = bool(params) and params[0].name == "server"

    @functools.wraps(test)
    def wrapper(*args: object, **kwargs: object) -> None:
        async def main() -> None:
            if not wants_server:
                await asyncio.wait_for(test(*args, **kwargs), WAIT * 3)
                return
            srv = Server()
            await srv.start()
            try:
                await asyncio.wait_for(test(srv, *args, **kwargs), WAIT * 3)
            finally:
                if srv._server is not None:
                    await srv.stop()

        asyncio.run(main())

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=params[1:] if wants_server else params
    )
    return wrapper


def run(coro: Awaitable[object]) -> object:
    async def bounded() -> object:
        return await asyncio.wait_for(coro, WAIT * 3)

    return asyncio.run(bounded())


# --- options ----------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("interval", 0.5),
    ("interval", 51),
    ("interval", True),
    ("interval", "5"),
    ("interval", float("nan")),
    ("timeout", 0),
    ("timeout", 50.5),
    ("timeout", float("inf")),
    ("healthy_threshold", 0),
    ("healthy_threshold", 11),
    ("healthy_threshold", 2.0),
    ("unhealthy_threshold", True),
    ("unhealthy_threshold", -1),
    ("concurrency", 0),
    ("concurrency", 1.5),
    ("clock", 5),
    ("seed", "abc"),
]


@pytest.mark.parametrize(("field", "value"), BAD_OPTIONS)
def test_bad_option_is_an_error_naming_field_and_value(field: str, value: object) -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup([Backend("127.0.0.1", 1)]))
    with pytest.raises(InvalidOptionError, match=rf"^{field} .*got {re.escape(repr(value))}$"):
        HealthChecker(sched, tcp(), **{field: value})  # type: ignore[arg-type]
    assert sched.is_up("127.0.0.1:1")  # nothing touched


def test_option_error_is_a_value_error_and_an_lbalgo_error() -> None:
    assert issubclass(InvalidOptionError, ValueError)
    assert issubclass(InvalidOptionError, LbalgoError)


def test_ranges_include_their_ends() -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup())
    for value in (1, 50, 1.0, 50.0):
        HealthChecker(sched, tcp(), interval=value, timeout=value)
    for value in (1, 10):
        HealthChecker(sched, tcp(), healthy_threshold=value, unhealthy_threshold=value)


def test_bad_scheduler_or_check() -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup())
    with pytest.raises(InvalidTypeError, match=r"must implement lbalgo\.Scheduler, got 42"):
        HealthChecker(42, tcp())  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="check must be an async callable, got 'tcp'"):
        HealthChecker(sched, "tcp")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "health"}, "path must start with '/' .*got 'health'"),
        ({"path": "/a b"}, r"path .*got '/a b'"),
        ({"path": "/x\r\nEvil: 1"}, r"path .*got '/x\\r\\nEvil: 1'"),
        ({"path": "/é"}, "path .*got '/é'"),
        ({"path": b"/"}, "path .*got b'/'"),
        ({"expect": []}, r"expect must be .*got \[\]"),
        ({"expect": "200"}, "expect .*got '200'"),
        ({"expect": {200, 600}}, "expect .*got {200, 600}"),
        ({"expect": [200.0]}, r"expect .*got \[200.0\]"),
        ({"expect": range(10**6)}, r"expect .*got range\(0, 1000000\)"),
        ({"host": ""}, "host must be None or .*got ''"),
        ({"host": "a\r\nb"}, r"host .*got 'a\\r\\nb'"),
    ],
)
def test_http_check_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        http(**kwargs)  # type: ignore[arg-type]


# --- checks against real servers ----------------------------------------------------------------


@aio
async def test_tcp_check_passes_fails_and_passes_again(server: Server) -> None:
    check = tcp()
    backend = server.backend
    assert await check(backend) is True
    await server.stop()
    with pytest.raises(ConnectionRefusedError):
        await check(backend)
    await server.start()  # comes back on the same port
    assert await check(backend) is True


@aio
async def test_http_check_statuses_path_and_host(server: Server) -> None:
    backend = server.backend
    assert await http("/healthz")(backend) is True
    assert server.requests[-1].startswith(b"GET /healthz HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in server.requests[-1]
    assert b"\r\nConnection: close\r\n" in server.requests[-1]
    await http("/", host="api.example.com")(backend)
    assert b"\r\nHost: api.example.com\r\n" in server.requests[-1]
    server.reply = 503
    with pytest.raises(HealthCheckFailed, match=r"^HTTP status 503, expected 200\.\.399$"):
        await http()(backend)
    assert await http(expect={503})(backend) is True
    server.reply = 302
    assert await http()(backend) is True
    with pytest.raises(HealthCheckFailed, match="HTTP status 302, expected 200, 204"):
        await http(expect=[204, 200])(backend)


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        (b"HTTP/1.1 200\r\n\r\n", True),  # no reason phrase
        (b"HTTP/1.0 204 No Content\n\n", True),  # bare LF, HTTP/1.0
        (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 500 Oops\r\n\r\n", "HTTP status 500"),
        (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
        ("HTTP/1.1 \u0662\u0660\u0660 OK\r\n\r\n".encode(), "not an HTTP/1.x status line"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK", "connection closed after 15 bytes"),
        (b"HTTP/1.1 200 " + b"x" * 20_000 + b"\r\n", "response head longer than 16384"),
        (b"HTTP/1.1 100 Continue\r\n" + b"X: y\r\n" * 4000, "response head longer than 16384"),
        ("close", "connection closed after 0 bytes"),
    ],
)
@aio
async def test_http_check_reads_status_lines_robustly(
    server: Server, reply: bytes | str, verdict: bool | str
) -> None:
    server.reply = reply
    check = http()
    if verdict is True:
        assert await check(server.backend) is True
    else:
        with pytest.raises(HealthCheckFailed, match=str(verdict)):
            await check(server.backend)


# --- thresholds, marks, status -------------------------------------------------------------------


@aio
async def test_thresholds_mark_down_and_up_against_a_server_that_stops_and_returns(
    server: Server,
) -> None:
    key = server.backend.key
    other = Backend("127.0.0.1", free_port(), name="refusing")
    sched = WeightedLeastConnections(BackendGroup([server.backend, other]))
    clock = FakeClock(100.0)
    checker = HealthChecker(sched, tcp(), healthy_threshold=3, unhealthy_threshold=2, clock=clock)
    status = await checker.run_once()
    assert status[key] == HealthStatus(True, 1, None, 100.0)
    assert status["refusing"].healthy is True  # one failure of two needed
    assert status["refusing"].last_error is not None
    assert status["refusing"].last_error.startswith("ConnectionRefusedError")
    clock.now = 105.0
    status = await checker.run_once()
    assert status["refusing"] == HealthStatus(False, 2, status["refusing"].last_error, 105.0)
    assert not sched.is_up("refusing")
    assert sched.pick().key == key  # the checker's mark keeps traffic off it

    await server.stop()
    await checker.run_once()
    assert sched.is_up(key)
    s = (await checker.run_once())[key]
    assert (s.healthy, s.consecutive, sched.is_up(key)) == (False, 2, False)
    await server.start()
    for passes in (1, 2):
        s = (await checker.run_once())[key]
        assert (s.healthy, s.consecutive, s.last_error) == (False, passes, None)
        assert not sched.is_up(key)
    s = (await checker.run_once())[key]
    assert (s.healthy, s.consecutive, sched.is_up(key)) == (True, 3, True)


@aio
async def test_503_and_hanging_servers_are_failures(server: Server) -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup([server.backend]))
    checker = HealthChecker(sched, http("/health"), timeout=1, unhealthy_threshold=2)
    server.reply = 503
    s = (await checker.run_once())[server.backend.key]
    assert s.last_error == "HTTP status 503, expected 200..399"
    server.reply = "hang"
    loop = asyncio.get_running_loop()
    started = loop.time()
    s = (await checker.run_once())[server.backend.key]
    assert 0.9 <= loop.time() - started < WAIT
    assert (s.healthy, s.consecutive, s.last_error) == (False, 2, "no answer within 1 s")
    assert not sched.is_up(server.backend.key)
    await asyncio.wait_for(_until(lambda: server.open == 0), WAIT)  # the prober hung up


@aio
async def test_a_crashing_or_odd_check_is_a_failure_and_never_escapes() -> None:
    sched = SourceIPHash(BackendGroup([Backend("127.0.0.1", 1, name=n) for n in "abcd"]))

    async def odd(backend: Backend) -> bool:
        if backend.key == "a":
            raise RuntimeError("boom")
        if backend.key == "b":
            raise HealthCheckFailed("disk full")
        if backend.key == "c":
            return None  # type: ignore[return-value]
        raise KeyboardInterruptLike()

    def not_async(backend: Backend) -> bool:
        return True

    checker = HealthChecker(sched, odd, unhealthy_threshold=1)
    status = await checker.run_once()
    assert status["a"].last_error == "RuntimeError: boom"
    assert status["b"].last_error == "disk full"
    assert status["c"].last_error == "check returned None"
    assert status["d"].last_error == "KeyboardInterruptLike"
    assert not any(sched.is_up(k) for k in "abcd")
    status = await HealthChecker(sched, not_async).run_once()  # type: ignore[arg-type]
    assert status["a"].last_error is not None
    assert status["a"].last_error.startswith("TypeError")


class KeyboardInterruptLike(Exception):
    """An exception with no message."""


@aio
async def test_first_verdict_follows_the_scheduler_and_operator_marks_are_overridden(
    server: Server,
) -> None:
    key = server.backend.key
    sched = SmoothWeightedRoundRobin(BackendGroup([server.backend]))
    sched.mark_down(key)  # down before the checker ever saw it: it must earn its way back
    checker = HealthChecker(sched, tcp(), healthy_threshold=2, unhealthy_threshold=2)
    assert (await checker.run_once())[key].healthy is False
    assert not sched.is_up(key)
    assert (await checker.run_once())[key].healthy is True
    assert sched.is_up(key)
    sched.mark_down(key)  # an operator's mark on a healthy backend lasts until the next probe
    await checker.run_once()
    assert sched.is_up(key)
    await server.stop()
    await checker.run_once()
    await checker.run_once()
    sched.mark_up(key)  # and a mark_up of an unhealthy one is undone the same way
    await checker.run_once()
    assert not sched.is_up(key)


@aio
async def test_sticky_sessions_are_driven_through_their_wrapped_scheduler(server: Server) -> None:
    base = WeightedLeastConnections(BackendGroup([server.backend]))
    sticky = StickySessions(base)
    checker = HealthChecker(sticky, http(), unhealthy_threshold=1)
    server.reply = 500
    await checker.run_once()
    assert not base.is_up(server.backend.key)


@aio
async def test_concurrent_probes_are_bounded(server: Server) -> None:
    group = BackendGroup([Backend("127.0.0.1", server.port, name=f"b{i}") for i in range(500)])
    sched = WeightedLeastConnections(group)
    in_flight = 0
    peak = 0
    probe = tcp()

    async def counting(backend: Backend) -> bool:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.002)  # hold the slot so that probes overlap
            return await probe(backend)
        finally:
            in_flight -= 1

    status = await HealthChecker(sched, counting, concurrency=8).run_once()
    assert len(status) == 500
    assert all(s.last_error is None for s in status.values())
    assert peak == 8
    assert server.peak <= 8


# --- the background schedule ---------------------------------------------------------------------


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


@aio
async def test_schedule_probes_each_backend_within_one_interval_and_follows_update(
    server: Server,
) -> None:
    first = [Backend("127.0.0.1", server.port, name=f"b{i}") for i in range(6)]
    sched = SmoothWeightedRoundRobin(BackendGroup(first))
    loop = asyncio.get_running_loop()
    checker = HealthChecker(sched, tcp(), interval=1, clock=loop.time, seed=7)
    tasks_before = asyncio.all_tasks()
    started = loop.time()
    await checker.start()
    await checker.start()  # a second start is a no-op
    assert checker.running
    await asyncio.wait_for(_until(lambda: len(checker.status()) == 6), 1.5)
    stamps = sorted(s.last_checked for s in checker.status().values())
    assert stamps[-1] - started <= 1.0 + 0.2  # one interval, plus scheduling slack
    assert stamps[-1] - stamps[0] > 0.05  # jitter: not all in one burst

    # each backend keeps its own period of about one interval
    await asyncio.sleep(2.0)
    counts = [s.consecutive for s in checker.status().values()]
    assert all(2 <= c <= 4 for c in counts), counts

    added = Backend("127.0.0.1", server.port, name="new")
    sched.update(BackendGroup([*first[2:], added]))
    updated = loop.time()
    await asyncio.wait_for(_until(lambda: "new" in checker.status()), 1.5)
    assert checker.status()["new"].last_checked - updated <= 1.0 + 0.2
    assert "b0" not in checker.status()
    assert "b1" not in checker.status()

    await checker.stop()
    await checker.stop()  # idempotent
    assert not checker.running
    assert asyncio.all_tasks() == tasks_before  # no task left behind
    frozen = checker.status()
    await asyncio.sleep(1.2)
    assert checker.status() == frozen  # nothing probes after stop


@aio
async def test_async_with_cancels_a_hanging_probe_and_closes_its_socket(server: Server) -> None:
    server.reply = "hang"
    sched = WeightedLeastConnections(BackendGroup([server.backend]))
    tasks_before = asyncio.all_tasks()
    async with HealthChecker(sched, http(), interval=1, timeout=50) as checker:
        assert checker.running
        await asyncio.wait_for(_until(lambda: server.open == 1), 2.0)
    assert asyncio.all_tasks() == tasks_before
    await asyncio.wait_for(_until(lambda: server.open == 0), WAIT)
    assert checker.status() == {}  # the one probe never finished


@aio
async def test_a_check_that_always_raises_keeps_being_scheduled() -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup([Backend("127.0.0.1", 1)]))
    calls = 0

    async def crash(backend: Backend) -> bool:
        nonlocal calls
        calls += 1
        raise ZeroDivisionError("bad check")

    async with HealthChecker(sched, crash, interval=1, unhealthy_threshold=2) as checker:
        await asyncio.wait_for(_until(lambda: calls >= 3), 4.0)
        assert checker.running
    s = checker.status()["127.0.0.1:1"]
    assert s.consecutive >= 3
    assert s.last_error == "ZeroDivisionError: bad check"
    assert not sched.is_up("127.0.0.1:1")


def test_a_checker_runs_again_in_a_new_event_loop(server_port: int) -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup([Backend("127.0.0.1", server_port)]))
    checker = HealthChecker(sched, tcp(), unhealthy_threshold=1)
    for _ in range(2):
        status = run(checker.run_once())
        assert isinstance(status, dict)
        assert status[f"127.0.0.1:{server_port}"].last_error is not None


@pytest.fixture
def server_port() -> int:
    return free_port()


# --- the threshold state machine, against a model -------------------------------------------------


class CheckerMachine(RuleBasedStateMachine):
    """Random probe results, operator marks and group updates; after every step the checker's
    status and the scheduler's marks must match a plain model of the thresholds."""

    def __init__(self) -> None:
        super().__init__()
        self.sched = WeightedLeastConnections(
            BackendGroup([Backend("127.0.0.1", 1, name=f"k{i}") for i in range(3)])
        )
        self.outcome: dict[str, bool | None] = {}  # None: the check raises
        self.model: dict[str, tuple[bool, int, bool]] = {}  # healthy, consecutive, passed
        self.next_name = 3
        self.checker: HealthChecker | None = None

    @initialize(
        rise=st.integers(1, 4) | st.integers(1, 10), fall=st.integers(1, 4) | st.integers(1, 10)
    )
    def build(self, rise: int, fall: int) -> None:
        async def check(backend: Backend) -> bool:
            result = self.outcome.get(backend.key, True)
            if result is None:
                raise OSError("refused")
            return result

        self.rise, self.fall = rise, fall
        self.checker = HealthChecker(
            self.sched, check, healthy_threshold=rise, unhealthy_threshold=fall
        )

    @rule(data=st.data())
    def probe_each(self, data: st.DataObject) -> None:
        for backend in self.sched.group:
            key = backend.key
            self.outcome[key] = data.draw(st.sampled_from([False, True, None]), label=key)
        self._probe()

    @rule(result=st.sampled_from([False, True, None]), times=st.integers(1, 4))
    def probe_all(self, result: bool | None, times: int) -> None:
        # runs of one result in a row: what reaches a threshold
        for backend in self.sched.group:
            self.outcome[backend.key] = result
        for _ in range(times):
            self._probe()

    def _probe(self) -> None:
        assert self.checker is not None
        keys = self.sched.group.keys()
        status = asyncio.run(self.checker.run_once())
        for key in keys:
            passed = self.outcome[key] is True
            if key in self.model:
                healthy, run, was = self.model[key]
                run = run + 1 if was == passed else 1
            else:
                healthy, run = self.sched.is_up(key), 1
            if passed and not healthy and run >= self.rise:
                healthy = True
            elif not passed and healthy and run >= self.fall:
                healthy = False
            self.model[key] = (healthy, run, passed)
            assert (status[key].healthy, status[key].consecutive) == (healthy, run)
            assert (status[key].last_error is None) == passed
            assert self.sched.is_up(key) == healthy  # the checker's verdict is the mark
        assert set(status) == set(keys)

    @rule(data=st.data())
    def operator_marks(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.sched.group.keys()))
        if data.draw(st.booleans()):
            self.sched.mark_down(key)
        else:
            self.sched.mark_up(key)

    @rule(add=st.booleans())
    def update(self, add: bool) -> None:
        group = self.sched.group
        if add and len(group) < 6:
            group = group.with_backend(Backend("127.0.0.1", 1, name=f"k{self.next_name}"))
            self.next_name += 1
        elif not add and len(group) > 1:
            removed = group.keys()[0]
            group = group.without(removed)
            self.model.pop(removed, None)
        self.sched.update(group)

    @invariant()
    def consistent(self) -> None:
        if self.checker is not None:
            self.checker._check()


TestCheckerMachine = CheckerMachine.TestCase
TestCheckerMachine.settings = settings(max_examples=60, stateful_step_count=15)
