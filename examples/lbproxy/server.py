"""The proxy process: command line, listener, connection bound, reload, graceful stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import signal
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lbalgo import (
    Backend,
    BackendGroup,
    LbalgoError,
    Scheduler,
    SmoothWeightedRoundRobin,
    SourceIPHash,
    WeightedLeastConnections,
    health,
)
from lbalgo.health import HealthChecker

from .forward import ClientConnection, Limits, Proxy
from .framing import error_response
from .pool import Pool

log = logging.getLogger("lbproxy")

ALGORITHMS: dict[str, Callable[..., Scheduler]] = {
    "swrr": SmoothWeightedRoundRobin,
    "wlc": WeightedLeastConnections,
    "source-ip-hash": SourceIPHash,
}
BUSY = error_response(503, close=True)


def load_config(path: Path) -> BackendGroup:
    """The backends listed in a JSON or TOML file, as ``BackendGroup.from_config`` takes them.

    JSON: a list of entries, or ``{"backends": [...]}``; TOML: ``[[backends]]`` tables.
    Raises ``OSError`` or ``ValueError`` (``InvalidGroupError`` among them) naming the problem.
    """
    text = path.read_bytes()
    data: Any
    if path.suffix.lower() == ".toml":
        data = tomllib.loads(text.decode("utf-8"))
    else:
        data = json.loads(text)
    if isinstance(data, dict):
        if set(data) != {"backends"}:
            raise ValueError(f"{path}: expected only a 'backends' list, got keys {sorted(data)}")
        data = data["backends"]
    return BackendGroup.from_config(data)


def client_address(writer: asyncio.StreamWriter) -> str | None:
    """The client's IP from its TCP connection (the zone of a link-local address dropped)."""
    peer = writer.get_extra_info("peername")
    if not peer:
        return None
    try:
        return str(ipaddress.ip_address(str(peer[0]).split("%", 1)[0]))
    except ValueError:  # a Unix socket or another non-IP transport: no address to hash
        return None


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close after an error answer without losing it: closing a socket with unread input
    sends a reset, which can destroy the answer before the client reads it. So: end our side,
    then read and drop what the client still sends, for at most a second and 64 KiB (nginx's
    lingering close)."""
    with contextlib.suppress(OSError, RuntimeError, TimeoutError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(1.0):
            dropped = 0
            while dropped < 65536 and (data := await reader.read(65536)):
                dropped += len(data)


class Server:
    """Accepts clients (at most ``max_connections`` at once), reloads, stops gracefully."""

    def __init__(self, proxy: Proxy, *, max_connections: int, config: Path | None) -> None:
        self.proxy = proxy
        self.max_connections = max_connections
        self.config = config
        self.connections: dict[asyncio.Task[None], ClientConnection] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.connections) >= self.max_connections or self.proxy.stopping:
            # over the bound: a quick 503 costs less than a queue of idle sockets
            writer.write(BUSY)
            writer.close()
            return
        connection = ClientConnection(self.proxy, reader, writer, client_address(writer))
        self.connections[task] = connection
        try:
            await connection.serve()
        except asyncio.CancelledError:
            pass  # closed by a stopping proxy: the finally below is all that is left to do
        except Exception:  # a bug: log it with its traceback, keep serving the others
            log.exception("client %s: unexpected error", connection.client)
        finally:
            del self.connections[task]
            if connection.linger and not self.proxy.stopping:
                await linger(reader, writer)
            if connection.gone:
                writer.transport.abort()
            else:
                writer.close()

    def reload(self) -> None:
        """Re-read ``--config`` and apply it with ``update()``: state carries over by key, a
        backend set to weight 0 drains (no new requests; those in flight finish)."""
        if self.config is None:
            log.warning("SIGHUP: no --config file to reload")
            return
        try:
            group = load_config(self.config)
        except (OSError, ValueError) as error:
            log.error("reload of %s failed, keeping the current backends: %s", self.config, error)
            return
        try:
            self.proxy.scheduler.update(group)
        except LbalgoError as error:
            log.error("reload of %s refused, keeping the current backends: %s", self.config, error)
            return
        log.warning(
            "reloaded %s: %s",
            self.config,
            ", ".join(f"{b.key}={b.weight}" for b in group) or "no backends",
        )

    async def stop(self, grace: float) -> None:
        """Stop gracefully: idle kept-alive clients are closed now, requests in flight get
        ``grace`` seconds to finish (their responses carry ``Connection: close``), then the
        rest are cut."""
        self.proxy.stopping = True
        for task, connection in list(self.connections.items()):
            if connection.idle:
                task.cancel()
        if self.connections:
            await asyncio.wait(list(self.connections), timeout=grace)
        remaining = list(self.connections)
        for task in remaining:
            task.cancel()
        if remaining:
            log.warning("stop: cut %d connections still busy after %.1f s", len(remaining), grace)
            await asyncio.wait(remaining)


def build(args: argparse.Namespace, group: BackendGroup) -> tuple[Scheduler, HealthChecker | None]:
    """The scheduler and (with ``--health-check``) its health checker. Raises ``ValueError``
    (an :class:`~lbalgo.LbalgoError`) naming a bad option."""
    options: dict[str, Any] = {"max_fails": args.max_fails, "fail_timeout": args.fail_timeout}
    if args.compat:
        options["compat"] = args.compat
    try:
        scheduler = ALGORITHMS[args.algorithm](group, **options)
    except TypeError:  # an algorithm without that option
        raise ValueError(f"--compat {args.compat} does not apply to {args.algorithm}") from None
    if args.health_check is None:
        return scheduler, None
    if args.health_check == "tcp":
        check = health.tcp()
    else:  # "http:/path"
        check = health.http(args.health_check.removeprefix("http:"))
    checker = HealthChecker(
        scheduler,
        check,
        interval=args.health_interval,
        timeout=args.health_timeout,
        healthy_threshold=args.health_rise,
        unhealthy_threshold=args.health_fall,
    )
    return scheduler, checker


async def serve(
    args: argparse.Namespace, scheduler: Scheduler, checker: HealthChecker | None
) -> None:
    limits = Limits(
        connect=args.connect_timeout,
        read=args.read_timeout,
        head=args.header_timeout,
        body=args.body_timeout,
        idle=args.idle_timeout,
    )
    pool = Pool(args.upstream_keepalive, args.upstream_idle_timeout)
    proxy = Proxy(scheduler, limits, pool)
    server = Server(proxy, max_connections=args.max_connections, config=args.config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # handlers first: a signal sent as soon as the proxy says it listens must find them
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload)
    host, port = args.listen
    listener = await asyncio.start_server(server.handle, host, port, backlog=1024)
    bound = listener.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    # the first line on stdout says where we listen (port 0 picks a free one; tests read it)
    print(
        f"listening on http://{shown}:{bound[1]} "
        f"({args.algorithm} over {len(scheduler.group)} backends)",
        flush=True,
    )
    if checker is not None:
        await checker.start()  # it follows update(): reloaded backends are probed too
    sweeper = loop.create_task(sweep(pool))
    try:
        await stop.wait()
        log.warning("stopping: %d connections open", len(server.connections))
        listener.close()  # no new connections from here on
        await server.stop(args.shutdown_timeout)
    finally:
        sweeper.cancel()
        pool.close()
        if checker is not None:
            await checker.stop()


async def sweep(pool: Pool) -> None:
    """Close idle backend connections past their time, once a second."""
    while True:
        await asyncio.sleep(1.0)
        pool.sweep()


def parse_backend(spec: str) -> Backend:
    """``host:port`` or ``host:port=weight`` (IPv6 hosts in brackets) as a Backend."""
    address, _, weight_text = spec.partition("=")
    host, colon, port_text = address.rpartition(":")
    if not colon or not host or not port_text.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT[=WEIGHT], got {spec!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if weight_text and not weight_text.isdigit():
        raise argparse.ArgumentTypeError(f"weight must be an integer 0..100, got {spec!r}")
    try:
        return Backend(host, int(port_text), int(weight_text) if weight_text else 1)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{spec!r}: {error}") from None


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def parse_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def parse_listen(spec: str) -> tuple[str, int]:
    host, colon, port_text = spec.rpartition(":")
    if not colon or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {spec!r}")
    return host.strip("[]") or "127.0.0.1", int(port_text)


def parse_health_check(text: str) -> str:
    if text != "tcp" and not (text.startswith("http:/") and len(text) > 5):
        raise argparse.ArgumentTypeError(f"expected tcp or http:/PATH, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxy.py", description="An HTTP/1.1 reverse proxy that balances requests with lbalgo."
    )
    add = parser.add_argument
    add("--listen", type=parse_listen, default=("127.0.0.1", 8080), metavar="HOST:PORT")
    add("--algorithm", choices=sorted(ALGORITHMS), default="swrr")
    add(
        "--compat",
        choices=["nginx"],
        help="place clients exactly as nginx's 'hash $remote_addr consistent' (source-ip-hash)",
    )
    add(
        "--backend",
        type=parse_backend,
        action="append",
        default=[],
        metavar="HOST:PORT[=WEIGHT]",
        help="a backend (repeat for each); the weight defaults to 1",
    )
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help="backends from a JSON or TOML file (BackendGroup.from_config), re-read on SIGHUP",
    )
    add(
        "--health-check",
        type=parse_health_check,
        metavar="tcp|http:/PATH",
        help="active checks through lbalgo.health: a TCP connect, or an HTTP GET of PATH",
    )
    add("--health-interval", type=parse_seconds, default=5.0, metavar="SECONDS")
    add("--health-timeout", type=parse_seconds, default=3.0, metavar="SECONDS")
    add(
        "--health-rise",
        type=parse_count,
        default=3,
        metavar="N",
        help="passes in a row that bring a backend back (default 3)",
    )
    add(
        "--health-fall",
        type=parse_count,
        default=3,
        metavar="N",
        help="failures in a row that take a backend out (default 3)",
    )
    add("--max-fails", type=int, default=1, metavar="N", help="passive health (0: off)")
    add("--fail-timeout", type=parse_seconds, default=10.0, metavar="SECONDS")
    add("--connect-timeout", type=parse_seconds, default=2.0, metavar="SECONDS")
    add(
        "--read-timeout",
        type=parse_seconds,
        default=60.0,
        metavar="SECONDS",
        help="longest wait for a response head, and for each read or write (default 60)",
    )
    add(
        "--header-timeout",
        type=parse_seconds,
        default=10.0,
        metavar="SECONDS",
        help="a client's whole request head (default 10)",
    )
    add(
        "--body-timeout",
        type=parse_seconds,
        default=60.0,
        metavar="SECONDS",
        help="a client's whole request body, however it trickles (default 60)",
    )
    add(
        "--idle-timeout",
        type=parse_seconds,
        default=75.0,
        metavar="SECONDS",
        help="close a kept-alive client connection idle this long (default 75)",
    )
    add(
        "--shutdown-timeout",
        type=parse_seconds,
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in flight may take to finish (default 5)",
    )
    add(
        "--max-connections",
        type=parse_count,
        default=1024,
        metavar="N",
        help="client connections served at once; more are answered 503 (default 1024)",
    )
    add(
        "--upstream-keepalive",
        type=int,
        default=32,
        metavar="N",
        help="idle connections kept open per backend (0: one connection per request)",
    )
    add(
        "--upstream-idle-timeout",
        type=parse_seconds,
        default=2.0,
        metavar="SECONDS",
        help="close a kept backend connection idle this long; keep it below the "
        "backends' own keep-alive timeout (default 2)",
    )
    add("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    add("-v", "--verbose", action="store_true", help="log every refused request and retry")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.backend) == bool(args.config):
        parser.error("give either --backend (one or more) or --config FILE")
    if args.upstream_keepalive < 0:
        parser.error(f"--upstream-keepalive must be 0 or more, got {args.upstream_keepalive}")
    if args.compat and args.algorithm == "swrr":
        parser.error("--compat applies to source-ip-hash and wlc (swrr always picks as nginx)")
    try:
        group = load_config(args.config) if args.config else BackendGroup(args.backend)
        scheduler, checker = build(args, group)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    loop_factory = None
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop  # optional: about twice asyncio's throughput on small requests

            loop_factory = uvloop.new_event_loop
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(args, scheduler, checker))
    except OSError as error:  # the listen address is taken or not ours
        host, port = args.listen
        print(f"proxy: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
