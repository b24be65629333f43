"""The C fast paths (lbalgo._fastpath over lbalgo._hotpath) against the pure-Python methods
they wrap, side by side in one process: the same backends, counts, errors and messages on any
sequence of requests, every slow path included, and no count lost under threads."""

from __future__ import annotations

import inspect
import ipaddress
from collections.abc import Callable
from typing import Any

import mmh3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbalgo import (
    Backend,
    BackendGroup,
    Lease,
    SmoothWeightedRoundRobin,
    SourceIPHash,
    WeightedLeastConnections,
)
from lbalgo._base import BaseScheduler
from lbalgo.testing.strategies import client_addresses, groups, ipv4_addresses
from support.accel import HOTPATH, needs_hotpath
from support.threads import run_threads

FAST = {
    SmoothWeightedRoundRobin: ("pick", "connection", "release"),
    SourceIPHash: ("pick", "connection", "release"),
}


def pure(sched: BaseScheduler, name: str) -> Callable[..., Any]:
    """The pure-Python method behind ``sched.<name>``, bound to ``sched``."""
    method = inspect.getattr_static(type(sched), name)
    function = getattr(method, "__wrapped__", method)
    return function.__get__(sched)  # type: ignore[no-any-return]


def attempt(method: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``(result, None)``, or ``(None, (error type, message))`` if the call raised."""
    try:
        return method(*args, **kwargs), None
    except Exception as error:  # compared as type and message
        return None, (type(error), str(error))


def shown(got: tuple[Any, Any]) -> Any:
    """An attempt as compared: a backend's key, ("lease", key), None, or the error."""
    result, error = got
    if error is not None:
        return error
    if isinstance(result, Lease):
        return ("lease", result.backend.key)
    return result.key if isinstance(result, Backend) else result


def both(
    c_sched: BaseScheduler, py_sched: BaseScheduler, name: str, *args: Any, **kwargs: Any
) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """The same call through ``c_sched``'s method and the pure one of ``py_sched``; the two
    must give the same shown outcome."""
    c_got = attempt(getattr(c_sched, name), *args, **kwargs)
    py_got = attempt(pure(py_sched, name), *args, **kwargs)
    assert shown(c_got) == shown(py_got), (name, args, kwargs)
    return c_got, py_got


def state(sched: BaseScheduler) -> dict[str, tuple[int, int, int]]:
    sched._check()
    return {k: (s.picks, s.open_connections, s.failures) for k, s in sched.stats().items()}


def test_each_fast_path_wraps_its_pure_method() -> None:
    sched = SmoothWeightedRoundRobin(BackendGroup([Backend("10.0.0.1", 80)]))
    for cls, names in FAST.items():
        for name in names:
            method = inspect.getattr_static(cls, name)
            function = getattr(method, "__wrapped__", method)
            assert inspect.isfunction(function)
            assert (HOTPATH is not None) == (method is not function)
            assert method.__doc__ == function.__doc__
            assert method.__doc__
            assert method.__name__ == name
    assert inspect.signature(sched.pick) == inspect.signature(pure(sched, "pick"))
    assert inspect.signature(sched.release) == inspect.signature(pure(sched, "release"))
    assert list(inspect.signature(sched.release).parameters) == ["backend", "failed"]
    # looked up on the class, called with the instance first
    assert SmoothWeightedRoundRobin.pick(sched).key == "10.0.0.1:80"
    assert SmoothWeightedRoundRobin.release(sched, sched.pick()) is None
    assert sched.open_connections("10.0.0.1:80") == 1


_EMPTY_EXCLUDES: list[Any] = [(), [], set(), frozenset(), None, {}, "", False]
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["pick", "connection", "release", "leases", "down", "up", "bad"]),
        st.integers(0, 15),
    ),
    min_size=4,
    max_size=30,
)


