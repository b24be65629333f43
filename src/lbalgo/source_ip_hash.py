"""Consistent source-IP hashing: the same client goes to the same backend, on every host.

Default mode looks the client up in a rendezvous table (:mod:`lbalgo._table`): weighted
rendezvous hashing evaluated once per cell of a 393,209-cell table, so shares follow the
weights, a lookup is one index, a membership change moves only the clients of the backend
that came or went, and the table is a function of the group's (key, weight) pairs alone. The
rest of a client's ranking at its cell is its fixed order of further choices, so a backend
that is down, weight 0, suspended or excluded hands each of its clients to exactly the backend
it would get if that backend were removed: nobody else moves, no table is rebuilt, and when it
returns exactly its clients come back. ``compat="nginx"`` instead builds nginx's own ring
(:mod:`lbalgo._nginx_chash`). ``balance_factor`` adds bounded loads.
"""

from __future__ import annotations

import math
import socket
import time
from array import array
from collections.abc import Callable, Iterator
from fractions import Fraction

import mmh3

from lbalgo import _fastpath
from lbalgo._address import STRICT_PTON, address_key, remote_addr
from lbalgo._base import BaseScheduler
from lbalgo._nginx_chash import MAX_TRIES, Ring, RoundRobin, servers_for
from lbalgo._slot import Slot
from lbalgo._table import TABLE_SIZE, RendezvousTable
from lbalgo._table_updates import table_for
from lbalgo._validate import number, shown
from lbalgo.backend import Backend, BackendGroup
from lbalgo.errors import InvalidOptionError
from lbalgo.scheduler import Client, Exclude, Lease

__all__ = ["HASH_VERSION", "SourceIPHash"]

HASH_VERSION = 1
"""Version of the default placement. Version 1: the client key is its packed address (4 bytes
for IPv4 and IPv4-mapped IPv6, else 16); its cell is ``mmh3.hash(key, 0x4C420100) mod 393209``
(signed 32-bit mmh3, Python's ``mod``). Backend ``i`` (key UTF-8, digest =
``mmh3.hash128(key, 0x4C420001)``, offset = digest mod 393209, skip = (digest >> 64) mod 393208
+ 1) scores the cell ``E(rank) / weight`` with rank = (cell - offset) * skip^-1 mod 393209 and
``E(k) = -log1p(-(k + 0.5) / 393209)``; the client's choices are the backends by increasing
score (ties: the lower key). Any change to this recipe gets a new version number and a
changelog entry."""

_CLIENT_SEED = 0x4C42_0100
_COMPAT_MODES = (None, "nginx")

_hash = mmh3.hash
_pton = socket.inet_pton
# where inet_pton is looser than ipaddress, an unsupported family sends every string through
# address_key's reference path
_V4_FAMILY = socket.AF_INET if STRICT_PTON else -1


def _check_balance_factor(balance_factor: object) -> Fraction | None:
    if balance_factor is None:
        return None
    # above 100 the cap never binds: a mistake, and str() below needs a number of sane size
    number("balance_factor", balance_factor, 1, 100, above_low=True)
    # the decimal the user wrote (1.05 is 21/20), not its binary approximation
    return Fraction(str(balance_factor))


