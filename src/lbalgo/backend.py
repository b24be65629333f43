"""Immutable value types: one :class:`Backend` and an ordered :class:`BackendGroup` of them.

Configuration is frozen; every change (scale out, scale in, a new weight) builds a new group
and hands it to a scheduler's ``update``, which carries the runtime state over by backend key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbalgo.errors import InvalidBackendError, InvalidGroupError

__all__ = ["MAX_BACKENDS", "MAX_WEIGHT", "Backend", "BackendGroup"]

MAX_BACKENDS = 500
"""The most backends one group may hold (the cloud product's limit)."""

MAX_WEIGHT = 100
"""The largest weight; weights are integers from 0 (no new requests) to 100."""

_MAX_HOST_LENGTH = 253  # the longest DNS name
_CONFIG_FIELDS = frozenset({"host", "port", "weight", "name"})


def _check_int(field_name: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass, but weight=True is a mistake, not a weight of 1
    if type(value) is not int or not low <= value <= high:
        raise InvalidBackendError(
            f"{field_name} must be an integer from {low} to {high}, got {value!r}"
        )
    return value


def _check_host(host: object) -> str:
    if not isinstance(host, str) or not host:
        raise InvalidBackendError(f"host must be a non-empty string, got {host!r}")
    if len(host) > _MAX_HOST_LENGTH or not host.isprintable() or any(c.isspace() for c in host):
        raise InvalidBackendError(
            f"host must be an IP address or DNS name without spaces, got {host!r}"
        )
    if host.startswith("["):
        raise InvalidBackendError(f"host must be given without brackets, got {host!r}")
    if ":" in host:
        # only an IPv6 address may contain a colon; "10.0.0.1:80" is a host with a port in it
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise InvalidBackendError(
                f"host must not contain a port or be a malformed IPv6 address, got {host!r}"
            ) from None
    return host


def _check_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name or not name.isprintable():
        raise InvalidBackendError(f"name must be a non-empty printable string, got {name!r}")
    return name


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend server: where to connect and how much traffic it takes.

    ``weight`` is an integer from 0 to :data:`MAX_WEIGHT`; 0 means "no new requests" while
    connections already open on it end normally. ``key`` identifies the backend everywhere
    (groups, health marks, hashing, updates): the ``name`` if given, else ``"host:port"``.
    Construction validates every field in O(1) and raises :class:`InvalidBackendError` naming
    the field and the value.

    >>> Backend("10.0.0.1", 80, weight=5).key
    '10.0.0.1:80'
    >>> Backend("2001:db8::1", 443).key
    '[2001:db8::1]:443'
    >>> Backend("10.0.0.1", 80, name="web-1").with_weight(0)
    Backend(host='10.0.0.1', port=80, weight=0, name='web-1')
    """

    host: str
    port: int
    weight: int = 1
    name: str | None = field(default=None, kw_only=True)
    _key: str = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        _check_host(self.host)
        _check_int("port", self.port, 1, 65535)
        _check_int("weight", self.weight, 0, MAX_WEIGHT)
        _check_name(self.name)
        if self.name is not None:
            key = self.name
        elif ":" in self.host:
            key = f"[{self.host}]:{self.port}"
        else:
            key = f"{self.host}:{self.port}"
        # cached because schedulers look the key up on every release
        object.__setattr__(self, "_key", key)

    @property
    def key(self) -> str:
        """The backend's identity: ``name`` if given, else ``"host:port"``."""
        return self._key

    @property
    def address(self) -> str:
        """``"host:port"`` as a connection string (IPv6 hosts in brackets), whatever the name."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def with_weight(self, weight: int) -> Backend:
        """The same backend with another weight (validated like the constructor's).

        >>> Backend("10.0.0.1", 80).with_weight(7).weight
        7
        """
        return Backend(self.host, self.port, weight, name=self.name)


class BackendGroup:
    """An immutable, ordered group of at most :data:`MAX_BACKENDS` backends with unique keys.

    The order is the order of nginx's ``upstream`` block: it breaks ties. ``len``, iteration,
    ``key in group`` and ``group[key]`` work as for a read-only mapping that iterates over
    backends; ``with_backend``, ``without`` and ``with_weight`` return new groups in O(n) and
    never change the original. Groups are hashable and compare by value (same backends, same
    order).

    >>> g = BackendGroup([Backend("10.0.0.1", 80, 5), Backend("10.0.0.2", 80)])
    >>> len(g), g.total_weight, "10.0.0.2:80" in g
    (2, 6, True)
    >>> g2 = g.with_weight("10.0.0.2:80", 0).with_backend(Backend("10.0.0.3", 80, 2))
    >>> [b.weight for b in g2], [b.weight for b in g]
    ([5, 0, 2], [5, 1])
    """

    __slots__ = ("_backends", "_by_key", "_hash", "_total_weight")

    _backends: tuple[Backend, ...]
    _by_key: dict[str, Backend]
    _total_weight: int
    _hash: int | None

    def __init__(self, backends: Iterable[Backend] = ()) -> None:
        if isinstance(backends, (str, bytes, Mapping)) or not isinstance(backends, Iterable):
            raise InvalidGroupError(
                f"backends must be an iterable of Backend, got {type(backends).__name__}"
            )
        items = tuple(backends)
        if len(items) > MAX_BACKENDS:
            raise InvalidGroupError(
                f"a group holds at most {MAX_BACKENDS} backends, got {len(items)}"
            )
        by_key: dict[str, Backend] = {}
        for index, backend in enumerate(items):
            if not isinstance(backend, Backend):
                raise InvalidGroupError(f"entry {index}: expected a Backend, got {backend!r}")
            if backend.key in by_key:
                raise InvalidGroupError(
                    f"entry {index}: duplicate backend key {backend.key!r}"
                )
            by_key[backend.key] = backend
        object.__setattr__(self, "_backends", items)
        object.__setattr__(self, "_by_key", by_key)
        object.__setattr__(self, "_total_weight", sum(b.weight for b in items))
        object.__setattr__(self, "_hash", None)

    @classmethod
    def from_config(cls, data: Sequence[Mapping[str, Any]]) -> BackendGroup:
        """Build a group from data as parsed from JSON, YAML or TOML.

        Each entry is a mapping with ``host`` and ``port`` and optionally ``weight`` (default
        1) and ``name``. Any error raises :class:`InvalidGroupError` naming the entry index and
        the field; unknown fields are errors too (a typo such as ``wieght`` would otherwise
        silently mean weight 1).

        >>> BackendGroup.from_config([{"host": "10.0.0.1", "port": 80, "weight": 5}]).keys()
        ('10.0.0.1:80',)
        >>> BackendGroup.from_config([{"host": "10.0.0.1", "port": 80, "weight": 500}])
        Traceback (most recent call last):
        ...
        lbalgo.errors.InvalidGroupError: entry 0: weight must be an integer from 0 to 100, got 500
        """
        if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Sequence):
            raise InvalidGroupError(
                f"config must be a list of backend entries, got {type(data).__name__}"
            )
        backends = []
        for index, entry in enumerate(data):
            if not isinstance(entry, Mapping):
                raise InvalidGroupError(f"entry {index}: expected a mapping, got {entry!r}")
            unknown = sorted(str(k) for k in entry if k not in _CONFIG_FIELDS)
            if unknown:
                raise InvalidGroupError(f"entry {index}: unknown field {unknown[0]!r}")
            for required in ("host", "port"):
                if required not in entry:
                    raise InvalidGroupError(f"entry {index}: missing field {required!r}")
            try:
                backends.append(
                    Backend(
                        entry["host"],
                        entry["port"],
                        entry.get("weight", 1),
                        name=entry.get("name"),
                    )
                )
            except InvalidBackendError as error:
                raise InvalidGroupError(f"entry {index}: {error}") from error
        return cls(backends)

    @property
    def backends(self) -> tuple[Backend, ...]:
        """The backends in group order."""
        return self._backends

    @property
    def total_weight(self) -> int:
        """The sum of all weights (weight-0 backends add nothing)."""
        return self._total_weight

    def keys(self) -> tuple[str, ...]:
        """The backend keys in group order."""
        return tuple(self._by_key)

    def get(self, key: str) -> Backend | None:
        """The backend with that key, or ``None``."""
        return self._by_key.get(key)

    def index(self, key: str) -> int:
        """The position of the backend with that key (``KeyError`` if absent), O(n)."""
        for position, backend in enumerate(self._backends):
            if backend.key == key:
                return position
        raise KeyError(key)

    def with_backend(self, backend: Backend) -> BackendGroup:
        """A new group with ``backend`` added at the end, or replacing the backend of the same
        key in its place."""
        if not isinstance(backend, Backend):
            raise InvalidGroupError(f"expected a Backend, got {backend!r}")
        if backend.key in self._by_key:
            return BackendGroup(backend if b.key == backend.key else b for b in self._backends)
        return BackendGroup((*self._backends, backend))

    def without(self, key: str) -> BackendGroup:
        """A new group without the backend of that key (``KeyError`` naming the key if absent)."""
        if key not in self._by_key:
            raise KeyError(key)
        return BackendGroup(b for b in self._backends if b.key != key)

    def with_weight(self, key: str, weight: int) -> BackendGroup:
        """A new group in which the backend of that key has another weight."""
        if key not in self._by_key:
            raise KeyError(key)
        return self.with_backend(self._by_key[key].with_weight(weight))

    def __len__(self) -> int:
        return len(self._backends)

    def __iter__(self) -> Iterator[Backend]:
        return iter(self._backends)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, Backend):
            return self._by_key.get(key.key) == key
        return key in self._by_key

    def __getitem__(self, key: str) -> Backend:
        return self._by_key[key]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BackendGroup):
            return NotImplemented
        return self._backends == other._backends

    def __hash__(self) -> int:
        if self._hash is None:
            object.__setattr__(self, "_hash", hash(self._backends))
        return self._hash  # type: ignore[return-value]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"BackendGroup is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"BackendGroup is immutable; cannot delete {name!r}")

    def __repr__(self) -> str:
        return f"BackendGroup({list(self._backends)!r})"

    def __reduce__(self) -> tuple[type[BackendGroup], tuple[tuple[Backend, ...]]]:
        return (BackendGroup, (self._backends,))
