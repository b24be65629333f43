"""The pure-Python core of :class:`lbalgo.Lease`: exactly-once release without a lock.

``lbalgo.Lease`` is a subclass of :class:`PyLease`, or of the C accelerator's
``lbalgo._hotpath.Lease`` where it is built (the same behaviour in C: a ``with`` block's
exit and a release are one C call each). Both stay importable side by side, which the
tests use to check that they agree.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Self

from lbalgo._counter import steps_left
from lbalgo._slot import Slot
from lbalgo.backend import Backend

__all__ = ["PyLease"]


class PyLease:
    """One picked backend for one request, released exactly once (see :class:`lbalgo.Lease`).

    Exactly once without a lock: the lease holds a list of one token, and the first
    ``pop()`` on it, a single C call, is the only one that gets the token. The release itself
    is counted right there, lock-free, on the token's counts, unless the scheduler must hear
    of it (passive health, a ledger, bounded loads): then the scheduler counts it. O(1).
    """

    __slots__ = ("_end", "_once", "backend")

    def __init__(self, backend: Backend, token: Slot, end: Callable[[Slot, bool], None]):
        """Schedulers build leases (``connection()``) on the pick's counts (``token``).
        ``end(token, failed)`` is called at most once, to count the release and react to it:
        by ``fail()`` with ``True``, and by ``release()`` or the block's exit with ``False``
        when ``token.notify`` says the scheduler must hear of it (otherwise the lease counts
        the release itself)."""
        self.backend: Backend = backend
        """The backend this lease holds a connection slot on."""
        self._once = [token]
        self._end = end

    @property
    def released(self) -> bool:
        """Whether the lease has ended (released or failed)."""
        return not self._once

    def release(self) -> None:
        """End the lease normally (idempotent)."""
        try:
            token = self._once.pop()
        except IndexError:
            return
        if token.notify:  # the scheduler counts it and hears of it
            self._end(token, False)
        # Tally.end inlined (see lbalgo._counter): counted if within the open count
        elif next(token.ends) + steps_left(token.picks) >= token.limit:
            token.void_excess()

    def fail(self) -> None:
        """Report a failure of this backend to passive health, then release (idempotent)."""
        try:
            token = self._once.pop()
        except IndexError:
            return
        self._end(token, True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # release() written out: this is the hot path of every `with sched.connection():`
        try:
            token = self._once.pop()
        except IndexError:
            return
        if token.notify:
            self._end(token, False)
        elif next(token.ends) + steps_left(token.picks) >= token.limit:
            token.void_excess()
