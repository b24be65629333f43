"""The one place for checking numbers, durations and bounded inputs, and for showing a bad
value in an error message.

Every check raises the typed error it is given (an :class:`~lbalgo.LbalgoError` that is also a
``ValueError`` or ``TypeError``) with one message format, ``"<field> must be <rule>, got
<value>"``, and the value is shown safely whatever it is: an integer of ten thousand digits
(``str()`` of one refuses past 4,300 digits), a string of a million characters or an object
whose ``repr`` raises still give a short message, so the typed error always comes.
Comparisons are exact (an ``int`` is never converted to ``float`` before it is known to be in
range), so ``10**400`` is refused instead of raising ``OverflowError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import islice
from typing import TypeVar

from lbalgo.errors import InvalidOptionError, LbalgoError

__all__ = ["MAX_SECONDS", "at_most", "integer", "is_collection", "number", "seconds", "shown"]

MAX_SECONDS = 1e9
"""The longest duration any option takes (about 31 years): beyond it a value is a mistake."""

_SHOWN_CHARS = 80  # a longer string or repr is cut to this many characters in messages
_BIG_INT_BITS = 200  # integers above this size are shown by their number of digits
_LOG10_2 = math.log10(2)

T = TypeVar("T")


def shown(value: object) -> str:
    """``repr(value)`` for a message, short and never raising.

    >>> shown(101), shown("web"), shown(10**400)
    ('101', "'web'", 'an integer of 401 digits')
    >>> shown("x" * 1000)
    "'xxxxxxxx...xxxx'... (1000 characters)"
    """
    if isinstance(value, int) and value.bit_length() > _BIG_INT_BITS:
        magnitude = abs(value)
        digits = math.floor(magnitude.bit_length() * _LOG10_2) + 1
        if magnitude < 10 ** (digits - 1):  # the estimate is exact or one too many
            digits -= 1
        sign = "a negative" if value < 0 else "an"
        return f"{sign} integer of {digits} digits"
    if isinstance(value, (str, bytes)) and len(value) > _SHOWN_CHARS:
        return f"{value[:_SHOWN_CHARS]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except Exception:  # a user's object whose repr is broken must not hide the real error
        return f"a {type(value).__name__} object"
    if len(text) > 3 * _SHOWN_CHARS:
        return f"{text[: 3 * _SHOWN_CHARS]}... ({type(value).__name__})"
    return text


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def integer(
    field: str,
    value: object,
    low: int,
    high: int | None = None,
    *,
    error: type[LbalgoError] = InvalidOptionError,
) -> int:
    """``value`` if it is an ``int`` (never a ``bool``) from ``low`` to ``high``; else
    ``error`` naming the field and the value. O(1).

    >>> integer("tries", 3, 1)
    3
    >>> integer("tries", True, 1)
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: tries must be an integer >= 1, got True
    """
    # bool is an int subclass, but tries=True is a mistake, not a count of 1
    if type(value) is int and low <= value and (high is None or value <= high):
        return value
    rule = f">= {low}" if high is None else f"from {low} to {high}"
    raise error(f"{field} must be an integer {rule}, got {shown(value)}")


def number(
    field: str,
    value: object,
    low: float,
    high: float,
    *,
    above_low: bool = False,
    unit: str = "",
    error: type[LbalgoError] = InvalidOptionError,
) -> float:
    """``value`` as a float if it is an ``int`` or ``float`` (never a ``bool``) from ``low``
    (excluded when ``above_low``) to ``high``; else ``error`` naming the field and the
    value. NaN, infinities and integers of any size are refused, never converted. O(1).

    >>> number("balance_factor", 1.25, 1, 100, above_low=True)
    1.25
    >>> number("balance_factor", float("nan"), 1, 100, above_low=True)
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: balance_factor must be a number above 1 and at most 100,
    got nan
    """
    # int-float comparisons are exact in Python: no conversion, no OverflowError
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (low < value if above_low else low <= value)
        and value <= high
    ):
        return float(value)
    if above_low:
        rule = f"above {_number(low)} and at most {_number(high)}"
    else:
        rule = f"from {_number(low)} to {_number(high)}"
    raise error(f"{field} must be a number{unit} {rule}, got {shown(value)}")


def seconds(
    field: str,
    value: object,
    low: float = 0.0,
    high: float = MAX_SECONDS,
    *,
    above_low: bool = False,
    error: type[LbalgoError] = InvalidOptionError,
) -> float:
    """``value`` as a float if it is an ``int`` or ``float`` (never a ``bool``) from ``low``
    (excluded when ``above_low``) to ``high`` seconds; else ``error`` naming the field and the
    value. NaN, infinities and integers of any size are refused, never converted. O(1).

    >>> seconds("ttl", 30, above_low=True)
    30.0
    >>> seconds("ttl", 10**400, above_low=True)
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: ttl must be a number of seconds above 0 and at most ...,
    got an integer of 401 digits
    """
    return number(field, value, low, high, above_low=above_low, unit=" of seconds", error=error)


def at_most(items: Iterable[T], limit: int) -> list[T]:
    """The first ``limit + 1`` items at most: enough for the caller to see that there are
    too many, without reading an endless or huge iterable further. O(limit).

    >>> import itertools
    >>> len(at_most(itertools.repeat("x"), 500))
    501
    """
    return list(islice(items, limit + 1))


def is_collection(value: object) -> bool:
    """Whether ``value`` is an iterable of items rather than one item: a ``str``, ``bytes``
    or mapping is one thing (a key, a config entry), not a collection of them.

    >>> is_collection(["a"]), is_collection("a"), is_collection(5)
    (True, False, False)
    """
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping))
