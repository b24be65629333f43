"""Invariant checks for property tests of schedulers: weights respected over a period,
ineligible backends never picked, minimal movement of hashed clients, and every internal
invariant of lbalgo's own schedulers. Plain assertions; no hypothesis needed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping

from lbalgo.errors import NoBackendAvailable
from lbalgo.scheduler import Scheduler

__all__ = [
    "check_internals",
    "check_minimal_movement",
    "check_never_picks_ineligible",
    "check_weights_respected",
]


def check_internals(scheduler: object) -> None:
    """Assert every internal invariant ``scheduler`` keeps (its ``_check()``: counts, heaps,
    ramps, suspensions, replay state), for lbalgo's schedulers, ledgers and wrappers;
    anything without a ``_check`` passes. Call it after each step of a stateful test.
    O(n) to O(n log n) for n backends.

    >>> from lbalgo import Backend, BackendGroup, WeightedLeastConnections
    >>> sched = WeightedLeastConnections(BackendGroup([Backend("10.0.0.1", 80)]))
    >>> sched.release(sched.pick())
    >>> check_internals(sched)
    """
    check = getattr(scheduler, "_check", None)
    if check is not None:
        check()


def check_weights_respected(scheduler: Scheduler, periods: int = 1) -> None:
    """Pick ``periods`` whole weight periods (total weight x periods, releasing each pick at
    once) and assert every eligible backend got exactly ``weight x periods`` picks.

    Holds for schedulers that are exact over a period (smooth weighted round robin, and least
    connections under light load). The scheduler must have all backends up. O(W x periods)
    picks for total weight W.

    >>> from lbalgo import Backend, BackendGroup, WeightedLeastConnections
    >>> group = BackendGroup([Backend("10.0.0.1", 80, 3), Backend("10.0.0.2", 80, 1)])
    >>> check_weights_respected(WeightedLeastConnections(group), periods=2)
    """
    group = scheduler.group
    total = group.total_weight * periods
    got: Counter[str] = Counter()
    for _ in range(total):
        backend = scheduler.pick()
        scheduler.release(backend)
        got[backend.key] += 1
    expected = {b.key: b.weight * periods for b in group if b.weight > 0}
    assert dict(got) == expected, f"picks {dict(got)} != weights x periods {expected}"


def check_never_picks_ineligible(
    scheduler: Scheduler,
    picks: int,
    *,
    client: Callable[[int], object] | None = None,
    exclude: Iterable[str] = (),
) -> None:
    """Pick ``picks`` times (releasing each) and assert no pick is of weight 0, marked down,
    or in ``exclude``; when nothing is eligible, assert ``NoBackendAvailable`` is raised.

    ``client(i)`` gives the client of the ``i``-th pick (needed for ``SourceIPHash``).
    Passive-health suspensions are not modelled: use it without ``max_fails``. O(picks).

    >>> from lbalgo import Backend, BackendGroup, SourceIPHash
    >>> group = BackendGroup([Backend("10.0.0.1", 80), Backend("10.0.0.2", 80, 0),
    ...                       Backend("10.0.0.3", 80)])
    >>> sched = SourceIPHash(group)
    >>> sched.mark_down("10.0.0.3:80")
    >>> check_never_picks_ineligible(sched, 50, client=lambda i: f"192.0.2.{i}")
    """
    excluded = set(exclude)
    group = scheduler.group
    eligible = {
        b.key for b in group if b.weight > 0 and scheduler.is_up(b.key) and b.key not in excluded
    }
    for i in range(picks):
        who = client(i) if client is not None else None
        try:
            backend = scheduler.pick(who, exclude=excluded)  # type: ignore[arg-type]
        except NoBackendAvailable:
            assert not eligible, f"NoBackendAvailable although {sorted(eligible)} are eligible"
            return
        scheduler.release(backend)
        assert backend.key in eligible, f"picked ineligible backend {backend.key!r}"


def check_minimal_movement(
    before: Mapping[Hashable, str],
    after: Mapping[Hashable, str],
    *,
    removed: Iterable[str] = (),
    added: Iterable[str] = (),
    stay_tolerance: float = 0.0,
) -> None:
    """Assert that between two client -> backend-key assignments only the clients that had to
    move did: clients of ``removed`` backends, and clients now on ``added`` backends.

    ``stay_tolerance`` is the fraction of all clients allowed to move between two backends
    that both stay (0 for a ring; a few thousandths for a Maglev table). O(clients).

    >>> from lbalgo import Backend, BackendGroup, SourceIPHash
    >>> group = BackendGroup([Backend(f"10.0.0.{i}", 80) for i in range(1, 5)])
    >>> sched = SourceIPHash(group)
    >>> clients = [f"192.0.2.{i}" for i in range(200)]
    >>> before = {c: sched.pick(c).key for c in clients}
    >>> sched.update(group.without("10.0.0.4:80"))
    >>> after = {c: sched.pick(c).key for c in clients}
    >>> check_minimal_movement(before, after, removed=["10.0.0.4:80"])
    """
    gone, new = set(removed), set(added)
    assert before.keys() == after.keys(), "both assignments must cover the same clients"
    stray = 0
    for client, old in before.items():
        now = after[client]
        if old == now:
            continue
        if old in gone:
            assert now not in gone, f"client {client!r} moved to removed backend {now!r}"
            continue
        if now in new:
            continue
        stray += 1
    limit = stay_tolerance * len(before)
    assert stray <= limit, (
        f"{stray} of {len(before)} clients moved between backends that both stay "
        f"(allowed: {limit:.0f})"
    )
