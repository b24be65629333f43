"""Benchmark: examples/proxy.py next to HAProxy and nginx, over the same loopback backends.

    .venv/bin/python benchmarks/proxy.py                       # writes docs/proxy-benchmark.md
    .venv/bin/python benchmarks/proxy.py --duration 2 --rounds 1 --markdown /tmp/x.md

Five backends with weights 5, 2, 1, 1, 1 (one nginx process with five ``server`` blocks, each
answering a 2-byte body and logging its requests to its own file, so the split is counted at
the backends). Contenders, each with one worker, smooth weighted round robin and kept-alive
backend connections (the configurations are written out below):

- lbalgo's example proxy on uvloop, and on asyncio's own loop;
- HAProxy (``balance roundrobin``, ``http-reuse safe``, ``nbthread 1``), if installed;
- nginx (``upstream`` round robin, ``keepalive 32``, ``worker_processes 1``), if installed.

The load generator is wrk (``--latency``) when installed, else a bounded Python client. Each
contender runs at concurrency 1 and 50 for ``--duration`` seconds, in ``--rounds`` rounds that
interleave the contenders (the machine is shared and noisy: side by side is what counts). Per
contender and concurrency: the median requests/s over the rounds with that run's p50/p99, the
errors (non-2xx and socket errors) summed over all runs, the CPU time the proxy process used
per request (from /proc: less sensitive to a busy machine than requests/s), and the split
over the backends against the weights.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROXY = ROOT / "examples" / "proxy.py"
WEIGHTS = (5, 2, 1, 1, 1)
NAMES = "abcde"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (all their threads), from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


@dataclass
class Backends:
    """Five nginx ``server`` blocks (one worker), each logging its requests to its own file."""

    workdir: Path
    ports: list[int] = field(default_factory=list)

    def __enter__(self) -> Backends:
        self.ports = [free_port() for _ in WEIGHTS]
        servers = "".join(
            f"  server {{ listen 127.0.0.1:{port}; access_log {self.workdir}/{name}.log n;"
            f' location / {{ return 200 "{name}\\n"; }} }}\n'
            for name, port in zip(NAMES, self.ports, strict=True)
        )
        conf = self.workdir / "backends.conf"
        conf.write_text(
            f"worker_processes 1; pid {self.workdir}/backends.pid; daemon off;\n"
            f"error_log {self.workdir}/backends.err;\n"
            "events { worker_connections 8192; }\n"
            "http { log_format n '.'; keepalive_requests 1000000;\n" + servers + "}\n"
        )
        self.process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(self.workdir)])
        for port in self.ports:
            wait_listening(port)
        return self

    def counts(self) -> list[int]:
        return [len((self.workdir / f"{name}.log").read_bytes().splitlines()) for name in NAMES]

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


@dataclass
class Contender:
    name: str
    port: int
    command: list[str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(self.port)

    def pids(self) -> list[int]:
        """The proxy's process and its children (nginx's worker)."""
        assert self.process is not None
        children = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout.split()
        return [self.process.pid, *map(int, children)]

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def contenders(
    workdir: Path, backends: Backends, baseline: Path | None = None
) -> Iterator[Contender]:
    pairs = list(zip(backends.ports, WEIGHTS, strict=True))
    if baseline is not None:  # another version of the example, e.g. before a change
        port = free_port()
        command = [
            sys.executable,
            str(baseline),
            "--listen",
            f"127.0.0.1:{port}",
            "--algorithm",
            "swrr",
            *(f"--backend=127.0.0.1:{p}={w}" for p, w in pairs),
        ]
        yield Contender(f"baseline: {baseline.name}", port, command)
    for loop in ("uvloop", "asyncio"):
        port = free_port()
        command = [
            sys.executable,
            str(PROXY),
            "--listen",
            f"127.0.0.1:{port}",
            "--algorithm",
            "swrr",
            *(f"--backend=127.0.0.1:{p}={w}" for p, w in pairs),
        ]
        if loop == "asyncio":
            command.append("--no-uvloop")
        yield Contender(f"lbalgo example proxy ({loop})", port, command)
    if shutil.which("haproxy"):
        port = free_port()
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(
            "global\n  maxconn 8192\n  nbthread 1\n"
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n"
            "  timeout server 60s\n  http-reuse safe\n"
            f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
            "backend b\n  balance roundrobin\n"
            + "".join(f"  server s{p} 127.0.0.1:{p} weight {w}\n" for p, w in pairs)
        )
        yield Contender("HAProxy", port, ["haproxy", "-f", str(cfg), "-db"])
    if shutil.which("nginx"):
        port = free_port()
        conf = workdir / "proxy-nginx.conf"
        conf.write_text(
            f"worker_processes 1; pid {workdir}/proxy-nginx.pid; daemon off;\n"
            f"error_log {workdir}/proxy-nginx.err;\n"
            "events { worker_connections 8192; }\n"
            "http { access_log off; keepalive_requests 1000000;\n"
            "  upstream b {\n"
            + "".join(f"    server 127.0.0.1:{p} weight={w};\n" for p, w in pairs)
            + "    keepalive 32;\n  }\n"
            f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b;"
            ' proxy_http_version 1.1; proxy_set_header Connection ""; } }\n}\n'
        )
        yield Contender("nginx", port, ["nginx", "-c", str(conf), "-p", str(workdir)])


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us: float  # proxy CPU time per request, microseconds


def _ms(text: str) -> float:
    """A wrk duration ("812.00us", "3.21ms", "1.02s", "1.50m") in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
    return float(match.group(1)) * scale[match.group(2)]


