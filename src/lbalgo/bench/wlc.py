"""Weighted least connections: the whole request on the heap ledger against a bare O(n) scan.

The scan (:class:`~lbalgo.testing.reference.ScanLeastConnections`) is what a plain
implementation does: walk every backend and keep the lowest ``open / weight``
(cross-multiplied, first in order on ties), with no lock, no health marks and no statistics,
so the comparison flatters it. Both get the same group and the same standing load: half the
backends hold open connections, the other half are idle, as in a pool of long-lived
connections. The table is :func:`lbalgo.bench.request.wlc_table`.
"""

from __future__ import annotations

from lbalgo.bench._core import Table
from lbalgo.bench.request import wlc_table

__all__ = ["run"]

SIZES = (8, 50, 500)
QUICK_SIZES = (8, 50)
ROUNDS = 5


def run(quick: bool = False) -> list[Table]:
    """Pick + release and ``with connection()`` against the scan, by size, and the cost of
    a health flap (``quick``: small sizes and few loops, for the smoke test)."""
    sizes = QUICK_SIZES if quick else SIZES
    return [wlc_table(sizes, 1_000 if quick else 20_000, 2 if quick else ROUNDS)]
