"""Hypothesis strategies, invariant checks and reference models for property tests of code
built on lbalgo.

lbalgo's own suite uses exactly these, so a proxy that embeds a scheduler can property-test its
integration with the same generators, the same checks and the same plain models:

- :mod:`lbalgo.testing.strategies`: groups, backends, weights, client addresses in every
  spelling (needs ``hypothesis``, the ``dev`` extra);
- :mod:`lbalgo.testing.checks`: weights respected, ineligible never picked, minimal movement,
  internal invariants;
- :mod:`lbalgo.testing.reference`: nginx's smooth round robin loop, the O(n) least-connections
  scan, the exact ``Fraction`` ledger.

Only the strategies need hypothesis; they are imported when first used, so the checks and
the models (and the benchmarks that compare with them) work without it.

>>> from hypothesis import given
>>> from lbalgo import SmoothWeightedRoundRobin
>>> from lbalgo.testing import check_weights_respected, groups
>>> @given(groups(min_size=1, min_weight=1))
... def test_weights_respected(group):
...     check_weights_respected(SmoothWeightedRoundRobin(group))
>>> test_weights_respected()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lbalgo.testing.checks import (
    check_internals,
    check_minimal_movement,
    check_never_picks_ineligible,
    check_weights_respected,
)
from lbalgo.testing.reference import FractionLedger, NginxSmoothRoundRobin, ScanLeastConnections

if TYPE_CHECKING:
    from lbalgo.testing.strategies import (
        address_spellings,
        backends,
        client_addresses,
        groups,
        ipv4_addresses,
        ipv6_addresses,
        weights,
    )

__all__ = [
    "FractionLedger",
    "NginxSmoothRoundRobin",
    "ScanLeastConnections",
    "address_spellings",
    "backends",
    "check_internals",
    "check_minimal_movement",
    "check_never_picks_ineligible",
    "check_weights_respected",
    "client_addresses",
    "groups",
    "ipv4_addresses",
    "ipv6_addresses",
    "weights",
]

_STRATEGIES = frozenset(
    {
        "address_spellings",
        "backends",
        "client_addresses",
        "groups",
        "ipv4_addresses",
        "ipv6_addresses",
        "weights",
    }
)


def __getattr__(name: str) -> Any:
    # the strategies import hypothesis: only when one is asked for
    if name in _STRATEGIES:
        return getattr(importlib.import_module("lbalgo.testing.strategies"), name)
    raise AttributeError(f"module 'lbalgo.testing' has no attribute {name!r}")
