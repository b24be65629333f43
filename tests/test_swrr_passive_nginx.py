"""SmoothWeightedRoundRobin with max_fails against the plain model of nginx's round robin
(lbalgo.testing.nginx): failures, suspensions, checks, trials and the effective weight that
climbs back one pick at a time, pick for pick, on nginx's whole-second clock."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from lbalgo import Backend, BackendGroup, Lease, SmoothWeightedRoundRobin
from lbalgo.testing.nginx import NginxPeer, NginxPeers
from support.clocks import FakeClock


class PassiveMachine(RuleBasedStateMachine):
    """Requests that succeed or fail (released at once or held), the clock moving in whole
    seconds; each pick must be nginx's."""

    @initialize(
        weights=st.lists(st.sampled_from([1, 2, 3, 5, 10, 100]), min_size=2, max_size=6),
        max_fails=st.integers(1, 4),
        fail_timeout=st.integers(1, 3),
    )
    def setup(self, weights: list[int], max_fails: int, fail_timeout: int) -> None:
        self.clock = FakeClock()
        self.clock.now = 1000.0
        group = BackendGroup(
            Backend("10.0.0.1", 9000 + i, w, name=f"b{i}") for i, w in enumerate(weights)
        )
        self.sched = SmoothWeightedRoundRobin(
            group, max_fails=max_fails, fail_timeout=fail_timeout, clock=self.clock
        )
        self.model = NginxPeers([NginxPeer(w, max_fails, fail_timeout) for w in weights])
        self.held: list[tuple[Lease, int]] = []

    def _pick(self) -> tuple[Lease, int] | None:
        now = int(self.clock.now)
        index = self.model.get_round_robin_peer(now)
        if index is None:
            return None
        lease = self.sched.connection()
        assert lease.backend.key == f"b{index}"
        return lease, index

    def _end(self, lease: Lease, index: int, failed: bool) -> None:
        self.model.free_peer(index, int(self.clock.now), failed=failed)
        if failed:
            lease.fail()
        else:
            lease.release()

    @rule(failed=st.booleans(), count=st.integers(1, 30))
    def requests(self, failed: bool, count: int) -> None:
        for _ in range(count):
            picked = self._pick()
            if picked is None:
                return
            # a failing run fails only on the first backend (a dead server), like a proxy sees
            self._end(*picked, failed=failed and picked[1] == 0)

    @rule()
    def hold(self) -> None:
        picked = self._pick()
        if picked is not None:
            self.held.append(picked)

    @rule(failed=st.booleans())
    def end_held(self, failed: bool) -> None:
        if self.held:
            self._end(*self.held.pop(0), failed=failed)

    @rule(seconds=st.integers(1, 4))
    def wait(self, seconds: int) -> None:
        self.clock.now += seconds

    @invariant()
    def same_state(self) -> None:
        for i, peer in enumerate(self.model.peers):
            assert self.sched.open_connections(f"b{i}") == peer.conns


TestPassive = PassiveMachine.TestCase


def test_replay_resumes_after_recovery() -> None:
    """Once every failure is cleared and every effective weight is back, picks are served
    from the O(1) replay again."""
    clock = FakeClock()
    group = BackendGroup(Backend("10.0.0.1", 9000 + i, w) for i, w in enumerate([5, 3, 1]))
    sched = SmoothWeightedRoundRobin(group, max_fails=2, fail_timeout=1, clock=clock)
    for _ in range(20):
        sched.pick()
    assert sched._epoch is not None
    first = group.backends[0]
    lease = sched.connection(exclude=[b.key for b in group.backends[1:]])
    assert lease.backend == first
    lease.fail()
    assert sched._epoch is None  # exact steps while its effective weight climbs back
    clock.now += 2.5
    for _ in range(40):
        sched.connection().release()  # the check, a success, then weight climbs back
    assert sched.stats()[first.key].available
    assert sched._epoch is not None
