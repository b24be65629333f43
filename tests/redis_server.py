"""pytest fixtures for tests against a real ``redis-server`` they start and stop themselves.

``redis_server`` (module scope) is a :class:`~lbalgo.bench._redis_server.RedisServer` on a
free 127.0.0.1 port, persistence off, in a temporary directory; tests may ``stop()``,
``restart()``, ``pause()`` and ``resume()`` it. Tests using it skip with the reason when
``redis-server`` or redis-py is not installed. ``redis_url`` gives each test the URL after
making sure the server runs, and ``namespace`` a namespace of its own.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from lbalgo.bench._redis_server import RedisServer, find_redis_server

__all__ = ["namespace", "redis_server", "redis_url", "skip_without_redis"]


def skip_without_redis() -> None:
    """Skip the calling test when redis-server or redis-py is missing, saying which."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py is not installed (pip install 'lbalgo[redis]')")


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test module's own, stopped at the end of the module."""
    skip_without_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The server's URL, with the server running and answering (a test may have stopped,
    paused or restarted it)."""
    redis_server.resume()
    redis_server.start()
    return redis_server.url


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A ledger namespace unique to the test, so tests sharing a server never meet."""
    name = str(request.node.name)
    return "test-" + name.replace(" ", "_").replace("[", "-").replace("]", "")