def wrk(port: int, connections: int, duration: float) -> tuple[float, float, float, int, int]:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(min(2, connections)),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(duration))}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    (Path(tempfile.gettempdir()) / "proxy-benchmark-wrk.txt").write_text(out)  # for a failure
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"(?m)^\s+50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"(?m)^\s+99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(map(int, match.groups()))
    return rps, p50, p99, requests, errors


async def _python_load(port: int, connections: int, duration: float) -> tuple[list[float], int]:
    """A bounded keep-alive client: ``connections`` loops of GETs for ``duration`` seconds."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + duration

    async def one() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return latencies, errors


def python_load(
    port: int, connections: int, duration: float
) -> tuple[float, float, float, int, int]:
    latencies, errors = asyncio.run(_python_load(port, connections, duration))
    latencies.sort()
    n = len(latencies)
    pick = lambda q: latencies[min(n - 1, int(q * n))] * 1000 if n else 0.0  # noqa: E731
    return n / duration, pick(0.5), pick(0.99), n, errors


def measure(c: Contender, connections: int, duration: float, generator: str) -> Run:
    load = wrk if generator == "wrk" else python_load
    pids = c.pids()
    before = cpu_seconds(pids)
    rps, p50, p99, requests, errors = load(c.port, connections, duration)
    cpu = cpu_seconds(pids) - before
    return Run(rps, p50, p99, requests, errors, cpu / max(requests, 1) * 1e6)


def share_text(counts: list[int]) -> str:
    total = sum(counts) or 1
    return " / ".join(f"{100 * c / total:.1f}" for c in counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,50", help="comma-separated concurrencies")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "proxy-benchmark.md")
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator (auto: wrk when installed, else a bounded Python client)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another copy of examples/proxy.py to run side by side (e.g. an older version)",
    )
    args = parser.parse_args()
    if not shutil.which("nginx"):
        print("benchmarks/proxy.py needs nginx for its backends (apt-get install nginx-light)")
        return 1
    levels = [int(c) for c in args.connections.split(",")]
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, Backends(Path(tmp)) as backends:
        workdir = Path(tmp)
        runs: dict[tuple[str, int], list[Run]] = {}
        split: dict[str, list[int]] = {}
        all_contenders = list(contenders(workdir, backends, args.baseline))
        for c in all_contenders:
            c.start()
        try:
            for round_ in range(args.rounds):
                for level in levels:
                    for c in all_contenders:
                        before = backends.counts()
                        run = measure(c, level, args.duration, generator)
                        after = backends.counts()
                        runs.setdefault((c.name, level), []).append(run)
                        got = split.setdefault(c.name, [0] * len(WEIGHTS))
                        for i, (a, b) in enumerate(zip(after, before, strict=True)):
                            got[i] += a - b
                        print(
                            f"round {round_ + 1} c={level} {c.name}: {run.rps:.0f} req/s, "
                            f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, "
                            f"{run.errors} errors, {run.cpu_us:.0f} us CPU/request",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            for c in all_contenders:
                c.stop()
    load_after = os.getloadavg()
    lines = [
        "# Proxy benchmark",
        "",
        "Generated by `benchmarks/proxy.py` (rerun it to refresh; do not edit by hand). The "
        "method is in the script's docstring: five loopback nginx backends with weights "
        f"{', '.join(map(str, WEIGHTS))}, every contender with one worker, smooth weighted round "
        f"robin and kept-alive backend connections; "
        f"{'wrk' if generator == 'wrk' else 'a bounded Python client'} "
        f"for {args.duration:g} s per run, {args.rounds} interleaved rounds, median shown.",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; load average {load_before[0]:.1f} before and "
        f"{load_after[0]:.1f} after (other work was running: compare rows, not absolute "
        "figures). CPU/request is the proxy process's own CPU time per request.",
        "",
        "| proxy | connections | req/s | p50 ms | p99 ms | errors | CPU µs/request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in levels:
        for c in all_contenders:
            rs = runs[(c.name, level)]
            median = sorted(rs, key=lambda r: r.rps)[len(rs) // 2]
            cpu = statistics.median(r.cpu_us for r in rs)
            lines.append(
                f"| {c.name} | {level} | {median.rps:,.0f} | {median.p50_ms:.2f} | "
                f"{median.p99_ms:.2f} | {sum(r.errors for r in rs)} | {cpu:,.0f} |"
            )
    total_weight = sum(WEIGHTS)
    lines += [
        "",
        "Split over the backends (all runs), percent, against the weights "
        f"({' / '.join(f'{100 * w / total_weight:.1f}' for w in WEIGHTS)}):",
        "",
        "| proxy | requests | a / b / c / d / e (%) | largest deviation (points) |",
        "| --- | ---: | --- | ---: |",
    ]
    for c in all_contenders:
        counts = split[c.name]
        total = sum(counts) or 1
        deviation = max(
            abs(100 * n / total - 100 * w / total_weight)
            for n, w in zip(counts, WEIGHTS, strict=True)
        )
        lines.append(f"| {c.name} | {sum(counts):,} | {share_text(counts)} | {deviation:.2f} |")
    args.markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
