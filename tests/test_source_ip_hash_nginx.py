"""SourceIPHash(compat="nginx") against a real nginx running ``hash ... consistent``.

nginx here hashes the ``X-Client`` header (``hash $http_x_client consistent``), which carries
the client's address exactly as nginx would print ``$remote_addr`` for it, so one loopback
connection can stand for thousands of clients; one case also uses ``$remote_addr`` itself.
Skipped with a clear reason when nginx is not installed; CI installs it.
"""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from lbalgo import Backend, BackendGroup, SourceIPHash
from lbalgo._address import address_key, address_text
from lbalgo._nginx_chash import POINTS_PER_WEIGHT, Ring, server_points
from nginx_harness import NginxHarness, nginx_harness, upstream_servers

__all__ = ["nginx_harness"]  # the fixture, re-exported so pytest finds it here

_case_rng = random.Random(60606)  # fixed: the same "random" weights on every run


def client_sample(count: int, seed: int = 60606) -> list[str]:
    """IPv4 and IPv6 clients in assorted spellings: the same ``count`` clients for a seed on
    every run, whichever tests ran before (each call draws from its own generator)."""
    rng = random.Random(seed)
    out = []
    for index in range(count):
        if index % 4 == 3:
            value = rng.getrandbits(128) if index % 8 == 3 else rng.getrandbits(16)
            out.append(str(ipaddress.IPv6Address(value)).upper())
        elif index % 4 == 2:
            out.append(f"::ffff:{ipaddress.IPv4Address(rng.getrandbits(32))}")
        else:
            out.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
    return out


# -- the key text: nginx's $remote_addr -----------------------------------------------------

# (address, what ngx_inet6_ntop / ngx_inet_ntop print), worked out from nginx's source
NGINX_TEXT = [
    ("10.0.0.1", "10.0.0.1"),
    ("::ffff:10.0.0.1", "10.0.0.1"),  # lbalgo unmaps first: one client, one key
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),  # the longest run wins
    ("2001:0:0:1:0:0:1:1", "2001::1:0:0:1:1"),  # the first of equal runs wins
    ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),  # a single zero group stays
    ("::1", "::1"),
    ("::", "::"),
    ("::2", "::2"),
    ("::ff", "::ff"),
    ("::102:304", "::1.2.3.4"),  # IPv4-compatible: dotted tail
    ("::1:2:3", "::1:2:3"),
    ("1::", "1::"),
    ("fe80::1%eth0", "fe80::1"),
]


@pytest.mark.parametrize(("address", "text"), NGINX_TEXT)
def test_key_text_is_what_nginx_prints(address: str, text: str) -> None:
    assert address_text(address_key(address)) == text


@given(st.ip_addresses(v=6))
def test_key_text_matches_python_outside_the_dotted_forms(address: ipaddress.IPv6Address) -> None:
    packed = address.packed
    # nginx prints a dotted IPv4 tail there, Python does not
    assume(address.ipv4_mapped is None and not (packed[:12] == bytes(12) and int(address) > 0xFFFF))
    assert address_text(address_key(address)) == str(address)


# -- the ring -------------------------------------------------------------------------------


def test_ring_has_160_points_per_weight_unit() -> None:
    servers = [("127.0.0.1:8001", 3), ("127.0.0.1:8002", 1), ("[::1]:8003", 2)]
    ring = Ring(servers)
    assert len(ring) == POINTS_PER_WEIGHT * 6  # no collisions among these
    assert ring.values == sorted(ring.values)
    for index, (server, weight) in enumerate(servers):
        points = server_points(server, weight)
        assert len(points) == weight * POINTS_PER_WEIGHT
        assert sum(owner == index for owner in ring.owners) == len(points)


def test_server_text_is_split_as_nginx_does() -> None:
    # the port is whatever follows the last colon when it is all digits
    assert server_points("[::1]:80", 1) != server_points("[::1]:81", 1)
    assert server_points("unix:/tmp/x", 1) == server_points("UNIX:/tmp/x", 1)
    assert server_points("backend", 1)[0] == server_points("backend", 1)[0]


def test_weight_zero_acts_as_nginx_down() -> None:
    group = BackendGroup(Backend("127.0.0.1", 9000 + i, i % 3 + 1) for i in range(6))
    victim = group.keys()[2]
    drained = SourceIPHash(group, compat="nginx")
    drained.update(group.with_weight(victim, 0))
    marked = SourceIPHash(group, compat="nginx")
    marked.mark_down(victim)
    for address in client_sample(400):
        assert drained.pick(address).key == marked.pick(address).key != victim


# -- against a real nginx -------------------------------------------------------------------

CASES = [
    ("equal-5", [1] * 5, []),
    ("weights", [5, 1, 3, 2, 8, 1], []),
    ("down", [2, 2, 1, 4, 3, 1, 1], [1, 4]),
    ("wide", [_case_rng.randint(1, 20) for _ in range(24)], [3, 11, 17]),
]
pytestmark = pytest.mark.nginx


def covering_sample(sched: SourceIPHash, index: dict[str, str], up: set[str]) -> list[str]:
    """500 clients, plus as few more as it takes for every backend that is up to own one.

    The backends listen on new ports every run, and the ports are part of nginx's ring, so
    which backend owns which client changes from run to run: with weight-1 backends among 24,
    500 clients alone sometimes leave one of them without a client (one run in three failed
    that way in review). Topping the
    sample up by lbalgo's placement (which nginx must then match) makes "every backend up
    answered" a certainty; the extra clients come from a fixed, bounded list."""
    sample = client_sample(500)
    owned = {index[sched.pick(address).key] for address in sample}
    for address in client_sample(20_000, seed=60607):
        if owned >= up:
            break
        owner = index[sched.pick(address).key]
        if owner not in owned:
            owned.add(owner)
            sample.append(address)
    assert owned >= up, f"no client among 20,500 for backends {sorted(up - owned)}"
    return sample


@pytest.mark.parametrize(("weights", "down"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_places_every_client_as_nginx(
    nginx_harness: NginxHarness, weights: list[int], down: list[int]
) -> None:
    backends = nginx_harness.backends(len(weights))
    upstream = "hash $http_x_client consistent;\n" + upstream_servers(backends, weights, down=down)
    proxy = nginx_harness.proxy(upstream)
    group = BackendGroup(
        Backend("127.0.0.1", backend.port, weight)
        for backend, weight in zip(backends, weights, strict=True)
    )
    index = {key: str(i) for i, key in enumerate(group.keys())}
    sched = SourceIPHash(group, compat="nginx")
    for i in down:
        sched.mark_down(group.keys()[i])
    up = {str(i) for i in range(len(weights)) if i not in down}
    mismatches = []
    answered = set()
    for address in covering_sample(sched, index, up):
        ours = index[sched.pick(address).key]
        theirs = proxy.answer({"X-Client": address_text(address_key(address))})
        answered.add(theirs)
        if ours != theirs:
            mismatches.append((address, ours, theirs))
    assert not mismatches, mismatches[:10]
    # meaningful only if nginx spread the clients over every backend that is up
    assert answered == up


def test_remote_addr_key(nginx_harness: NginxHarness) -> None:
    backends = nginx_harness.backends(9)
    upstream = "hash $remote_addr consistent;\n" + upstream_servers(backends, [1] * 9)
    proxy = nginx_harness.proxy(upstream)
    group = BackendGroup(Backend("127.0.0.1", b.port) for b in backends)
    sched = SourceIPHash(group, compat="nginx")
    expected = str(group.keys().index(sched.pick("127.0.0.1").key))
    assert proxy.answers(3) == [expected] * 3
