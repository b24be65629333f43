"""Test-wide settings: a deterministic hypothesis profile, so CI runs are repeatable; the CI
guard that turns a missing nginx or redis-server into a failure; a fixture for benchmark
smoke runs."""

from __future__ import annotations

import gc
import os
from collections.abc import Generator, Iterator

import pluggy
import pytest
from hypothesis import HealthCheck, settings

from lbalgo._base import BaseScheduler
from support.clocks import FakeClock
from support.schedulers import ALL, RAMPED, load

# derandomize: every run draws the same examples (CI must not flake on a rare draw);
# deadline off: shared CI machines stall at random, which says nothing about the code.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=300)
# the second pass of tests/test_pure_python.py: the same tests over the pure-Python fallback of
# the C accelerator, fewer examples each (the main run draws the full count over the C code)
settings.register_profile("pure", parent=settings.get_profile("ci"), max_examples=25)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# CI installs nginx and redis-server and sets LBALGO_REQUIRE_SERVERS=1: there, a differential or
# ledger test that skips for want of its server is a failure, not a quiet pass. The skip reasons
# of tests/nginx_harness.py and tests/redis_server.py all name their server (checked by
# tests/test_conftest_guard.py).
_REQUIRE_SERVERS = os.environ.get("LBALGO_REQUIRE_SERVERS") == "1"
_SERVER_WORDS = ("nginx", "redis")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if _REQUIRE_SERVERS and report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr).lower()
        if any(word in reason for word in _SERVER_WORDS):
            report.outcome = "failed"
            report.longrepr = f"LBALGO_REQUIRE_SERVERS=1 but the test skipped: {report.longrepr}"


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """Freeze the objects the test process already holds (``gc.freeze``) for one test.

    The benchmark code calls ``gc.collect()`` before every timed sample, hundreds of times in a
    smoke run; in the test process each collection walks everything the suite has built so
    far, which made a 1 s smoke run take 10-20 s. Frozen objects are skipped by the collector,
    so the benchmark runs as it does in a fresh process; nothing it executes changes.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# -- fixtures over every scheduler class (tests/support/schedulers.py) ---------------------------


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


@pytest.fixture(params=RAMPED, ids=[name for _, name in RAMPED])
def ramped(request: pytest.FixtureRequest) -> type[BaseScheduler]:
    """Each scheduler class that takes ``slow_start``."""
    return load(request.param)


@pytest.fixture(params=ALL, ids=[name for _, name in ALL])
def any_cls(request: pytest.FixtureRequest) -> type[BaseScheduler]:
    """Each scheduler class."""
    return load(request.param)
