"""The exceptions lbalgo raises on purpose.

Every error derives from :class:`LbalgoError`, and each also derives from the built-in a caller
would naturally catch (``ValueError`` for bad input, ``LookupError`` for "nothing to pick"), so
code written against the standard library keeps working.
"""

from __future__ import annotations

__all__ = [
    "HealthCheckFailed",
    "InvalidBackendError",
    "InvalidGroupError",
    "InvalidOptionError",
    "InvalidTypeError",
    "LbalgoError",
    "LedgerUnavailable",
    "NoBackendAvailable",
    "UnknownBackendError",
]


class LbalgoError(Exception):
    """Base class of every exception lbalgo raises on purpose.

    >>> issubclass(NoBackendAvailable, LbalgoError)
    True
    """


class InvalidBackendError(LbalgoError, ValueError):
    """A backend field is invalid: the message names the field and the bad value.

    >>> from lbalgo import Backend
    >>> Backend("10.0.0.1", 80, weight=101)
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidBackendError: weight must be an integer from 0 to 100, got 101
    """


class InvalidGroupError(LbalgoError, ValueError):
    """A group is invalid (too many backends, duplicate keys, a config that does not parse).

    The message says which entry. Raised by ``BackendGroup``, ``BackendGroup.from_config``
    and by a scheduler given something other than a group, before anything changes.

    >>> from lbalgo import BackendGroup
    >>> BackendGroup.from_config([{"host": "10.0.0.1", "port": 80}, {"host": "10.0.0.2"}])
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidGroupError: entry 1: missing field 'port'
    """


class NoBackendAvailable(LbalgoError, LookupError):
    """Nothing is eligible for this pick: the group is empty, or every backend has weight 0,
    is marked down, is failing passive health checks, or was excluded.

    Also a ``LookupError``; the message says why each backend was not eligible, so an
    operator can tell "all down" from "all drained". Nothing is counted when it is raised.

    >>> from lbalgo import Backend, BackendGroup, WeightedLeastConnections
    >>> sched = WeightedLeastConnections(BackendGroup([Backend("10.0.0.1", 80, 0)]))
    >>> sched.pick()
    Traceback (most recent call last):
    ...
    lbalgo.errors.NoBackendAvailable: no backend available (10.0.0.1:80 weight 0)
    """


class InvalidOptionError(LbalgoError, ValueError):
    """A bad option or argument value (``slow_start=-1``, ``ttl=10**400``, ``tries=0``, a
    Redis URL that does not parse): the message names the field and the bad value.

    Raised by constructors before anything is built and by methods before anything changes.
    Also a ``ValueError``, as the standard library would raise.

    >>> from lbalgo import RedisLedger
    >>> try:
    ...     RedisLedger("redis://127.0.0.1:6379/0", namespace="web", lease_timeout=10**400)
    ... except InvalidOptionError as error:
    ...     print(isinstance(error, ValueError), error)
    True lease_timeout must be a number of seconds from 0.1 to 86400, got an integer of 401 digits
    """


class InvalidTypeError(LbalgoError, TypeError):
    """An argument of the wrong type where no value of that type could mean anything
    (``release("10.0.0.1:80")`` instead of a ``Backend``, ``exclude=5``, a ``keys``
    argument that is not an iterable of strings): the message names
    the argument and the value. Also a ``TypeError``.

    >>> from lbalgo import RedisLedger
    >>> ledger = RedisLedger("redis://127.0.0.1:6379/0", namespace="web")
    >>> try:
    ...     ledger.counts(5)
    ... except InvalidTypeError as error:
    ...     print(isinstance(error, TypeError), error)
    True keys must be an iterable of backend keys (str), got 5
    >>> ledger.close()
    """


class UnknownBackendError(LbalgoError, KeyError):
    """No backend of that key in the group (``mark_down``, ``group[key]``,
    ``group.without``...). Also a ``KeyError`` naming the key.

    >>> from lbalgo import Backend, BackendGroup
    >>> try:
    ...     BackendGroup([Backend("10.0.0.1", 80)]).without("10.0.0.9:80")
    ... except KeyError as error:
    ...     print(type(error).__name__, error)
    UnknownBackendError '10.0.0.9:80'
    """

    def __str__(self) -> str:
        # KeyError shows repr(key), which fails for an integer of over 4,300 digits
        from lbalgo._validate import shown  # a cycle at import time: _validate uses errors

        return shown(self.args[0]) if len(self.args) == 1 else super().__str__()


class LedgerUnavailable(LbalgoError, ConnectionError):
    """A shared ledger's store (Redis) cannot be reached: nothing was counted.

    Raised by ``pick``/``connection`` of a scheduler using a :class:`~lbalgo.RedisLedger`
    (and by ``RedisLedger.count``) while Redis is down, unreachable or not answering (on a
    Cluster: while the master of the namespace's slot is); the ledger recovers by itself
    once Redis answers again. Also a ``ConnectionError``.

    >>> issubclass(LedgerUnavailable, ConnectionError)
    True
    """


class HealthCheckFailed(LbalgoError):
    """A health probe's verdict "unhealthy", with the reason (``HTTP status 503``).

    The built-in checks of :mod:`lbalgo.health` raise it; a check of your own may raise it (or
    any exception, or return ``False``) too. The checker counts it as a failure and keeps its
    text as ``HealthStatus.last_error``; it never reaches the caller of the checker.
    """
