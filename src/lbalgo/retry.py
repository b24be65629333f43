"""Retry on another backend: leases on distinct backends, one per attempt.

nginx's ``proxy_next_upstream`` passes a request that failed on one server to the next one,
never twice to the same server, and counts each such failure towards ``max_fails``.
:func:`attempts` is that loop for a Python proxy: each lease it yields excludes every backend
already tried, and moving on from a lease still open reports it as failed.
"""

from __future__ import annotations

from collections.abc import Iterator

from lbalgo._options import check_scheduler, normalize_exclude
from lbalgo._validate import integer
from lbalgo.errors import NoBackendAvailable
from lbalgo.scheduler import Client, Exclude, Lease, Scheduler

__all__ = ["attempts"]


MAX_TRIES = 1_000_000  # more tries than backends simply end early; this bounds the argument

def attempts(
    scheduler: Scheduler,
    client: Client = None,
    *,
    tries: int = 3,
    exclude: Exclude = (),
) -> Iterator[Lease]:
    """Yield up to ``tries`` leases for one request, each on a backend not tried before.

    The recipe: try the lease's backend; on success, leave the loop (the lease is then
    yours: release it, or use it as a context manager, when the response is done); on a
    connect error or timeout call ``lease.fail()`` (or just ``continue``: a lease still open
    when the loop moves on is failed for you, as nginx counts a request passed to the next
    server as a failure of the first) and take the next one. Release a lease yourself
    before moving on when its failure should not count against the backend (nginx's
    ``http_404``).

    The first pick raises :class:`~lbalgo.NoBackendAvailable` when nothing is eligible; after
    that, the iteration simply ends when every eligible backend has been tried, so a
    ``for ... else`` sees "all attempts failed". ``exclude`` holds keys to skip from the
    start. Works with any :class:`~lbalgo.Scheduler`, including ``StickySessions`` (a retry
    moves the session to the backend that answers).

    Arguments are checked when ``attempts`` is called (:class:`~lbalgo.InvalidOptionError`,
    a ``ValueError``, naming ``tries`` (1 to 1,000,000); :class:`~lbalgo.InvalidTypeError`,
    a ``TypeError``, for a bad ``scheduler`` or ``exclude``), before any pick; ``client`` is
    the scheduler's to check, at the first pick. Each attempt is one pick of the scheduler,
    with an exclude set of the keys tried so far (O(attempts) to build).

    >>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
    >>> group = BackendGroup([Backend("10.0.0.1", 80), Backend("10.0.0.2", 80),
    ...                       Backend("10.0.0.3", 80)])
    >>> sched = SmoothWeightedRoundRobin(group, max_fails=1)
    >>> def send(backend):  # stands for the proxy's upstream call; 10.0.0.1 is dead
    ...     if backend.host == "10.0.0.1":
    ...         raise ConnectionRefusedError(backend.address)
    ...     return f"200 OK from {backend.key}"
    >>> for lease in attempts(sched, tries=3):
    ...     try:
    ...         answer = send(lease.backend)
    ...     except ConnectionError:
    ...         lease.fail()
    ...         continue
    ...     lease.release()
    ...     break
    ... else:
    ...     answer = "502 Bad Gateway"
    >>> answer
    '200 OK from 10.0.0.2:80'
    >>> sched.stats()["10.0.0.1:80"].available  # max_fails=1: suspended for fail_timeout
    False
    """
    check_scheduler(scheduler)
    integer("tries", tries, 1, MAX_TRIES)
    tried = set(normalize_exclude(exclude))
    return _attempts(scheduler, client, tries, tried)


def _attempts(scheduler: Scheduler, client: Client, tries: int, tried: set[str]) -> Iterator[Lease]:
    for attempt in range(tries):
        try:
            lease = scheduler.connection(client, exclude=tried)
        except NoBackendAvailable:
            if attempt == 0:
                raise
            return
        tried.add(lease.backend.key)
        # a caller that leaves the loop holding the lease keeps it (a streamed response):
        # only moving on to the next attempt ends it
        yield lease
        if not lease.released:
            lease.fail()
