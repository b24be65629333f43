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
    "LbalgoError",
    "NoBackendAvailable",
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
    """An option outside its documented range: the message names the option and the value.

    >>> from lbalgo import Backend, BackendGroup, SmoothWeightedRoundRobin
    >>> from lbalgo.health import HealthChecker, tcp
    >>> sched = SmoothWeightedRoundRobin(BackendGroup([Backend("10.0.0.1", 80)]))
    >>> HealthChecker(sched, tcp(), interval=0.5)
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: interval must be a number of seconds from 1 to 50, got 0.5
    """


class HealthCheckFailed(LbalgoError):
    """A health probe's verdict "unhealthy", with the reason (``HTTP status 503``).

    The built-in checks of :mod:`lbalgo.health` raise it; a check of your own may raise it (or
    any exception, or return ``False``) too. The checker counts it as a failure and keeps its
    text as ``HealthStatus.last_error``; it never reaches the caller of the checker.
    """
