"""Immutable value types: one :class:`Backend` and an ordered :class:`BackendGroup` of them.

Configuration is frozen; every change (scale out, scale in, a new weight) builds a new group
and hands it to a scheduler's ``update``, which carries the runtime state over by backend key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lbalgo._validate import at_most, integer, is_collection, shown
from lbalgo.errors import InvalidBackendError, InvalidGroupError, UnknownBackendError

__all__ = [
    "MAX_BACKENDS",
    "MAX_HOST_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_WEIGHT",
    "Backend",
    "BackendGroup",
]

MAX_BACKENDS = 500
"""The most backends one group may hold (the cloud product's limit)."""

MAX_WEIGHT = 100
"""The largest weight; weights are integers from 0 (no new requests) to 100."""

MAX_HOST_LENGTH = 253
"""The longest host name, as DNS allows (each dot-separated label at most 63 characters)."""

MAX_NAME_LENGTH = 255
"""The longest backend ``name`` (it becomes the key in logs, metrics and a Redis ledger)."""

_MAX_LABEL_LENGTH = 63
_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_CONFIG_FIELDS = frozenset({"host", "port", "weight", "name"})


def _bad_host(rule: str, host: object) -> InvalidBackendError:
    return InvalidBackendError(f"host must be {rule}, got {shown(host)}")


def _canonical_host(host: object) -> str:
    """Check ``host`` and return its canonical form for the key: an IP address in its one
    spelling (IPv4-mapped IPv6 as IPv4, IPv6 lowercased and compressed), a DNS name in lower
    case without a trailing dot. Length is checked first, so a huge string costs O(1)."""
    if not isinstance(host, str) or not host:
        raise _bad_host("a non-empty string", host)
    if len(host) > MAX_HOST_LENGTH + 1:  # + 1: a fully qualified name may end with a dot
        raise _bad_host(f"at most {MAX_HOST_LENGTH} characters (a DNS name)", host)
    if _is_dotted_quad(host):
        return host  # already canonical: the common case, without ipaddress's cost
    if host.startswith("["):
        raise _bad_host("given without brackets", host)
    if ":" in host:
        # only an IPv6 address may contain a colon; "10.0.0.1:80" is a host with a port in it
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad_host("an IPv6 address if it has a colon (no port)", host) from None
        if v6.ipv4_mapped is not None and v6.scope_id is None:
            return str(v6.ipv4_mapped)  # the same endpoint as the IPv4 address
        return str(v6)
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > MAX_HOST_LENGTH or not all(
        len(label) <= _MAX_LABEL_LENGTH and _LABEL.fullmatch(label) for label in labels
    ):
        raise _bad_host(
            "an IP address or a DNS name (labels of letters, digits, '-' and '_', "
            f"1 to {_MAX_LABEL_LENGTH} characters, {MAX_HOST_LENGTH} in all)",
            host,
        )
    if labels[-1].isdigit():
        # "10.1" or "010.0.0.1": an IPv4 address to inet_aton (octal, short forms), which a
        # resolver may read otherwise than we would: refused rather than guessed
        raise _bad_host("an IPv4 address in dotted-quad form or a DNS name", host)
    return name.lower()


def _is_dotted_quad(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(
        part.isascii() and part.isdigit() and len(part) <= 3 and int(part) < 256
        and (part == "0" or part[0] != "0")  # no leading zero: inet_aton reads it as octal
        for part in parts
    )  # fmt: skip


def _check_name(name: object) -> str | None:
    if name is None:
        return None
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= MAX_NAME_LENGTH
        or not name.isprintable()
    ):
        raise InvalidBackendError(
            f"name must be a printable string of 1 to {MAX_NAME_LENGTH} characters, "
            f"got {shown(name)}"
        )
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
    >>> b = Backend("::FFFF:10.0.0.1", 80)
    >>> b.key, b.host, b.address
    ('10.0.0.1:80', '::FFFF:10.0.0.1', '[::FFFF:10.0.0.1]:80')
    """

    host: str
    port: int
    weight: int = 1
    name: str | None = field(default=None, kw_only=True)
    key: str = field(init=False, repr=False, compare=False, hash=False)
    """The backend's identity: ``name`` if given, else ``"host:port"`` (derived, read-only)."""

    def __post_init__(self) -> None:
        host = _canonical_host(self.host)
        integer("port", self.port, 1, 65535, error=InvalidBackendError)
        integer("weight", self.weight, 0, MAX_WEIGHT, error=InvalidBackendError)
        _check_name(self.name)
        if self.name is not None:
            key = self.name
        elif ":" in host:
            key = f"[{host}]:{self.port}"
        else:
            key = f"{host}:{self.port}"
        # a plain slot, not a property: schedulers read it on every release, and a slot
        # is read without a Python call
        object.__setattr__(self, "key", key)

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


def _too_many() -> str:
    return (
        f"entry {MAX_BACKENDS} (the {MAX_BACKENDS + 1}st backend) is one too many: "
        f"a group holds at most {MAX_BACKENDS} backends"
    )


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
        if not is_collection(backends):
            raise InvalidGroupError(
                f"backends must be an iterable of Backend, got {type(backends).__name__}"
            )
        # read no further than one entry too many: an endless generator fails at once
        items = tuple(at_most(backends, MAX_BACKENDS))
        if len(items) > MAX_BACKENDS:
            raise InvalidGroupError(_too_many())
        by_key: dict[str, Backend] = {}
        for index, backend in enumerate(items):
            if not isinstance(backend, Backend):
                raise InvalidGroupError(
                    f"entry {index}: expected a Backend, got {shown(backend)}"
                )
            if backend.key in by_key:
                raise InvalidGroupError(
                    f"entry {index}: duplicate backend key {backend.key!r} "
                    f"(host {backend.host!r} port {backend.port})"
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
        if not isinstance(data, Sequence) or not is_collection(data):
            raise InvalidGroupError(
                f"config must be a list of backend entries, got {type(data).__name__}"
            )
        entries = at_most(data, MAX_BACKENDS)
        if len(entries) > MAX_BACKENDS:
            raise InvalidGroupError(_too_many())
        backends = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise InvalidGroupError(
                    f"entry {index}: expected a mapping, got {shown(entry)}"
                )
            unknown = next((k for k in entry if k not in _CONFIG_FIELDS), None)
            if unknown is not None:
                raise InvalidGroupError(f"entry {index}: unknown field {shown(unknown)}")
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
        raise UnknownBackendError(key)

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
            raise UnknownBackendError(key)
        return BackendGroup(b for b in self._backends if b.key != key)

    def with_weight(self, key: str, weight: int) -> BackendGroup:
        """A new group in which the backend of that key has another weight."""
        if key not in self._by_key:
            raise UnknownBackendError(key)
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
        try:
            return self._by_key[key]
        except KeyError:
            raise UnknownBackendError(key) from None

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
