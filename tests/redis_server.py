"""pytest fixtures for tests against a real ``redis-server`` they start and stop themselves.

``redis_server`` (module scope) is a :class:`~lbalgo.bench._redis_server.RedisServer` on a
free 127.0.0.1 port, persistence off, in a temporary directory; tests may ``stop()``,
``restart()``, ``pause()`` and ``resume()`` it. Tests using it skip with the reason when
``redis-server`` or redis-py is not installed. The fixture checks that the Redis answering on
the port is its own (another process may bind a free port first) and else tries another port.
``redis_url`` gives each test the URL after making sure the server runs, and ``namespace`` a
namespace of its own. ``redis_cluster`` (module scope) is a 3-master
:class:`~lbalgo.bench._redis_server.RedisCluster` built the same way (it also needs
``redis-cli``, from Debian's redis-tools).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Iterator

import pytest

from lbalgo.bench._redis_server import (
    RedisCluster,
    RedisServer,
    find_redis_cli,
    find_redis_server,
)

__all__ = [
    "namespace",
    "redis_cluster",
    "redis_server",
    "redis_url",
    "skip_without_cluster",
    "skip_without_redis",
]


def skip_without_redis() -> None:
    """Skip the calling test when redis-server or redis-py is missing, saying which."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py is not installed (pip install 'lbalgo[redis]')")


def skip_without_cluster() -> None:
    """Skip the calling test when a Redis Cluster cannot be built here, saying why."""
    skip_without_redis()
    if find_redis_cli() is None:
        pytest.skip("redis-cli is not installed (apt-get install redis-tools)")


_PORT_ATTEMPTS = 3  # free ports tried, in case another process binds one first


def _is_ours(server: RedisServer) -> bool:
    """Whether the Redis answering on the server's port is this one (same data directory):
    a port handed out as free can be bound by another process (another test run's Redis)
    before ours binds it, and that one answers PING just as well."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    try:
        answered = client.config_get("dir").get("dir")
    except redis.RedisError:
        return False
    finally:
        client.close()
    if answered is None:
        return False
    return os.path.realpath(answered) == os.path.realpath(server.directory)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test module's own, stopped at the end of the module."""
    skip_without_redis()
    for attempt in range(_PORT_ATTEMPTS):
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        try:
            server.start()
        except RuntimeError:
            if attempt == _PORT_ATTEMPTS - 1:
                raise
            continue  # it could not bind its port
        if _is_ours(server):
            break
        server.stop()
    else:
        raise RuntimeError(f"no free port for redis-server in {_PORT_ATTEMPTS} attempts")
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



@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster of this test module's own on loopback, stopped at the end."""
    skip_without_cluster()
    for attempt in range(_PORT_ATTEMPTS):
        cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.SubprocessError):
            cluster.stop()
            if attempt == _PORT_ATTEMPTS - 1:
                raise
            continue  # a node could not bind its port, or another process took one
        if all(_is_ours(node) for node in cluster.nodes):
            break
        cluster.stop()
    else:
        raise RuntimeError(f"no free ports for a Redis Cluster in {_PORT_ATTEMPTS} attempts")
    try:
        yield cluster
    finally:
        cluster.stop()
