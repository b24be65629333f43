"""The lease's core (lbalgo._lease.PyLease and its C twin lbalgo._hotpath.Lease): released
exactly once, by hand, by ``fail()`` or by a ``with`` block's exit, counted on the token or
handed to the scheduler when it must hear of it; the two cores alike, also under threads."""

from __future__ import annotations

import gc
import sys
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbalgo import Backend, BackendGroup, Lease, SmoothWeightedRoundRobin, SourceIPHash
from lbalgo._slot import Slot
from support.accel import HOTPATH, LEASE_CORES, needs_hotpath
from support.threads import run_threads

BACKEND = Backend("10.0.0.1", 80)


class Ends:
    """An ``end`` callback that records its calls, as the scheduler's ``_finish_lease``."""

    def __init__(self) -> None:
        self.calls: list[tuple[Slot, bool]] = []
        self.lock = threading.Lock()

    def __call__(self, token: Slot, failed: bool) -> None:
        with self.lock:
            self.calls.append((token, failed))


def picked(notify: bool = False) -> Slot:
    slot = Slot(BACKEND, notify)
    next(slot.picks)
    return slot


def test_the_public_lease_is_the_core_in_use() -> None:
    core = Lease.__mro__[1]
    assert core is LEASE_CORES[-1].values[0]  # the C core where it is built
    lease = SmoothWeightedRoundRobin(BackendGroup([BACKEND])).connection()
    assert type(lease) is Lease
    assert isinstance(lease, core)
    assert repr(lease) == "<Lease 10.0.0.1:80 open>"
    lease.release()
    assert repr(lease) == "<Lease 10.0.0.1:80 released>"
    assert not hasattr(lease, "__dict__")  # __slots__ = (): no per-lease dict


@pytest.mark.parametrize("core", LEASE_CORES)
def test_release_counts_once_on_the_token(core: Any) -> None:
    slot, ends = picked(), Ends()
    lease = core(BACKEND, slot, ends)
    assert lease.backend is BACKEND
    assert not lease.released
    assert slot.open == 1
    lease.release()
    assert lease.released
    assert slot.open == 0
    assert slot.picked == 1
    lease.release()
    lease.fail()
    assert ends.calls == []  # nothing the scheduler had to hear of
    slot._check()


@pytest.mark.parametrize("core", LEASE_CORES)
def test_a_notify_token_hands_the_release_to_the_scheduler(core: Any) -> None:
    slot, ends = picked(notify=True), Ends()
    lease = core(BACKEND, slot, ends)
    with lease as entered:
        assert entered is lease
    assert ends.calls == [(slot, False)]
    assert slot.open == 1  # the scheduler counts it, not the lease
    lease.release()
    assert ends.calls == [(slot, False)]


@pytest.mark.parametrize("core", LEASE_CORES)
def test_fail_reports_once_then_nothing(core: Any) -> None:
    slot, ends = picked(), Ends()
    lease = core(BACKEND, slot, ends)
    lease.fail()
    lease.fail()
    lease.release()
    with lease:
        pass
    assert ends.calls == [(slot, True)]
    assert lease.released


@pytest.mark.parametrize("core", LEASE_CORES)
def test_a_block_that_raises_releases_and_the_error_propagates(core: Any) -> None:
    slot, ends = picked(), Ends()
    lease = core(BACKEND, slot, ends)
    with pytest.raises(KeyError), lease:
        raise KeyError("boom")
    assert lease.released
    assert slot.open == 0
    assert lease.__exit__(None, None, None) is None


@pytest.mark.parametrize("core", LEASE_CORES)
def test_an_end_that_raises_propagates_and_the_lease_stays_ended(core: Any) -> None:
    slot = picked(notify=True)

    def end(token: Slot, failed: bool) -> None:
        raise RuntimeError(f"ledger down ({failed})")

    lease = core(BACKEND, slot, end)
    with pytest.raises(RuntimeError, match=r"ledger down \(True\)"):
        lease.fail()
    assert lease.released
    lease.release()  # ended: nothing runs again


@pytest.mark.parametrize("core", LEASE_CORES)
def test_a_wrong_construction_is_a_type_error(core: Any) -> None:
    with pytest.raises(TypeError):
        core(BACKEND, picked())


