"""The nginx least_conn ledger against the plain model of nginx's C function, step by step."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lbalgo import Backend, BackendGroup, LocalLedger, WeightedLeastConnections
from lbalgo._nginx_least_conn import NginxLeastConnLedger
from lbalgo.scheduler import RAMP_STEPS
from lbalgo.testing.nginx import NginxPeer, NginxPeers

_WEIGHTS = st.sampled_from([1, 1, 2, 3, 5, 7, 100])
_NOW = 0  # no suspensions in the model: the scheduler keeps suspended peers out of the set


class LeastConnMachine(RuleBasedStateMachine):
    """Picks (with and without tried peers), takes, releases, failures and eligibility flips,
    each applied to the ledger and to nginx's model; both must agree on every choice, count
    and current weight."""

    @initialize(weights=st.lists(_WEIGHTS, min_size=2, max_size=9), max_fails=st.integers(1, 4))
    def setup(self, weights: list[int], max_fails: int) -> None:
        self.keys = [f"s{i}" for i in range(len(weights))]
        self.max_fails = max_fails
        # fail_timeout -1: the model never suspends (suspension is the scheduler's business);
        # its effective_weight bookkeeping on failures is what is tested here
        self.model = NginxPeers([NginxPeer(w, max_fails, fail_timeout=-1) for w in weights])
        self.ledger = NginxLeastConnLedger()
        self._publish()

    def _publish(self) -> None:
        self.ledger.set_eligible(
            [
                (key, peer.weight * RAMP_STEPS)
                for key, peer in zip(self.keys, self.model.peers, strict=True)
                if not peer.down
            ]
        )

    @rule(data=st.data())
    def acquire(self, data: st.DataObject) -> None:
        tried = data.draw(st.sets(st.integers(0, len(self.keys) - 1), max_size=2))
        if data.draw(st.integers(0, 3)):
            tried = set()  # mostly the fast path
        expected = self.model.get_least_conn_peer(_NOW, tried)
        got = self.ledger.acquire(frozenset(self.keys[i] for i in tried))
        assert got == (None if expected is None else self.keys[expected])

    @rule(i=st.integers(0, 8))
    def take(self, i: int) -> None:
        i %= len(self.keys)
        if self.model.peers[i].down:
            return
        self.model.peers[i].conns += 1
        self.ledger.take(self.keys[i])

    @rule(i=st.integers(0, 8), failed=st.booleans())
    def release(self, i: int, failed: bool) -> None:
        i %= len(self.keys)
        had = self.model.peers[i].conns > 0
        if had:
            self.model.free_peer(i, _NOW, failed=failed)
            if failed and not self.model.single:
                self.ledger.failed(self.keys[i], self.max_fails)
        assert self.ledger.release_open(self.keys[i]) == had

    @rule(i=st.integers(0, 8))
    def flip(self, i: int) -> None:
        peer = self.model.peers[i % len(self.keys)]
        peer.down = not peer.down
        self._publish()

    @invariant()
    def agree(self) -> None:
        self.ledger._check()
        currents = self.ledger.current_weights()
        for key, peer in zip(self.keys, self.model.peers, strict=True):
            assert self.ledger.count(key) == peer.conns
            if not peer.down:
                assert currents[key] == peer.current_weight


TestLeastConn = LeastConnMachine.TestCase


def test_tie_break_is_nginx_smooth_round_robin() -> None:
    """Light load (each request released before the next): every pick is a tie at 0, so
    nginx's sequence is its smooth weighted round robin: {5, 1, 1} -> a a b a c a a."""
    ledger = NginxLeastConnLedger()
    ledger.set_eligible([("a", 5 * RAMP_STEPS), ("b", RAMP_STEPS), ("c", RAMP_STEPS)])
    picks = []
    for _ in range(7):
        key = ledger.acquire()
        assert key is not None
        picks.append(key)
        ledger.release(key)
    assert "".join(picks) == "aabacaa"


@given(
    st.lists(_WEIGHTS, min_size=1, max_size=8),
    st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=120),
)
def test_scheduler_follows_the_model(weights: list[int], ops: list[tuple[bool, int]]) -> None:
    """``WeightedLeastConnections(compat="nginx")``: picks and releases in any mix."""
    group = BackendGroup(Backend("10.0.0.1", 1000 + i, w) for i, w in enumerate(weights))
    sched = WeightedLeastConnections(group, compat="nginx")
    model = NginxPeers([NginxPeer(w) for w in weights])
    backends = list(group)
    for is_pick, i in ops:
        if is_pick:
            expected = model.get_least_conn_peer(_NOW)
            assert expected is not None
            assert sched.pick() == backends[expected]
        else:
            i %= len(weights)
            if model.peers[i].conns:
                model.free_peer(i, _NOW, failed=False)
            sched.release(backends[i])
        assert [sched.open_connections(b.key) for b in backends] == [
            p.conns for p in model.peers
        ]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"compat": "haproxy"}, "compat must be None or 'nginx', got 'haproxy'"),
        ({"compat": "nginx", "ledger": LocalLedger()}, "ledger=<LocalLedger"),
        ({"compat": "nginx", "slow_start": 30.0}, "slow_start=30.0"),
    ],
)
def test_compat_refusals(options: dict[str, Any], words: str) -> None:
    group = BackendGroup([Backend("10.0.0.1", 80)])
    with pytest.raises(ValueError, match=re.escape(words)):
        WeightedLeastConnections(group, **options)


def test_ledger_refuses_fractional_weights_unchanged() -> None:
    ledger = NginxLeastConnLedger()
    ledger.set_eligible([("a", 2 * RAMP_STEPS)])
    assert ledger.acquire() == "a"
    with pytest.raises(ValueError, match="b has 33/32"):
        ledger.set_eligible([("a", RAMP_STEPS), ("b", 33)])
    assert ledger.count("a") == 1
    assert ledger.current_weights() == {"a": 0}
    ledger._check()
