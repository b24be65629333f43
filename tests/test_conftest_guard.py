"""The CI guard in tests/conftest.py: with LBALGO_REQUIRE_SERVERS=1, a test that skips because
nginx, redis-server or redis-py is missing fails instead.

Runs pytest in a subprocess on a scratch directory holding a copy of tests/conftest.py and tests
that skip through the real helpers of tests/nginx_harness.py and tests/redis_server.py (their
server lookups patched to find nothing): in the call phase, and in the setup phase of the real
``nginx_harness`` and module-scoped ``redis_server`` fixtures. A skip for any other reason stays
a skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

SKIPPING = """
import importlib.util

import pytest

import nginx_harness as nginx_helpers
import redis_server as redis_helpers
from nginx_harness import nginx_harness  # the real fixtures
from redis_server import redis_server

_find_spec = importlib.util.find_spec


def _no_redis_py(name, *args, **kwargs):
    return None if name == "redis" else _find_spec(name, *args, **kwargs)


@pytest.fixture
def no_nginx(monkeypatch):
    monkeypatch.setattr(nginx_helpers, "find_nginx", lambda: None)


@pytest.fixture(scope="module")
def no_redis_server():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redis_helpers, "find_redis_server", lambda: None)
        yield


def test_nginx_missing(no_nginx):
    nginx_helpers.require_nginx()


def test_nginx_fixture_missing(no_nginx, nginx_harness):
    pass


def test_redis_server_missing(monkeypatch):
    monkeypatch.setattr(redis_helpers, "find_redis_server", lambda: None)
    redis_helpers.skip_without_redis()


def test_redis_py_missing(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", _no_redis_py)
    redis_helpers.skip_without_redis()


def test_redis_fixture_missing(no_redis_server, redis_server):
    pass


def test_other_skip():
    pytest.skip("needs os.fork")
"""


@pytest.fixture
def scratch(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    shutil.copy(TESTS / "conftest.py", pytester.path / "conftest.py")
    pytester.makepyfile(test_skipping=SKIPPING)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    return pytester


def test_without_the_flag_missing_servers_skip(
    scratch: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LBALGO_REQUIRE_SERVERS", raising=False)
    result = scratch.runpytest_subprocess("-p", "no:cacheprovider", "-rs", timeout=120)
    result.assert_outcomes(skipped=6)
    for reason in ("nginx is not installed", "redis-server is not installed", "redis-py"):
        assert reason in result.stdout.str()


def test_with_the_flag_missing_servers_fail(
    scratch: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LBALGO_REQUIRE_SERVERS", "1")
    result = scratch.runpytest_subprocess("-p", "no:cacheprovider", "-rfEs", timeout=120)
    # five fail (two of them in fixture setup, reported as errors); the unrelated skip stays
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 5, outcomes
    assert outcomes.get("skipped") == 1, outcomes
    assert result.stdout.str().count("LBALGO_REQUIRE_SERVERS=1 but the test skipped") >= 5
    result.stdout.fnmatch_lines(["*SKIPPED*needs os.fork*"])
