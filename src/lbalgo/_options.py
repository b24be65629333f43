"""What every scheduler accepts besides its group: the shared options (slow start, passive
health, clock) and the ``exclude`` set of a retry. Errors name the field and the value, and
are :class:`~lbalgo.InvalidOptionError` (a ``ValueError``) or, for a value of a type that
cannot be meant, :class:`~lbalgo.InvalidTypeError` (a ``TypeError``)."""

from __future__ import annotations

from collections.abc import Iterable, Sized
from itertools import islice
from weakref import WeakSet

from lbalgo._validate import integer, seconds, shown
from lbalgo.backend import MAX_BACKENDS, Backend, BackendGroup
from lbalgo.errors import InvalidGroupError, InvalidOptionError, InvalidTypeError
from lbalgo.scheduler import Clock, Exclude, Scheduler

__all__ = [
    "MAX_EXCLUDE",
    "MAX_FAILS",
    "check_clock",
    "check_group",
    "check_options",
    "check_release",
    "check_scheduler",
    "normalize_exclude",
]

MAX_EXCLUDE = 4 * MAX_BACKENDS
"""The most keys one ``exclude`` may hold (an iterable is read no further)."""

_SIZED = (list, tuple, set, frozenset)

MAX_FAILS = 1_000_000
"""The largest ``max_fails`` (nginx's own is unbounded; a larger one would never trip)."""


_SCHEDULER_TYPES: WeakSet[type] = WeakSet()


def check_scheduler(scheduler: object) -> None:
    """:class:`~lbalgo.InvalidTypeError` naming the value unless ``scheduler`` implements
    :class:`~lbalgo.Scheduler`.

    The runtime protocol check walks every member (about 17 us, more than a whole request's
    pick and release), so a type that passed once is remembered: ``attempts`` and the httpx
    transports check on every request.
    """
    if type(scheduler) in _SCHEDULER_TYPES:
        return
    if not isinstance(scheduler, Scheduler):
        raise InvalidTypeError(f"scheduler must implement lbalgo.Scheduler, got {shown(scheduler)}")
    _SCHEDULER_TYPES.add(type(scheduler))


def check_options(slow_start: float, max_fails: int, fail_timeout: float, clock: Clock) -> None:
    """Check the options every scheduler takes: :class:`~lbalgo.InvalidOptionError`
    naming the field and value (numbers of any size and type, compared exactly)."""
    seconds("slow_start", slow_start)
    integer("max_fails", max_fails, 0, MAX_FAILS)
    seconds("fail_timeout", fail_timeout, above_low=True)
    check_clock(clock)


def check_group(group: object) -> None:
    """A scheduler takes a :class:`~lbalgo.BackendGroup`: ``InvalidGroupError`` naming
    anything else."""
    if not isinstance(group, BackendGroup):
        raise InvalidGroupError(f"group must be a BackendGroup, got {shown(group)}")


def check_release(backend: object, failed: object) -> tuple[Backend, bool]:
    """``release(backend, failed=...)``'s arguments, checked: ``InvalidTypeError`` naming a
    value that is not a ``Backend`` or a ``bool``."""
    if not isinstance(backend, Backend):
        raise InvalidTypeError(f"release expects a Backend, got {shown(backend)}")
    if type(failed) is not bool:
        raise InvalidTypeError(f"failed must be a bool, got {shown(failed)}")
    return backend, failed


def check_clock(clock: object) -> None:
    """A clock is a callable returning seconds: ``InvalidOptionError`` naming anything else."""
    if not callable(clock):
        raise InvalidOptionError(f"clock must be a callable returning seconds, got {shown(clock)}")


def normalize_exclude(exclude: Exclude) -> frozenset[str]:
    """The keys in ``exclude`` as a frozenset (a ``Backend`` stands for its key), O(k).

    A lone string is refused (:class:`~lbalgo.InvalidTypeError`): iterating it would
    exclude single characters. At most :data:`MAX_EXCLUDE` keys (an endless iterable is read
    no further): more is an :class:`~lbalgo.InvalidOptionError`.

    >>> sorted(normalize_exclude(["10.0.0.1:80", Backend("10.0.0.2", 80)]))
    ['10.0.0.1:80', '10.0.0.2:80']
    """
    if type(exclude) in _SIZED:  # the usual cases, without the slower ABC checks
        if len(exclude) > MAX_EXCLUDE:  # type: ignore[arg-type]
            raise InvalidOptionError(
                f"exclude holds at most {MAX_EXCLUDE} keys, got {len(exclude)}"  # type: ignore[arg-type]
            )
        items: Iterable[object] = exclude
    elif isinstance(exclude, (str, bytes)) or not isinstance(exclude, Iterable):
        raise InvalidTypeError(
            f"exclude must be a collection of backend keys, got {shown(exclude)}"
        )
    elif isinstance(exclude, Sized) and len(exclude) > MAX_EXCLUDE:
        raise InvalidOptionError(f"exclude holds at most {MAX_EXCLUDE} keys, got {len(exclude)}")
    else:
        items = islice(exclude, MAX_EXCLUDE + 1)
    keys = set()
    count = 0
    for item in items:
        count += 1
        if isinstance(item, Backend):
            keys.add(item.key)
        elif isinstance(item, str):
            keys.add(item)
        else:
            raise InvalidTypeError(f"exclude must hold backend keys (str), got {shown(item)}")
    if count > MAX_EXCLUDE:
        raise InvalidOptionError(f"exclude holds at most {MAX_EXCLUDE} keys, got more")
    return frozenset(keys)
