"""nginx's ``hash ... consistent`` ring, rebuilt bit for bit (``compat="nginx"``).

From ``src/http/modules/ngx_http_upstream_hash_module.c``: every ``server`` line contributes
160 points per unit of weight; the server's text (``host:port`` as written) is split at the
last colon followed only by digits; the first point is ``crc32(host "\\0" port p)`` with ``p``
four zero bytes, each next one uses the previous point (little-endian) as ``p``. Points are
sorted by value and, where two share a value, the first server in upstream order keeps it
(glibc's ``qsort`` is a stable merge sort). A key's point is the first one ``>= crc32(key)``
(wrapping to the start), and a request walks from there point by point past servers that are
down, failed or already tried; after 20 steps nginx gives up and round-robins.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from lbalgo._accel import numpy_in_use
from lbalgo.backend import Backend

__all__ = [
    "MAX_TRIES",
    "POINTS_PER_WEIGHT",
    "Ring",
    "RoundRobin",
    "server_points",
    "server_text",
    "servers_for",
]

POINTS_PER_WEIGHT = 160
"""Ring points per unit of weight, as in nginx."""

MAX_TRIES = 20
"""Steps along the ring after which nginx falls back to round robin."""

_INDEX_BITS = 16  # a point value and its server index packed in one int sorts fastest
_SLICES = 256  # the ring is sorted a slice (one top byte of the point value) at a time
_SLICE_SHIFT = 32 + _INDEX_BITS - 8
_LITTLE_ENDIAN = struct.Struct("<I")


def _split_server(server: str) -> tuple[bytes, bytes]:
    raw = server.encode("utf-8")
    if raw[:5].lower() == b"unix:":
        return raw[5:], b""
    for back in range(len(raw)):
        char = raw[len(raw) - back - 1]
        if char == ord(":"):
            return raw[: len(raw) - back - 1], raw[len(raw) - back :]
        if not ord("0") <= char <= ord("9"):
            break
    return raw, b""


def server_points(server: str, weight: int) -> list[int]:
    """The ring points nginx makes for ``server <server> weight=<weight>;``, in order.

    O(weight) crc32 steps.

    >>> [hex(p) for p in server_points("127.0.0.1:8080", 1)[:2]]
    ['0x6dca9547', '0x92c7adf9']
    """
    host, port = _split_server(server)
    base = zlib.crc32(host + b"\0" + port)
    crc32, pack = zlib.crc32, _LITTLE_ENDIAN.pack
    previous = 0
    points: list[int] = []
    append = points.append
    for _ in range(weight * POINTS_PER_WEIGHT):
        previous = crc32(pack(previous), base)
        append(previous)
    return points


class Ring:
    """The sorted, de-duplicated points of an upstream and the server index of each, in two
    compact arrays (4 + 2 bytes a point: 24 MiB for nginx's 4 million points of 500 servers
    of weight 50).

    Building is O(P log P) for P = 160 x total weight points, sorted in 256 slices by their
    top byte so that only one slice at a time is a list of Python ints; finding a key's first
    point is a binary search, O(log P).

    >>> ring = Ring([("10.0.0.1:80", 1), ("10.0.0.2:80", 2)])
    >>> len(ring), sorted(set(ring.owners))
    (480, [0, 1])
    """

    __slots__ = ("owners", "values")

    def __init__(self, servers: Sequence[tuple[str, int]]) -> None:
        if numpy_in_use() and servers:
            self.values, self.owners = _numpy_ring(servers)
            return
        slices = [array("Q") for _ in range(_SLICES)]
        for index, (server, weight) in enumerate(servers):
            # value << 16 | index: one int sorts by value, then by upstream order
            packed = sorted(
                map(index.__ror__, map(_INDEX_BITS.__rlshift__, server_points(server, weight)))
            )
            block = array("Q", packed)
            low = 0
            for top in range(_SLICES):
                high = bisect_left(packed, (top + 1) << _SLICE_SHIFT, low)
                if high > low:
                    slices[top].extend(block[low:high])
                    low = high
        values: array[int] = array("I")
        owners: array[int] = array("H")
        mask = (1 << _INDEX_BITS) - 1
        while slices:
            items = sorted(slices.pop(0))
            keys = list(map(_INDEX_BITS.__rrshift__, items))
            if len(set(keys)) != len(keys):
                # equal values: the first server in upstream order keeps the point
                kept = [i for i in range(len(items)) if i == 0 or keys[i] != keys[i - 1]]
                items = [items[i] for i in kept]
                keys = [keys[i] for i in kept]
            values.extend(keys)
            owners.extend(map(mask.__and__, items))
        self.values = values
        self.owners = owners

    def start(self, key_text: str) -> int:
        """The index of the first point at or after ``crc32(key_text)`` (may equal len)."""
        return bisect_left(self.values, zlib.crc32(key_text.encode("ascii")))

    def __len__(self) -> int:
        return len(self.values)


def _numpy_ring(servers: Sequence[tuple[str, int]]) -> tuple[array[int], array[int]]:
    """The ring's (values, owners) with numpy: every server's crc32 chain advanced one step
    for all servers at once, then one sort of ``value << 16 | index``. O(P log P), about 14
    bytes a point at the peak."""
    import numpy as np  # here, not at module import: see lbalgo._accel

    splits = (_split_server(server) for server, _ in servers)
    bases = [zlib.crc32(host + b"\0" + port) for host, port in splits]
    # crc32(le32(p), base) = L(p) ^ crc32(le32(0), base) with L linear over GF(2): two
    # 65,536-entry tables give L, and the constant is the server's
    constant = np.array([zlib.crc32(bytes(4), base) for base in bases], np.uint32)
    low, high = _chain_tables()
    counts = [weight * POINTS_PER_WEIGHT for _, weight in servers]
    steps = max(counts)
    chains = np.empty((steps, len(servers)), np.uint32)
    previous = np.zeros(len(servers), np.uint32)
    for step in range(steps):
        point = chains[step]
        np.take(low, previous & 0xFFFF, out=point)
        point ^= high[previous >> 16]
        point ^= constant
        previous = point
    packed = np.empty(sum(counts), np.uint64)
    start = 0
    for index, count in enumerate(counts):
        chunk = packed[start : start + count]
        chunk[:] = chains[:count, index]
        chunk <<= _INDEX_BITS
        chunk |= index
        start += count
    del chains, point, previous, chunk  # the views too, or the arrays stay
    # value << 16 | index: one sort orders by value, then by upstream order
    packed.sort()
    owners = packed.astype(np.uint16)  # the low 16 bits
    packed >>= _INDEX_BITS
    values = packed.astype(np.uint32)
    del packed
    first = np.empty(len(values), bool)
    first[0] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    if not first.all():  # equal values: the first server in upstream order keeps the point
        values, owners = values[first], owners[first]
    return array("I", values.tobytes()), array("H", owners.tobytes())


def _chain_tables() -> tuple[Any, Any]:
    """L(p) for the low and the high 16 bits of p (512 KiB: a millisecond to make, so made
    for each ring rather than kept)."""
    import numpy as np

    zero = zlib.crc32(bytes(4))
    pack = _LITTLE_ENDIAN.pack
    byte = [
        np.array([zlib.crc32(pack(b << (8 * j))) ^ zero for b in range(256)], np.uint32)
        for j in range(4)
    ]
    halves = np.arange(1 << 16, dtype=np.uint32)
    low = byte[0][halves & 0xFF] ^ byte[1][halves >> 8]
    high = byte[2][halves & 0xFF] ^ byte[3][halves >> 8]
    return low, high


class RoundRobin:
    """nginx's smooth weighted round robin over an upstream's peers
    (``ngx_http_upstream_get_peer``): what ``hash ... consistent`` falls back to after
    :data:`MAX_TRIES` unusable points, with the ``current_weight`` / ``effective_weight`` of
    every peer carried from pick to pick as in an nginx worker. O(n) a fallback pick.

    >>> rr = RoundRobin()
    >>> [rr.pick([("a", 5), ("b", 1), ("c", 1)]) for _ in range(7)]
    ['a', 'a', 'b', 'a', 'c', 'a', 'a']
    """

    __slots__ = ("current", "effective")

    def __init__(self) -> None:
        self.current: dict[str, int] = {}
        self.effective: dict[str, int] = {}

    def sync(self, peers: Sequence[tuple[str, int]]) -> None:
        """Keep the state of the peers that stay (an effective weight no higher than the new
        weight); forget the others. New peers start as nginx starts them: current 0."""
        weights = dict(peers)
        self.current = {k: v for k, v in self.current.items() if k in weights}
        self.effective = {k: min(v, weights[k]) for k, v in self.effective.items() if k in weights}

    def took_part(self, key: str, weight: int) -> None:
        """A hash pick of this peer: nginx's one-peer round robin on its server, which leaves
        ``current_weight`` where it was and raises ``effective_weight`` towards ``weight``."""
        effective = self.effective.get(key, weight)
        if effective < weight:
            self.effective[key] = effective + 1

    def pick(self, candidates: Sequence[tuple[str, int]]) -> str | None:
        """The key nginx's round robin picks among these usable (key, weight) peers, in
        upstream order, or None when there are none."""
        current, effective = self.current, self.effective
        best: str | None = None
        best_weight = 0
        total = 0
        for key, weight in candidates:
            own = effective.get(key, weight)
            weight_now = current.get(key, 0) + own
            current[key] = weight_now
            total += own
            if own < weight:
                effective[key] = own + 1
            if best is None or weight_now > best_weight:
                best, best_weight = key, weight_now
        if best is not None:
            current[best] = best_weight - total
        return best


def servers_for(group: Iterable[Backend], weights: dict[str, int]) -> tuple[tuple[str, int], ...]:
    """nginx's server lines for ``group`` in upstream order: (server text, weight)."""
    # a weight-0 backend keeps its points at its last weight: draining it moves nobody else
    servers = ((server_text(b), b.weight or weights.get(b.key, 0)) for b in group)
    return tuple((text, weight) for text, weight in servers if weight > 0)


def server_text(backend: Backend) -> str:
    """The text nginx hashes for this backend's ``server`` line in ``compat="nginx"``: its
    ``name`` when it has one (:func:`lbalgo.nginx.load_upstream` sets it to the server
    address exactly as written, e.g. ``"10.0.0.2"`` for ``server 10.0.0.2;``), otherwise
    ``host:port`` (``[v6]:port`` for IPv6).

    >>> server_text(Backend("10.0.0.2", 80, name="10.0.0.2")), server_text(Backend("::1", 81))
    ('10.0.0.2', '[::1]:81')
    """
    return backend.name if backend.name is not None else backend.address
