"""The C fast paths of a request, put in place of the pure-Python methods they mirror.

Each function here takes a pure-Python method and returns what the class should hold: the
method itself where the C accelerator (``lbalgo._hotpath``) is not built or
``LBALGO_PURE_PYTHON`` is set, else a C method descriptor that serves the common case in C
(no lock, no Python frame) and calls the pure-Python method for every other case, before
anything is counted: bad input, ``exclude``, options in play, slow paths. Errors, messages and
every slow path are therefore the pure code's own, and ``__wrapped__`` (``help()``,
``inspect.signature``) shows it. What each C path relies on is in ``docs/concurrency.md``.

The C paths read these instance attributes by name: ``_slots`` (release), ``_stream`` and
``_end_lease`` (SWRR), ``_table``, ``_fast``, ``_blocked`` and ``_end_lease`` (SourceIPHash).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from lbalgo._accel import compiled
from lbalgo.scheduler import Lease

__all__ = ["hash_connection", "hash_pick", "release", "rotation_connection", "rotation_pick"]

_hotpath = compiled("_hotpath")

F = TypeVar("F", bound=Callable[..., object])


def release(method: F) -> F:
    """``BaseScheduler.release``: the very Backend a pick returned, ``failed`` absent or
    ``False``, a slot that needs no notification: the end counted in C."""
    if _hotpath is None:
        return method
    return cast(F, _hotpath.release_method(method))


def rotation_pick(method: F) -> F:
    """``SmoothWeightedRoundRobin.pick`` without ``exclude``: one step of the stream in C."""
    if _hotpath is None:
        return method
    return cast(F, _hotpath.rotation_pick(method))


def rotation_connection(method: F) -> F:
    """``SmoothWeightedRoundRobin.connection`` without ``exclude``: the stream's step and a
    :class:`~lbalgo.Lease` made in C."""
    if _hotpath is None:
        return method
    return cast(F, _hotpath.rotation_connection(method, Lease))


def hash_pick(seed: int, size: int, *, inet_pton: bool) -> Callable[[F], F]:
    """``SourceIPHash.pick`` for an IPv4 string on the lock-free table path: ``inet_pton``,
    murmur3 with ``seed`` and the cell modulo ``size`` in C (the pure code's mmh3 recipe).
    ``inet_pton``: whether the pure code's fast path parses with it (where it is not strict,
    every string takes the reference parser, so the C path stays out)."""

    def install(method: F) -> F:
        if _hotpath is None or not inet_pton:
            return method
        return cast(F, _hotpath.hash_pick(method, seed, size))

    return install


def hash_connection(seed: int, size: int, *, inet_pton: bool) -> Callable[[F], F]:
    """``SourceIPHash.connection``: :func:`hash_pick`'s path, and a Lease made in C."""

    def install(method: F) -> F:
        if _hotpath is None or not inet_pton:
            return method
        return cast(F, _hotpath.hash_connection(method, seed, size, Lease))

    return install
