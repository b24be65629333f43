"""Plain models of nginx's peer selection, line for line from its C sources (1.22).

- :meth:`NginxPeers.get_round_robin_peer` is ``ngx_http_upstream_get_round_robin_peer`` with
  ``ngx_http_upstream_get_peer`` (smooth weighted round robin over ``effective_weight``,
  skipping down, tried and failed peers);
- :meth:`NginxPeers.free_peer` is ``ngx_http_upstream_free_round_robin_peer`` (``fails``,
  ``accessed``, ``checked``, ``effective_weight -= weight / max_fails`` on a failure);
- :meth:`NginxPeers.get_least_conn_peer` is ``ngx_http_upstream_get_least_conn_peer`` (lowest
  ``conns / weight``, ties by smooth round robin over the tied peers only).

O(n) a call, as in nginx: these are the specification the fast schedulers are tested against,
and they are checked against a real nginx themselves (lbalgo's ``tests/test_nginx_recordings.py``
replays recordings of nginx 1.22 through them). ``now`` is nginx's cached clock, whole
seconds (``ngx_time()``); ``tried`` the peers this request already tried (nginx's
``rrp->tried`` bitmap). No backup peers, no ``max_conns``.

>>> peers = NginxPeers([NginxPeer(5), NginxPeer(1), NginxPeer(1)])
>>> picks = []
>>> for _ in range(7):
...     i = peers.get_round_robin_peer(now=0)
...     picks.append("abc"[i])
...     peers.free_peer(i, now=0, failed=False)
>>> "".join(picks)
'aabacaa'
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["NginxPeer", "NginxPeers"]


@dataclass
class NginxPeer:
    """``ngx_http_upstream_rr_peer_t``, the fields selection reads and writes."""

    weight: int
    max_fails: int = 1
    fail_timeout: int = 10
    down: bool = False
    current_weight: int = 0
    effective_weight: int = 0
    conns: int = 0
    fails: int = 0
    accessed: int = 0
    checked: int = 0

    def __post_init__(self) -> None:
        self.effective_weight = self.weight  # ngx_http_upstream_init_round_robin

    def failed_now(self, now: int) -> bool:
        """nginx's test for a peer that is out after too many failures."""
        return (
            self.max_fails != 0
            and self.fails >= self.max_fails
            and now - self.checked <= self.fail_timeout
        )


class NginxPeers:
    """``ngx_http_upstream_rr_peers_t`` for one upstream block (primary peers only)."""

    def __init__(self, peers: Sequence[NginxPeer]) -> None:
        self.peers = list(peers)
        # "single" is decided from the configured servers, down ones included
        self.single = len(self.peers) == 1

    # -- ngx_http_upstream_get_round_robin_peer + ngx_http_upstream_get_peer --------------

    def get_round_robin_peer(self, now: int, tried: Collection[int] = ()) -> int | None:
        """The index nginx picks for one try, or None (nginx answers 502)."""
        if self.single:
            peer = self.peers[0]
            if peer.down:
                return None
            peer.conns += 1
            return 0
        best = self._get_peer(now, tried)
        if best is not None:
            self.peers[best].conns += 1
        return best

    def _get_peer(self, now: int, tried: Collection[int]) -> int | None:
        best: int | None = None
        total = 0
        for i, peer in enumerate(self.peers):
            if i in tried or peer.down or peer.failed_now(now):
                continue
            peer.current_weight += peer.effective_weight
            total += peer.effective_weight
            if peer.effective_weight < peer.weight:
                peer.effective_weight += 1
            if best is None or peer.current_weight > self.peers[best].current_weight:
                best = i
        if best is None:
            return None
        chosen = self.peers[best]
        chosen.current_weight -= total
        if now - chosen.checked > chosen.fail_timeout:
            chosen.checked = now
        return best

    # -- ngx_http_upstream_free_round_robin_peer ------------------------------------------

    def free_peer(self, index: int, now: int, *, failed: bool) -> None:
        """The request on peer ``index`` ended; ``failed``: NGX_PEER_FAILED (connect error,
        timeout, upstream closed early)."""
        peer = self.peers[index]
        if self.single:
            peer.fails = 0
            peer.conns -= 1
            return
        if failed:
            peer.fails += 1
            peer.accessed = now
            peer.checked = now
            if peer.max_fails:
                # C's integer division of non-negative ints is Python's //
                peer.effective_weight -= peer.weight // peer.max_fails
            peer.effective_weight = max(peer.effective_weight, 0)
        elif peer.accessed < peer.checked:
            peer.fails = 0
        peer.conns -= 1

    # -- ngx_http_upstream_get_least_conn_peer --------------------------------------------

    def get_least_conn_peer(self, now: int, tried: Collection[int] = ()) -> int | None:
        """The index nginx's ``least_conn`` picks for one try, or None."""
        if self.single:
            return self.get_round_robin_peer(now, tried)
        peers = self.peers
        best: int | None = None
        many = False
        for i, peer in enumerate(peers):
            if i in tried or peer.down or peer.failed_now(now):
                continue
            if best is None or peer.conns * peers[best].weight < peers[best].conns * peer.weight:
                best, many = i, False
            elif peer.conns * peers[best].weight == peers[best].conns * peer.weight:
                many = True
        if best is None:
            return None
        total = 0
        if many:
            first = best
            for i in range(first, len(peers)):
                peer = peers[i]
                if i in tried or peer.down:
                    continue
                # compared with the current best, as in nginx (the tied class's ratio)
                if peer.conns * peers[best].weight != peers[best].conns * peer.weight:
                    continue
                if peer.failed_now(now):
                    continue
                peer.current_weight += peer.effective_weight
                total += peer.effective_weight
                if peer.effective_weight < peer.weight:
                    peer.effective_weight += 1
                if peer.current_weight > peers[best].current_weight:
                    best = i
        chosen = peers[best]
        chosen.current_weight -= total
        if now - chosen.checked > chosen.fail_timeout:
            chosen.checked = now
        chosen.conns += 1
        return best
