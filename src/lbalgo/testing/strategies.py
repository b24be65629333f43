"""Hypothesis strategies for groups, backends, weights and client addresses in every
spelling: the generators lbalgo's own suite draws from. Needs ``hypothesis``."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from lbalgo.backend import MAX_BACKENDS, MAX_WEIGHT, Backend, BackendGroup

__all__ = [
    "address_spellings",
    "backends",
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