@pytest.mark.parametrize("core", LEASE_CORES)
def test_threads_racing_on_the_same_leases_end_each_exactly_once(core: Any) -> None:
    """Six threads release, fail and exit the same 2,000 leases at once: each lease ends
    exactly once (no lock: the token is taken in one step under the GIL)."""
    slots = [picked(notify=i % 3 == 0) for i in range(2_000)]
    ends = Ends()
    leases = [core(BACKEND, slot, ends) for slot in slots]

    def work(way: int) -> None:
        for lease in leases:
            if way == 0:
                lease.release()
            elif way == 1:
                lease.fail()
            else:
                with lease:
                    pass

    run_threads(work, [(i % 3,) for i in range(6)])
    by_token = {id(token): failed for token, failed in ends.calls}
    assert len(by_token) == len(ends.calls)  # no token handed on twice
    for slot in slots:
        # counted by the lease on the token, or handed on to `end` (which counts nothing
        # here): exactly one of the two
        counted_here = slot.open == 0
        handed_on = id(slot) in by_token
        assert counted_here != handed_on, slot
        if handed_on and not by_token[id(slot)]:
            assert slot.notify  # a plain release is handed on only when it must be
        slot._check()


_STEP = st.sampled_from(["release", "fail", "with", "raise"])


@needs_hotpath
@given(steps=st.lists(st.tuples(st.integers(0, 3), _STEP, st.booleans()), max_size=40))
def test_both_cores_agree_on_any_sequence(steps: list[tuple[int, str, bool]]) -> None:
    """Four leases per core on tokens with and without ``notify``, driven by the same random
    steps: the same released flags, counts and calls to ``end`` after every step."""
    runs = []
    for param in LEASE_CORES:
        core = param.values[0]
        slots = [picked(notify=i % 2 == 1) for i in range(4)]
        ends = Ends()
        runs.append((slots, ends, [core(BACKEND, slot, ends) for slot in slots]))
    for index, step, _ in steps:
        observed = []
        for slots, ends, leases in runs:
            lease = leases[index]
            if step == "release":
                lease.release()
            elif step == "fail":
                lease.fail()
            elif step == "with":
                with lease:
                    pass
            else:
                with pytest.raises(ValueError, match="in the block"), lease:
                    raise ValueError("in the block")
            for slot in slots:
                slot._check()
            observed.append(
                (
                    [lease.released for lease in leases],
                    [slot.open for slot in slots],
                    [(slots.index(token), failed) for token, failed in ends.calls],
                )
            )
        assert observed[0] == observed[1]


@needs_hotpath
def test_a_lease_in_a_reference_cycle_is_collected() -> None:
    """The C lease takes part in garbage collection: a cycle through its ``end`` goes."""
    assert HOTPATH is not None
    freed = []

    class Owner:
        def end(self, token: Slot, failed: bool) -> None:
            """The lease's callback, bound to the owner that holds the lease."""

        def __del__(self) -> None:
            freed.append(True)

    owner = Owner()
    owner.lease = HOTPATH.Lease(BACKEND, picked(), owner.end)  # type: ignore[attr-defined]
    del owner
    gc.collect()
    assert freed == [True]


@needs_hotpath
@pytest.mark.parametrize("build", [SmoothWeightedRoundRobin, SourceIPHash])
def test_the_c_paths_leak_no_reference(build: Any) -> None:
    """Thousands of picks, releases and leases through the C paths leave every reference
    count where it was (a missed decref would grow them by one per request)."""
    group = BackendGroup([Backend(f"10.0.0.{i}", 80) for i in range(1, 4)])
    sched = build(group)
    client = "192.0.2.7"
    backend = sched.pick(client)
    sched.release(backend)
    slot = sched._slots[backend.key]

    def requests() -> None:
        for _ in range(3_000):
            sched.release(sched.pick(client))
            with sched.connection(client):
                pass
            sched.connection(client).release()
            sched.connection(client).fail()
        gc.collect()

    requests()  # to the steady state first (SWRR replays its cycle from its own lists)
    before = [sys.getrefcount(x) for x in (backend, slot, sched)]
    requests()
    assert [sys.getrefcount(x) for x in (backend, slot, sched)] == before
    assert slot.open == 0