class SourceIPHash(BaseScheduler):
    """Consistent hashing of the client's address, balanced like a table, stable like a ring.

    ``pick(client)`` needs the client's address (``str``, ``IPv4Address`` or
    ``IPv6Address``; ``"::ffff:10.0.0.1"`` is ``"10.0.0.1"``, IPv6 in any compression or case
    is one client) and raises ``ValueError`` naming anything else. The answer is the same in
    every process, host and Python version (see :data:`HASH_VERSION`). Lookup is O(1): one
    address parse, one mmh3 hash, two array indexes, lock-free unless bounded loads are on or a
    slow-start ramp or passive-health suspension is in progress (``compat="nginx"``:
    O(log P) on nginx's ring of P points, under the lock). A backend that is down, weight
    0, suspended or excluded hands its clients to their next choices (exactly where they go
    when it is removed), scored in O(n) for those clients only; nobody else moves. A first
    build is O(T log n) for T = 393,209 cells; an update that adds, removes or re-weights one
    backend touches only that backend's cells, O(T/n log n), on a copy made outside the lock
    (``await asyncio.to_thread(sched.update, group)`` keeps an event loop free meanwhile);
    after it only the clients of the backend that came, went or changed weight have moved.

    Options: ``compat="nginx"`` places every client exactly as nginx's
    ``hash $remote_addr consistent`` does for the same ``server host:port weight=w`` lines in
    the same order. ``balance_factor=c`` (> 1) caps every backend's open connections at
    ``ceil(c * (total_open + 1) * weight / total_weight)``: a client whose backend is full
    spills to its next choice (consistent hashing with bounded loads, Mirrokni et al.).
    ``slow_start`` only lowers that cap while a backend ramps, from 1/32 of its full-weight
    cap in :data:`~lbalgo.scheduler.RAMP_STEPS` steps (placement never ramps: it would
    move its clients twice); ``max_fails``/``fail_timeout`` as in :class:`BaseScheduler`.

    >>> from lbalgo import Backend, BackendGroup
    >>> group = BackendGroup([Backend(f"10.0.0.{i}", 80) for i in range(1, 6)])
    >>> sched = SourceIPHash(group)
    >>> first = sched.pick("192.0.2.7")
    >>> sched.pick("::ffff:192.0.2.7") == first
    True
    >>> sched.mark_down(first.key)
    >>> sched.pick("192.0.2.7") != first
    True
    >>> sched.mark_up(first.key)
    >>> sched.pick("192.0.2.7") == first
    True
    >>> sched.pick("192.0.2.300")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: client must be an IPv4 or IPv6 address (...),
    got '192.0.2.300'
    """

    def __init__(
        self,
        group: BackendGroup,
        *,
        compat: str | None = None,
        balance_factor: float | None = None,
        slow_start: float = 0.0,
        max_fails: int = 0,
        fail_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if compat not in _COMPAT_MODES:
            raise InvalidOptionError(f"compat must be None or 'nginx', got {shown(compat)}")
        self._compat = compat
        self._bound = _check_balance_factor(balance_factor)
        # weight each key had when last above 0: a weight-0 backend keeps its cells (or ring
        # points) so that draining it moves nobody else
        self._table_weights: dict[str, int] = {}
        self._spec: tuple[tuple[str, int], ...] | None = None
        # a table or ring made for a spec outside the lock by update(), taken by _rebuild
        self._prepared: tuple[tuple[tuple[str, int], ...], RendezvousTable | Ring] | None = None
        self._rendezvous: RendezvousTable | None = None
        self._members: tuple[Slot, ...] = ()
        # what the lock-free fast path reads in one go: the owner id of every cell and the
        # slot of every id (None: no table)
        self._table: tuple[array[int], list[Slot]] | None = None
        self._ring: Ring | None = None
        self._round_robin = RoundRobin()  # what nginx falls back to after 20 unusable points
        self._blocked: frozenset[Slot] = frozenset()
        self._fast = False
        # bounded loads: every release must come back to count total_open down
        self._hooked = self._bound is not None
        self._opens_order: tuple[Slot, ...] | None = None
        self._total_open = 0
        self._weight_sum = 0
        self._any_ramp = False
        super().__init__(
            group,
            slow_start=slow_start,
            max_fails=max_fails,
            fail_timeout=fail_timeout,
            clock=clock,
        )

    # -- the fast path ------------------------------------------------------------------------

    # the IPv4 table path in C where the accelerator is built (the same steps)
    @_fastpath.hash_pick(_CLIENT_SEED, TABLE_SIZE, inet_pton=STRICT_PTON)
    def pick(self, client: Client = None, *, exclude: Exclude = ()) -> Backend:
        """The backend for ``client``'s new request: its first eligible choice.

        O(1) and lock-free without ``compat``, ``balance_factor`` and ``exclude`` while no
        slow-start ramp is in progress and no backend has uncleared failures (the options may be on:
        only their events leave the fast path); otherwise under the lock, O(log P) for nginx's ring
        of P points, plus O(n) for a client whose first choice cannot take it.
        ``ValueError`` naming the client if it is not an address; ``NoBackendAvailable`` if
        nothing is eligible.
        """
        # one read of the table: an update emptying it may land after the check of _fast
        table = self._table
        if self._fast and table is not None and not exclude:
            try:  # the common case inline: an IPv4 string (see lbalgo._address)
                key = _pton(_V4_FAMILY, client)  # type: ignore[arg-type]
            except (OSError, TypeError, ValueError):
                key = address_key(client)
            slot = table[1][table[0][_hash(key, _CLIENT_SEED) % TABLE_SIZE]]
            if slot not in self._blocked:
                next(slot.picks)
                return slot.backend
        return self._pick_slot(client, exclude).backend

    @_fastpath.hash_connection(_CLIENT_SEED, TABLE_SIZE, inet_pton=STRICT_PTON)
    def connection(self, client: Client = None, *, exclude: Exclude = ()) -> Lease:
        """Pick for ``client`` now and return a :class:`Lease` to release later."""
        # one read of the table: an update emptying it may land after the check of _fast
        table = self._table
        if self._fast and table is not None and not exclude:
            try:
                key = _pton(_V4_FAMILY, client)  # type: ignore[arg-type]
            except (OSError, TypeError, ValueError):
                key = address_key(client)
            slot = table[1][table[0][_hash(key, _CLIENT_SEED) % TABLE_SIZE]]
            if slot not in self._blocked:
                next(slot.picks)
                return Lease(slot.backend, slot, self._end_lease)
        slot = self._pick_slot(client, exclude)
        return Lease(slot.backend, slot, self._end_lease)

    def update(self, group: BackendGroup) -> None:
        """Swap in a new group; the new table is built before the lock is taken, so picks
        continue meanwhile (see :meth:`BaseScheduler.update`)."""
        if isinstance(group, BackendGroup):
            weights = dict(self._table_weights)
            if self._compat is None:
                spec = self._spec_for(group, weights)
                current = self._rendezvous
                if spec and spec != self._spec:
                    self._prepared = (spec, table_for(current, spec))
            else:
                spec = servers_for(group, weights)
                if spec and spec != self._spec:
                    self._prepared = (spec, Ring(spec))
        super().update(group)

    # -- BaseScheduler hooks -------------------------------------------------------------------

    def _choose(self, client: Client, exclude: frozenset[str], now: float) -> Slot:
        bound = self._bound
        if self._ring is not None:
            if bound is None:
                return self._nginx_choose(remote_addr(client), exclude, now)
            candidates = self._nginx_walk(remote_addr(client))
        else:
            candidates = self._choices(address_key(client))
        if bound is None:
            for slot in candidates:
                if slot.key not in exclude and self._eligible(slot, now):
                    return slot
            raise self._no_backend(exclude)
        # The cap counts only the backends that can take this pick (API.md): an excluded,
        # down or suspended backend's connections and weight would otherwise squeeze the
        # others' caps, and a retry could find every eligible backend "full".
        total, weight_sum, fine = self._room(exclude, now)
        numerator, denominator = bound.numerator, bound.denominator
        first: Slot | None = None
        for slot in candidates:
            if slot.key in exclude or not self._eligible(slot, now):
                continue
            if first is None:
                first = slot
            weight = self._fine_weight(slot, now) if fine else slot.backend.weight
            # open < ceil(c * (total + 1) * w / W), in exact integer arithmetic
            limit = numerator * (total + 1) * weight
            cap = -(-limit // (denominator * weight_sum))
            if slot.open < cap:
                self._total_open += 1
                return slot
        if first is not None:
            # with c > 1 the caps add up to more than the open connections, so one has
            # room; should rounding ever leave none, the client's first eligible choice
            # takes it (HAProxy and Envoy do the same) rather than failing the request
            self._total_open += 1
            return first
        raise self._no_backend(exclude)

    def _room(self, exclude: frozenset[str], now: float) -> tuple[int, int, bool]:
        """Open connections and total weight of the backends that can take this pick, and
        whether weights are in fine units (a ramp is on). O(|exclude| + |down|) from the
        running totals; O(n) while slow start or passive health may change eligibility."""
        fine = self._any_ramp
        if self._timed:
            total = weight = 0
            for slot in self._order:
                if slot.key not in exclude and self._eligible(slot, now):
                    total += slot.open
                    weight += self._fine_weight(slot, now) if fine else slot.backend.weight
            return total, weight, fine
        blocked = self._blocked
        total, weight = self._total_open, self._weight_sum
        if not blocked and not exclude:
            return total, weight, fine
        for down in blocked:
            total -= down.open
        for key in exclude:
            gone = self._slots.get(key)
            if gone is not None and gone not in blocked:
                total -= gone.open
                weight -= gone.backend.weight
        return max(total, 0), weight, fine

    def _released(self, slot: Slot) -> None:
        if self._total_open > 0:
            self._total_open -= 1

    def _taken(self, slot: Slot) -> None:
        # a wrapper (sticky sessions) picked this backend itself: count it against the cap
        if self._bound is not None:
            self._total_open += 1

    def _rebuild(self) -> None:
        order = self._order
        weights = self._table_weights
        for slot in order:
            if slot.backend.weight > 0:
                weights[slot.key] = slot.backend.weight
        for key in [k for k in weights if k not in self._slots]:
            del weights[key]
        if self._compat is None:
            self._rebuild_table()
        else:
            self._rebuild_ring()
        self._blocked = frozenset(s for s in order if not s.up or s.backend.weight == 0)
        now = self._now()
        self._weight_sum = sum(s.backend.weight for s in order if self._eligible(s, now))
        self._any_ramp = self._ramping()
        if self._bound is not None and self._opens_order is not order:
            self._total_open = sum(s.open for s in order)
            self._opens_order = order
        self._fast = (
            self._compat is None
            and self._bound is None
            and self._table is not None
            # no ramp step or lift pending and no failure awaiting its check or trial:
            # nothing the clock decides
            and self._next_event == math.inf
            and all(slot.suspended_until == -math.inf and not slot.fails for slot in order)
        )

    # -- internals ----------------------------------------------------------------------------

    def _spec_for(
        self, group: BackendGroup, weights: dict[str, int]
    ) -> tuple[tuple[str, int], ...]:
        # the canonical member list: sorted by key, so group order never moves a client
        members = []
        for backend in group:
            weight = backend.weight or weights.get(backend.key, 0)
            if weight > 0:
                members.append((backend.key, weight))
        return tuple(sorted(members))

    def _rebuild_table(self) -> None:
        spec = self._spec_for(self._group, self._table_weights)
        if spec != self._spec:
            prepared = self._prepared
            if not spec:
                self._rendezvous = None
            elif prepared is not None and prepared[0] == spec:
                assert isinstance(prepared[1], RendezvousTable)
                self._rendezvous = prepared[1]
            else:
                self._rendezvous = table_for(self._rendezvous, spec)
            self._prepared = None
            self._spec = spec
        table = self._rendezvous
        if table is None:
            self._table = None
            self._members = ()
            return
        # a key removed and added again has a new slot: map ids to slots on every rebuild
        members = [None if m is None else self._slots[m.key] for m in table.members]
        live = [slot for slot in members if slot is not None]
        # ids of departed members never occur in the table: any slot may stand in for them
        self._table = (table.owner, [live[0] if slot is None else slot for slot in members])
        self._members = tuple(live)

    def _rebuild_ring(self) -> None:
        weights = self._table_weights
        servers = servers_for(self._group, weights)
        if servers != self._spec or self._ring is None:
            prepared = self._prepared
            if prepared is not None and prepared[0] == servers:
                assert isinstance(prepared[1], Ring)
                self._ring = prepared[1]
            else:
                self._ring = Ring(servers)
            self._prepared = None
            self._spec = servers
        self._members = tuple(slot for slot in self._order if weights.get(slot.key, 0) > 0)
        self._round_robin.sync([(slot.key, slot.backend.weight) for slot in self._order])

    def _choices(self, key: bytes) -> Iterator[Slot]:
        """The client's fixed order of choices: the backends by score at its cell (the first
        is the table's owner of the cell; the rest are scored only when needed, O(n))."""
        table, rendezvous = self._table, self._rendezvous
        if table is None or rendezvous is None:
            return
        cells, slots = table
        cell = _hash(key, _CLIENT_SEED) % TABLE_SIZE
        first = slots[cells[cell]]
        yield first
        for ident in rendezvous.ranking(cell):
            slot = slots[ident]
            if slot is not first:
                yield slot

    def _nginx_choose(self, text: str, exclude: frozenset[str], now: float) -> Slot:
        """``ngx_http_upstream_get_chash_peer``: the first usable server of the 21 ring points
        from the client's, else nginx's round robin over the usable servers (tried, that is
        excluded, down, weight 0 and suspended ones are not usable). O(log P + n)."""
        ring, members = self._ring, self._members
        if ring is not None and len(ring) and len(self._order) > 1:
            owners, count = ring.owners, len(ring)
            start = ring.start(text)
            for step in range(min(MAX_TRIES + 1, count)):
                slot = members[owners[(start + step) % count]]
                if slot.key not in exclude and self._eligible(slot, now):
                    self._round_robin.took_part(slot.key, slot.backend.weight)
                    return slot
        usable = [
            (slot.key, slot.backend.weight)
            for slot in self._order
            if slot.key not in exclude and self._eligible(slot, now)
        ]
        chosen = self._round_robin.pick(usable)
        if chosen is None:
            raise self._no_backend(exclude)
        return self._slots[chosen]

    def _nginx_walk(self, text: str) -> Iterator[Slot]:
        """Bounded loads in nginx mode: the ring points nginx visits for this client, as
        backends, then each remaining backend once, in ring order (deterministic)."""
        ring = self._ring
        if ring is None or not len(ring):
            return
        members = self._members
        owners = ring.owners
        count = len(ring)
        start = ring.start(text)
        for step in range(min(MAX_TRIES + 1, count)):
            yield members[owners[(start + step) % count]]
        seen: set[int] = set()
        for step in range(MAX_TRIES + 1, count):
            owner = owners[(start + step) % count]
            if owner not in seen:
                seen.add(owner)
                yield members[owner]
                if len(seen) == len(members):
                    return