def _lockstep(
    c_sched: BaseScheduler, py_sched: BaseScheduler, ops: Any, clients: Any, odd: Any = (None,)
) -> None:
    """Drive both schedulers through the same steps, the first by its (C) methods, the
    second by the pure-Python ones, comparing every outcome and the state after each."""
    keys = list(c_sched.group.keys())
    held: list[tuple[Any, Any]] = []  # (c lease, python lease)
    picked: list[tuple[Backend, Backend]] = []
    bad: list[Any] = [None, "10.0.0.1:80", Backend("192.0.2.9", 1), 3]
    for op, n in ops:
        client = clients[n % len(clients)] if n % 4 else odd[n // 4 % len(odd)]
        exclude = _EMPTY_EXCLUDES[n % len(_EMPTY_EXCLUDES)] if n < 12 else [keys[n % len(keys)]]
        if op in ("pick", "connection"):
            if n % 3 == 0:
                c_got, py_got = both(c_sched, py_sched, op, client)
            elif n % 3 == 1:
                c_got, py_got = both(c_sched, py_sched, op, client, exclude=exclude)
            else:
                c_got, py_got = both(c_sched, py_sched, op, client=client)
            if c_got[0] is not None:
                assert type(c_got[0]) is type(py_got[0])
                (picked if op == "pick" else held).append((c_got[0], py_got[0]))
        elif op == "release" and picked:
            c_backend, py_backend = picked.pop(n % len(picked))
            c_got = attempt(c_sched.release, c_backend, failed=n % 4 == 0)
            assert c_got == attempt(pure(py_sched, "release"), py_backend, failed=n % 4 == 0)
        elif op == "leases" and held:
            for lease in held.pop(n % len(held)):
                if n % 3 == 0:
                    lease.fail()
                elif n % 3 == 1:
                    with lease:
                        pass
                else:
                    lease.release()
        elif op in ("down", "up"):
            for sched in (c_sched, py_sched):
                getattr(sched, f"mark_{op}")(keys[n % len(keys)])
        elif op == "bad":
            both(c_sched, py_sched, "release", bad[n % len(bad)])
        assert state(c_sched) == state(py_sched)


@given(group=groups(min_size=1, max_size=6), ops=_OPS, max_fails=st.sampled_from([0, 1, 3]))
def test_swrr_fast_paths_agree_with_the_pure_methods(
    group: BackendGroup, ops: Any, max_fails: int
) -> None:
    c_sched = SmoothWeightedRoundRobin(group, max_fails=max_fails)
    py_sched = SmoothWeightedRoundRobin(group, max_fails=max_fails)
    _lockstep(c_sched, py_sched, ops, [None])


# strings the C parser must send to the pure code: not dotted quads as inet_pton reads them
_ODD_CLIENTS = [
    "01.2.3.4",
    "1.2.3.4\x00",
    "1.2.3",
    "256.1.1.1",
    "1.2.3.4 ",
    "\u0661.2.3.4",
    "\ud800",
    "",
    "::ffff:192.0.2.1",
    "fe80::1%eth0",
    None,
    b"1.2.3.4",
    ipaddress.IPv4Address("192.0.2.1"),
]


@given(
    group=groups(min_size=1, max_size=6),
    ops=_OPS,
    clients=st.lists(
        st.one_of(ipv4_addresses(), client_addresses().map(str)), min_size=1, max_size=4
    ),
    options=st.sampled_from([{}, {"max_fails": 2}, {"balance_factor": 1.25}, {"compat": "nginx"}]),
)
def test_hash_fast_paths_agree_with_the_pure_methods(
    group: BackendGroup, ops: Any, clients: list[Any], options: dict[str, Any]
) -> None:
    c_sched = SourceIPHash(group, **options)
    py_sched = SourceIPHash(group, **options)
    _lockstep(c_sched, py_sched, ops, clients, _ODD_CLIENTS)


def test_release_refuses_bad_input_with_the_pure_codes_messages() -> None:
    group = BackendGroup([Backend("10.0.0.1", 80), Backend("10.0.0.2", 80)])
    for build in (SmoothWeightedRoundRobin, SourceIPHash, WeightedLeastConnections):
        c_sched, py_sched = build(group), build(group)
        b = group["10.0.0.1:80"]
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((), {}),
            ((b, b), {}),
            ((b,), {"failed": 1}),
            ((b,), {"failed": "no"}),
            ((b,), {"bad": True}),
            ((None,), {}),
            (("10.0.0.1:80",), {}),
            ((Backend("10.0.0.1", 80),), {}),  # equal, but not the Backend a pick returned
            ((b,), {"failed": False}),
        ]
        for args, kwargs in calls:
            c_sched.pick("192.0.2.1")
            pure(py_sched, "pick")("192.0.2.1")
            both(c_sched, py_sched, "release", *args, **kwargs)
            assert state(c_sched) == state(py_sched)


def test_pick_refuses_bad_calls_with_the_pure_codes_messages() -> None:
    group = BackendGroup([Backend("10.0.0.1", 80)])
    # WLC's C request path is bound on the instance: its refusals are the class's too
    for build in (SmoothWeightedRoundRobin, SourceIPHash, WeightedLeastConnections):
        sched = build(group)
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (("192.0.2.1", 2), {}),
            ((), {"clients": 1}),
            ((), {"exclude": 5}),
            (("192.0.2.1",), {"client": "192.0.2.2"}),
        ]
        for name in ("pick", "connection"):
            for args, kwargs in calls:
                both(sched, sched, name, *args, **kwargs)


@needs_hotpath
@given(data=st.binary(max_size=40), seed=st.integers(0, 2**32 - 1))
def test_murmur3_is_mmh3(data: bytes, seed: int) -> None:
    assert HOTPATH is not None
    assert HOTPATH.murmur3_32(data, seed) == mmh3.hash(data, seed)


@pytest.mark.parametrize("build", [SmoothWeightedRoundRobin, SourceIPHash])
def test_threads_on_the_fast_paths_lose_no_count(build: Any) -> None:
    """Six threads pick and release, and take and exit leases, 3,000 times each on the same
    scheduler: every pick is counted and every release too."""
    group = BackendGroup([Backend(f"10.0.0.{i}", 80, i) for i in range(1, 6)])
    sched = build(group)

    def work(i: int) -> None:
        client = f"192.0.2.{i}"
        for n in range(3_000):
            if n % 2:
                sched.release(sched.pick(client))
            else:
                with sched.connection(client, exclude=()):
                    pass

    run_threads(work, [(i,) for i in range(6)])
    stats = sched.stats()
    assert sum(s.picks for s in stats.values()) == 18_000
    assert all(s.open_connections == 0 for s in stats.values())
    sched._check()
