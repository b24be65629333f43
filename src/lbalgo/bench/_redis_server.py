"""A throw-away ``redis-server`` on a loopback port, for the ledger tests and benchmark.

Both the test suite (``tests/redis_server.py``) and ``lbalgo.bench.ledger`` need a real Redis
they own: started in a temporary directory with persistence off, bound to 127.0.0.1 only,
stoppable and restartable on the same port mid-run (to play a Redis outage). Kept here, in the
package, so the benchmark can use it on a user's machine; it needs no redis-py (readiness is
checked with a raw ``PING``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisCluster", "RedisServer", "find_redis_cli", "find_redis_server"]

_START_TIMEOUT = 10.0  # seconds; a cold start on a loaded CI machine takes well under one


def find_redis_server() -> str | None:
    """The path of the ``redis-server`` executable (``$LBALGO_REDIS_SERVER`` first), or None."""
    explicit = os.environ.get("LBALGO_REDIS_SERVER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def find_redis_cli() -> str | None:
    """The path of ``redis-cli`` (Debian's ``redis-tools``), next to redis-server, or None."""
    server = find_redis_server()
    if server is not None:
        beside = Path(server).with_name("redis-cli")
        if os.access(beside, os.X_OK):
            return str(beside)
    return shutil.which("redis-cli")


def _free_port() -> int:
    # The kernel hands out an unused port; the tiny window before redis binds it is harmless on
    # a test machine, and a clash shows up as a start failure, not as a wrong result.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:<free port>``, data in ``directory``.

    ``start()`` waits until it answers ``PING``; ``stop()`` kills it (its data is lost: there
    is no persistence, like a cache node that restarts empty); ``restart()`` starts it again on
    the same port. ``pause()``/``resume()`` freeze it with SIGSTOP/SIGCONT (a hung server: the
    port accepts, nothing answers). Usable as a context manager.
    """

    def __init__(
        self,
        directory: Path,
        executable: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise FileNotFoundError("redis-server not found (install Debian's redis-server)")
        self.executable = found
        self.directory = Path(directory)
        self.extra_args = extra_args
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING (``RuntimeError`` after 10 s)."""
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "redis.log"
        args = [
            self.executable,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.directory),
            "--logfile", str(log),
            *self.extra_args,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")

    def stop(self) -> None:
        """Kill the server (no persistence: its data is gone) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.kill()  # SIGKILL ends a paused (SIGSTOPped) server too
        process.wait(timeout=_START_TIMEOUT)

    def restart(self) -> None:
        """Stop the server, then start an empty one on the same port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted but never answered."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisCluster:
    """A Redis Cluster of ``masters`` (3 by default, no replicas) on loopback ports, for the
    cluster tests: each node a :class:`RedisServer` with ``--cluster-enabled yes`` in its own
    directory, joined by ``redis-cli --cluster create``; ``start()`` waits until every node
    reports ``cluster_state:ok``. A node stopped with ``stop_node`` loses its data (no
    persistence) but keeps its ``nodes.conf``, so ``start_node`` brings it back into the
    cluster with its slots, empty: a master that restarted without persistence.
    """

    def __init__(self, directory: Path, masters: int = 3) -> None:
        cli = find_redis_cli()
        if cli is None:
            raise FileNotFoundError("redis-cli not found (install Debian's redis-tools)")
        self.cli = cli
        self.directory = Path(directory)
        self.nodes = [
            RedisServer(self.directory / f"node{index}", extra_args=self._node_args())
            for index in range(masters)
        ]

    @staticmethod
    def _node_args() -> tuple[str, ...]:
        return (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            # a stopped master is noticed in a second; the others keep serving
            "--cluster-node-timeout", "1000",
            "--cluster-require-full-coverage", "no",
            # the bus port is a free port of its own, not port + 10000 (which may be taken,
            # or above 65535 for a high free port); needs Redis 7
            "--cluster-port", str(_free_port()),
        )  # fmt: skip

    @property
    def url(self) -> str:
        """The URL of the first node (any node seeds a cluster client)."""
        return self.nodes[0].url

    def start(self) -> None:
        """Start every node, create the cluster, wait until it serves every slot."""
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` (``RuntimeError``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._state(node) == "ok" for node in self.nodes if node.running):
                return
            time.sleep(0.1)
        raise RuntimeError(f"Redis Cluster not ok after {timeout} s")

    def _state(self, node: RedisServer) -> str:
        out = subprocess.run(
            [self.cli, "-p", str(node.port), "cluster", "info"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        for line in out.stdout.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return "unknown"

    def node_for(self, key: str) -> RedisServer:
        """The running node that serves ``key``'s hash slot (``LookupError`` if none)."""
        running = [node for node in self.nodes if node.running]
        out = subprocess.run(
            [self.cli, "-p", str(running[0].port), "cluster", "keyslot", key],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        slot = int(out.stdout.strip())
        for node in running:
            if self._owns(node, slot):
                return node
        raise LookupError(f"no running node serves slot {slot}")

    def _owns(self, node: RedisServer, slot: int) -> bool:
        out = subprocess.run(
            [self.cli, "-p", str(node.port), "cluster", "nodes"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        for line in out.stdout.splitlines():
            fields = line.split()
            if "myself" not in fields[2]:
                continue
            for part in fields[8:]:
                low, _, high = part.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    return True
        return False

    def stop(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
