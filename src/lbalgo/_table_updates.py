"""Which rendezvous table a scheduler gets for a new group: one in use elsewhere for the
same members, its current table changed where the members differ, or a fresh build.

Tables are never changed once a scheduler holds them (updates change a copy), so schedulers
over one group share one while they live; nothing stays once they are gone.
"""

from __future__ import annotations

import weakref

from lbalgo._table import TABLE_SIZE, RendezvousTable

__all__ = ["table_for"]

# tables in use by some scheduler, by size and spec: a table is never changed once made
# (updates change a copy), so schedulers over one group share one; it goes with the last one
_LIVE: weakref.WeakValueDictionary[tuple[int, tuple[tuple[str, int], ...]], RendezvousTable] = (
    weakref.WeakValueDictionary()
)


def table_for(
    current: RendezvousTable | None, spec: tuple[tuple[str, int], ...], size: int = TABLE_SIZE
) -> RendezvousTable:
    """The table for ``spec`` (sorted (key, weight > 0) pairs): one in use elsewhere,
    ``current`` changed where the spec differs (on a copy: readers may still hold it), or a
    fresh build when many members changed or updates have drifted far from the last build."""
    table = _LIVE.get((size, spec))
    if table is None:
        table = _changed_table(current, spec, size)
        _LIVE[size, spec] = table
    return table


def _changed_table(
    current: RendezvousTable | None, spec: tuple[tuple[str, int], ...], size: int
) -> RendezvousTable:
    if current is None or current.size != size:
        return RendezvousTable.build(spec, size)
    old = dict(current.spec)
    new = dict(spec)
    gone = [key for key in old if key not in new]
    added = [key for key in new if key not in old]
    changed = [key for key in new if key in old and old[key] != new[key]]
    # each change walks about T/n cells (a re-weight twice): past n/4 changes, build afresh
    if (len(gone) + len(added) + 2 * len(changed)) * 4 > max(4, len(spec)):
        return RendezvousTable.build(spec, size)
    table = current.copy()
    for key in gone:
        table.remove(key)
    for key in changed:
        table.reweight(key, new[key])
    for key in added:
        table.add(key, new[key])
    return RendezvousTable.build(spec, size) if table.drifted() else table
