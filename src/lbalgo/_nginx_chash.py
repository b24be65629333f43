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

import zlib
from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["MAX_TRIES", "POINTS_PER_WEIGHT", "Ring", "server_points"]

POINTS_PER_WEIGHT = 160
"""Ring points per unit of weight, as in nginx."""

MAX_TRIES = 20
"""Steps along the ring after which nginx falls back to round robin."""

_INDEX_BITS = 16  # a point value and its server index packed in one int sorts fastest


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
    crc32 = zlib.crc32
    previous = 0
    points = []
    for _ in range(weight * POINTS_PER_WEIGHT):
        previous = crc32(previous.to_bytes(4, "little"), base)
        points.append(previous)
    return points


class Ring:
    """The sorted, de-duplicated points of an upstream and the server index of each.

    Building is O(P log P) for P = 160 x total weight points; finding a key's first point is
    a binary search, O(log P).
    """

    __slots__ = ("owners", "values")

    def __init__(self, servers: Sequence[tuple[str, int]]) -> None:
        packed: list[int] = []
        for index, (server, weight) in enumerate(servers):
            packed.extend(point << _INDEX_BITS | index for point in server_points(server, weight))
        packed.sort()
        mask = (1 << _INDEX_BITS) - 1
        values: list[int] = []
        owners: list[int] = []
        last = -1
        for item in packed:
            value = item >> _INDEX_BITS
            if value != last:  # equal values: the first server in upstream order keeps it
                values.append(value)
                owners.append(item & mask)
                last = value
        self.values = values
        self.owners = owners

    def start(self, key_text: str) -> int:
        """The index of the first point at or after ``crc32(key_text)`` (may equal len)."""
        return bisect_left(self.values, zlib.crc32(key_text.encode("ascii")))

    def __len__(self) -> int:
        return len(self.values)
