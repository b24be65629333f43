"""Hypothesis strategies and invariant checks for property tests of code built on lbalgo.

lbalgo's own suite uses exactly these, so a proxy that embeds a scheduler can property-test its
integration with the same generators and the same checks. Needs ``hypothesis`` (the
``testing`` extra: ``pip install 'lbalgo[testing]'``).

>>> from hypothesis import given
>>> from lbalgo import SmoothWeightedRoundRobin
>>> @given(groups(min_size=1, min_weight=1))
... def test_weights_respected(group):
...     check_weights_respected(SmoothWeightedRoundRobin(group))
>>> test_weights_respected()
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping

from lbalgo._extras import missing_extra

try:
    from hypothesis import strategies as st
except ImportError:
    raise missing_extra("lbalgo.testing", "hypothesis", "testing") from None

from lbalgo.backend import MAX_BACKENDS, MAX_WEIGHT, Backend, BackendGroup
from lbalgo.errors import NoBackendAvailable
from lbalgo.scheduler import Scheduler

__all__ = [
    "address_spellings",
    "backends",
    "check_minimal_movement",
    "check_never_picks_ineligible",
    "check_weights_respected",
    "client_addresses",
    "groups",
    "ipv4_addresses",
    "ipv6_addresses",
    "weights",
]


def weights(min_weight: int = 0, max_weight: int = MAX_WEIGHT) -> st.SearchStrategy[int]:
    """Valid weights, 0..100 by default: integers, never ``bool`` or ``float`` (which
    ``Backend`` refuses). O(1) a draw.

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20, derandomize=True)
    ... @given(weights(min_weight=1))
    ... def check(weight):
    ...     assert type(weight) is int and 1 <= weight <= MAX_WEIGHT
    >>> check()
    """
    return st.integers(min_value=min_weight, max_value=max_weight)


def ipv4_addresses() -> st.SearchStrategy[str]:
    """IPv4 addresses in dotted-quad form (any address, reserved ranges included, as a
    proxy may see them behind NAT or in tests). O(1) a draw.

    >>> import ipaddress
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20, derandomize=True)
    ... @given(ipv4_addresses())
    ... def check(address):
    ...     assert ipaddress.ip_address(address).version == 4
    >>> check()
    """
    return st.ip_addresses(v=4).map(str)


def ipv6_addresses() -> st.SearchStrategy[str]:
    """IPv6 addresses in their compressed form (see :func:`address_spellings` for the
    other spellings of each). O(1) a draw.

    >>> import ipaddress
    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20, derandomize=True)
    ... @given(ipv6_addresses())
    ... def check(address):
    ...     assert str(ipaddress.ip_address(address)) == address
    >>> check()
    """
    return st.ip_addresses(v=6).map(str)


def backends(min_weight: int = 0, max_weight: int = MAX_WEIGHT) -> st.SearchStrategy[Backend]:
    """Valid backends on IPv4 or IPv6 hosts (or DNS names), any port, weights in range:
    every kind of key a group can hold (``host:port``, ``[v6]:port``). O(1) a draw.

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20, derandomize=True)
    ... @given(backends(min_weight=1, max_weight=5))
    ... def check(backend):
    ...     assert 1 <= backend.weight <= 5 and backend.key.endswith(f":{backend.port}")
    >>> check()
    """
    dns_names = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}\Z")
    hosts = st.one_of(ipv4_addresses(), ipv6_addresses(), dns_names)
    return st.builds(
        Backend,
        host=hosts,
        port=st.integers(min_value=1, max_value=65535),
        weight=weights(min_weight, max_weight),
    )


def groups(
    min_size: int = 0,
    max_size: int = 20,
    *,
    min_weight: int = 0,
    max_weight: int = MAX_WEIGHT,
) -> st.SearchStrategy[BackendGroup]:
    """Valid groups of ``min_size``..``max_size`` backends with unique keys (at most
    :data:`~lbalgo.MAX_BACKENDS`), weights from ``min_weight`` to ``max_weight``; shrinks
    towards small groups. O(size) a draw.

    >>> from hypothesis import given, settings
    >>> @settings(max_examples=20, derandomize=True)
    ... @given(groups(min_size=1, max_size=5, min_weight=1))
    ... def check(group):
    ...     assert 1 <= len(group) <= 5 and group.total_weight >= len(group)
    >>> check()
    """
    max_size = min(max_size, MAX_BACKENDS)
    return st.lists(
        backends(min_weight, max_weight),
        min_size=min_size,
        max_size=max_size,
        unique_by=lambda b: b.key,
    ).map(BackendGroup)


def address_spellings(address: str) -> list[str | ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every spelling of one client address lbalgo must treat as the same client.

    For IPv4: the string, the ``IPv4Address``, the IPv4-mapped IPv6 forms. For IPv6: the
    compressed, exploded, upper-case forms and the ``IPv6Address``. A dual-stack proxy sees
    the same client in several of these; hashing must not tell them apart. O(1).

    >>> [str(a) for a in address_spellings("10.0.0.1")][:4]
    ['10.0.0.1', '10.0.0.1', '::ffff:10.0.0.1', '::FFFF:10.0.0.1']
    >>> address_spellings("2001:db8::1")[1]
    '2001:0db8:0000:0000:0000:0000:0000:0001'
    """
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv4Address):
        mapped = ipaddress.IPv6Address(f"::ffff:{parsed}")
        return [
            str(parsed),
            parsed,
            f"::ffff:{parsed}",
            f"::FFFF:{parsed}",
            mapped.exploded,
            mapped,
        ]
    return [str(parsed), parsed.exploded, parsed.exploded.upper(), str(parsed).upper(), parsed]


def client_addresses() -> st.SearchStrategy[str | ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Client addresses in any spelling lbalgo accepts (strings and ``ipaddress`` objects),
    for ``pick(client)`` of every scheduler. O(1) a draw.

    >>> from hypothesis import given, settings
    >>> from lbalgo import Backend, BackendGroup, SourceIPHash
    >>> sched = SourceIPHash(BackendGroup([Backend("10.0.0.1", 80), Backend("10.0.0.2", 80)]))
    >>> @settings(max_examples=20, derandomize=True)
    ... @given(client_addresses())
    ... def check(client):
    ...     sched.release(sched.pick(client))
    >>> check()
    """
    return st.ip_addresses().flatmap(lambda a: st.sampled_from(address_spellings(str(a))))


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
