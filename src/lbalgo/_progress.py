"""Progress of long work on stderr, with its rate and an estimate of the time left.

One implementation for the simulator (units: requests) and the benchmark modules (units: timed
samples). On a terminal it is one line redrawn in place (at most ten times a second); on a pipe
or a file, a plain line at each tenth of the work, so a log shows that the run is alive
without filling up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "duration"]


def duration(seconds: float) -> str:
    """A short human duration: ``"42 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``.

    >>> duration(4.2), duration(185), duration(3725)
    ('4 s', '3 min 05 s', '1 h 02 min')
    """
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


class Progress:
    """Report ``advance(n)`` calls towards ``total`` units on ``stream``.

    ``total=None`` means the amount is not known in advance: the count and the rate are shown,
    without a bar or an estimate. A known total that turns out too small (an estimate) stops
    the bar at 99% rather than running past it. Shown only when ``enabled`` and the total is
    at least ``show_from`` (a short run needs no progress); every call is O(1).

    >>> import io
    >>> out = io.StringIO()
    >>> p = Progress("simulating", 1000, "requests", out, clock=iter(range(100)).__next__)
    >>> p.advance(500)
    >>> print(out.getvalue(), end="")
    simulating: 500 of 1,000 requests (50%), 500 requests/s, about 1 s left
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str,
        stream: TextIO,
        *,
        enabled: bool = True,
        show_from: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream
        self.done = 0
        self.tty = stream.isatty()
        self.enabled = enabled and (total is None or total >= show_from)
        self._clock = clock
        self._started = clock()
        self._last_draw = -1.0
        self._last_tenth = 0

    def advance(self, count: int = 1) -> None:
        """``count`` more units are done."""
        if not self.enabled:
            return
        self.done += count
        now = self._clock()
        if self.tty:
            if now - self._last_draw >= 0.1 or self.done == self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(now).ljust(78))
                self.stream.flush()
        else:
            tenth = 10 * self.done // self.total if self.total else self.done // 1000
            if tenth > self._last_tenth:
                self._last_tenth = tenth
                print(f"{self.label}: {self._line(now, bar=False)}", file=self.stream, flush=True)

    def close(self, summary: str | None = None) -> None:
        """End the live line (on a terminal) with the count and time taken; print
        ``summary`` instead, if given, on a terminal and on a pipe alike."""
        if not self.enabled:
            return
        took = duration(self._clock() - self._started)
        if self.tty:
            line = summary or f"{self.label}: {self.done:,} {self.unit} in {took}"
            self.stream.write("\r" + line.ljust(78) + "\n")
            self.stream.flush()
        elif summary:
            print(summary, file=self.stream, flush=True)

    def _line(self, now: float, *, bar: bool = True) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{rate:,.0f} {self.unit}/s"
        if not self.total:
            return f"{self.done:,} {self.unit}, {text}, {duration(elapsed)} so far"
        share = min(self.done / self.total, 0.99 if self.done > self.total else 1.0)
        left = max(self.total - self.done, 0) / rate if rate else 0.0
        percent = int(100 * share)
        counted = f"{self.done:,} of {self.total:,} {self.unit} ({percent}%)"
        line = f"{counted}, {text}, about {duration(left)} left"
        if bar:
            filled = "#" * (percent // 4)
            return f"{self.label} [{filled:<25}] {line}"
        return line
