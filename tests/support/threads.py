"""Worker threads for the concurrency tests: every wait bounded, every error reported.

An exception raised in a thread is only printed, never fails the test by itself, and a thread
that hangs would hang the suite; :func:`run_threads` turns both into test failures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["run_threads"]


def run_threads(
    work: Callable[..., object], args: Iterable[tuple[object, ...]], *, timeout: float = 60.0
) -> None:
    """Run ``work(*a)`` in one thread for each tuple ``a`` of ``args``, all started before
    any is joined. Fails if a thread still runs ``timeout`` seconds after the start (for all
    threads together), and re-raises the first exception a thread raised."""
    errors: list[BaseException] = []

    def guarded(*arguments: object) -> None:
        try:
            work(*arguments)
        except BaseException as error:  # re-raised in the calling thread below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=a, daemon=True) for a in args]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, f"threads still running after {timeout} s: {stuck}"
    if errors:
        raise errors[0]
