"""nginx ``upstream`` blocks in, the scheduler that picks what that nginx picks out.

:func:`load_upstream` reads the text of an ``upstream NAME { ... }`` block (or just its
directives) the way nginx's configuration parser does, keeps what lbalgo can reproduce exactly
(``server`` lines with ``weight``, ``max_fails``, ``fail_timeout`` and ``down``; round robin,
``least_conn;`` or ``hash $remote_addr consistent;``) and refuses everything else with an
:class:`~lbalgo.errors.InvalidGroupError` naming the line, so a configuration is never half
understood. ``docs/nginx.md`` lists the directives side by side with nginx's documentation.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from lbalgo.backend import MAX_BACKENDS, MAX_WEIGHT, Backend, BackendGroup
from lbalgo.errors import InvalidBackendError, InvalidGroupError, InvalidTypeError
from lbalgo.scheduler import Scheduler
from lbalgo.source_ip_hash import SourceIPHash
from lbalgo.swrr import SmoothWeightedRoundRobin
from lbalgo.wlc import WeightedLeastConnections

__all__ = ["Upstream", "UpstreamServer", "load_upstream", "parse_time"]

Balancing = Literal["round_robin", "least_conn", "hash"]

# nginx's defaults for a server line (ngx_http_upstream_server)
_DEFAULT_PORT = 80
_DEFAULT_MAX_FAILS = 1
_DEFAULT_FAIL_TIMEOUT = 10
# options load_upstream sets from the block itself: a caller passing them would contradict it
_FROM_BLOCK = ("compat", "max_fails", "fail_timeout")
# directives that change how connections are kept or shared, never which server is picked
_NEUTRAL = {"zone": (1, 2), "keepalive": (1, 1), "keepalive_requests": (1, 1),
            "keepalive_time": (1, 1), "keepalive_timeout": (1, 1)}
# nginx's balancing directives (open source and commercial): lbalgo honours two of them
_BALANCING = frozenset({"least_conn", "hash", "ip_hash", "random", "least_time", "sticky",
                        "ntlm", "queue"})
# ngx_parse_time units in seconds, in the order nginx requires them (is_sec mode: no "ms")
_TIME_UNITS = {"y": 365 * 86400, "M": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600,
               "m": 60, "s": 1}
_MAX_SECONDS = 2**31 - 1


@dataclass(frozen=True, slots=True)
class UpstreamServer:
    """One ``server`` line as lbalgo understood it: ``line`` (1-based, in the given text),
    ``address`` as written, the ``backend`` built from it (its key is ``address``),
    ``max_fails``, ``fail_timeout`` (whole seconds, as nginx keeps it) and ``down``."""

    line: int
    address: str
    backend: Backend
    max_fails: int
    fail_timeout: int
    down: bool


@dataclass(frozen=True, slots=True)
class Upstream:
    """An nginx upstream block: its servers, its balancing method and the matching scheduler.

    ``group`` holds one :class:`~lbalgo.Backend` per ``server`` line, in order, named by the
    address exactly as written (``server 10.0.0.2;`` is host ``10.0.0.2``, port 80, key
    ``"10.0.0.2"``), so nginx-compatible hashing hashes the same text nginx hashes. ``down``
    holds the keys of the lines marked ``down``. ``max_fails`` and ``fail_timeout`` are the
    servers' values (one value for all: see :func:`load_upstream`). Building the scheduler is
    O(n) plus the algorithm's own construction.

    >>> up = load_upstream("upstream app { server 10.0.0.1:8080 weight=5; server 10.0.0.2; }")
    >>> up.name, up.balancing, up.group.keys(), up.group["10.0.0.2"].port
    ('app', 'round_robin', ('10.0.0.1:8080', '10.0.0.2'), 80)
    """

    name: str | None
    balancing: Balancing
    servers: tuple[UpstreamServer, ...]
    group: BackendGroup
    down: frozenset[str]
    max_fails: int
    fail_timeout: int

    def scheduler(self, **options: Any) -> Scheduler:
        """A new scheduler that picks what this upstream's nginx picks.

        Round robin gives :class:`~lbalgo.SmoothWeightedRoundRobin`, ``least_conn``
        ``WeightedLeastConnections(compat="nginx")`` and ``hash $remote_addr consistent``
        ``SourceIPHash(compat="nginx")``, each with the servers' ``max_fails`` and
        ``fail_timeout`` and with the ``down`` servers marked down. ``options`` go to the
        scheduler (``clock=``, ``slow_start=``, ...); ``compat``, ``max_fails`` and
        ``fail_timeout`` come from the block, and passing them raises ``TypeError``. O(n).

        >>> up = load_upstream("server a.internal:80 weight=5; server b.internal:80 down;"
        ...                    " server c.internal:80;")
        >>> sched = up.scheduler()
        >>> [sched.pick().key for _ in range(7)]  # doctest: +NORMALIZE_WHITESPACE
        ['a.internal:80', 'a.internal:80', 'a.internal:80', 'c.internal:80',
         'a.internal:80', 'a.internal:80', 'a.internal:80']
        """
        clash = sorted(set(options) & set(_FROM_BLOCK))
        if clash:
            raise InvalidTypeError(
                f"{clash[0]} is set by the upstream block and cannot be passed, got "
                f"{clash[0]}={options[clash[0]]!r}"
            )
        passive: dict[str, Any] = {"max_fails": self.max_fails}
        if self.max_fails:
            passive["fail_timeout"] = float(self.fail_timeout)
        sched: Scheduler
        if self.balancing == "least_conn":
            sched = WeightedLeastConnections(self.group, compat="nginx", **passive, **options)
        elif self.balancing == "hash":
            sched = SourceIPHash(self.group, compat="nginx", **passive, **options)
        else:
            sched = SmoothWeightedRoundRobin(self.group, **passive, **options)
        for key in self.down:
            sched.mark_down(key)
        return sched


@dataclass(frozen=True, slots=True)
class _Directive:
    line: int
    args: tuple[str, ...]
    block: tuple[_Directive, ...] | None  # None: ended by ";"

    @property
    def text(self) -> str:
        return " ".join(self.args) + (" {...}" if self.block is not None else ";")


def _error(line: int, message: str) -> InvalidGroupError:
    return InvalidGroupError(f"line {line}: {message}")


def _tokens(text: str) -> Iterator[tuple[int, str, bool]]:
    """nginx's tokens: (line, token, quoted); ``;``, ``{`` and ``}`` are tokens of their own,
    ``#`` starts a comment where a token could start, quotes take ``\\"``-style escapes."""
    i, line, size = 0, 1, len(text)
    while i < size:
        char = text[i]
        if char == "\n":
            line += 1
            i += 1
        elif char in " \t\r":
            i += 1
        elif char == "#":
            while i < size and text[i] != "\n":
                i += 1
        elif char in ";{}":
            yield line, char, False
            i += 1
        elif char in "\"'":
            start_line, i, out = line, i + 1, []
            while i < size and text[i] != char:
                if text[i] == "\\" and i + 1 < size and text[i + 1] in "\"'\\tnr":
                    out.append({"t": "\t", "n": "\n", "r": "\r"}.get(text[i + 1], text[i + 1]))
                    i += 2
                    continue
                line += text[i] == "\n"
                out.append(text[i])
                i += 1
            if i >= size:
                raise _error(start_line, f"unterminated {char}quoted{char} string")
            i += 1
            if i < size and text[i] not in " \t\r\n;{}":
                raise _error(line, f"unexpected {text[i]!r} after a quoted string")
            yield start_line, "".join(out), True
        else:
            start = i
            while i < size and text[i] not in " \t\r\n;{}\"'":
                i += 1
            if i < size and text[i] in "\"'":
                raise _error(line, f"unexpected quote in {text[start:i + 1]!r}")
            yield line, text[start:i], False


def _parse(text: str) -> tuple[_Directive, ...]:
    """The directives of ``text`` as a tree, O(len(text))."""
    stack: list[tuple[list[_Directive], tuple[str, ...], int]] = []
    level: list[_Directive] = []
    args: list[str] = []
    first_line = 0
    last_line = 1
    for line, token, quoted in _tokens(text):
        last_line = line
        if quoted or token not in ";{}":
            if not args:
                first_line = line
            args.append(token)
        elif token == ";":
            if not args:
                raise _error(line, "unexpected ';'")
            level.append(_Directive(first_line, tuple(args), None))
            args = []
        elif token == "{":
            if not args:
                raise _error(line, "unexpected '{'")
            stack.append((level, tuple(args), first_line))
            level, args = [], []
        else:
            if args:
                raise _error(line, f"unexpected '}}' after {' '.join(args)!r} (missing ';')")
            if not stack:
                raise _error(line, "unexpected '}'")
            outer, header, header_line = stack.pop()
            outer.append(_Directive(header_line, header, tuple(level)))
            level = outer
    if args:
        raise _error(last_line, f"unexpected end of text after {' '.join(args)!r} (missing ';')")
    if stack:
        raise _error(stack[-1][2], f"block {' '.join(stack[-1][1])!r} is never closed")
    return tuple(level)


def _atoi(value: str) -> int | None:
    """ngx_atoi: decimal digits only, no sign, not empty; None where nginx says NGX_ERROR."""
    if not value or not value.isascii() or not value.isdigit():
        return None
    return int(value)


def parse_time(value: str) -> int | None:
    """nginx's time syntax for ``fail_timeout`` (``ngx_parse_time`` in seconds mode): a
    number of seconds, or units from largest to smallest such as ``1m30s`` or ``1h 5m``
    (``y M w d h m s``, each at most once); None where nginx refuses the value. O(len).

    >>> parse_time("10"), parse_time("1m30s"), parse_time("2h"), parse_time("500ms")
    (10, 90, 7200, None)
    """
    total = number = 0
    digits = False
    rank = -1  # index in _TIME_UNITS of the last unit seen
    units = list(_TIME_UNITS)
    i = 0
    while i < len(value):
        char = value[i]
        i += 1
        if "0" <= char <= "9":
            number = number * 10 + int(char)
            digits = True
            continue
        if char == " ":
            unit_rank, scale = len(units), 1  # a bare number before a space counts as seconds
        elif char in _TIME_UNITS and not (char == "m" and value[i : i + 1] == "s"):
            unit_rank, scale = units.index(char), _TIME_UNITS[char]
        else:
            return None  # "ms" and anything else: nginx refuses it for a time in seconds
        if unit_rank <= rank:
            return None
        rank = unit_rank
        total += number * scale
        number = 0
        while value[i : i + 1] == " ":
            i += 1
    total += number
    return total if digits and total <= _MAX_SECONDS else None


def _address(line: int, text: str) -> tuple[str, int]:
    """Host and port of a ``server`` address as nginx accepts it (``ngx_parse_url`` with
    default port 80), for the forms lbalgo can honour."""
    if text[:5].lower() == "unix:":
        raise _error(line, f"unix sockets are not supported (lbalgo picks host:port): {text!r}")
    if "://" in text or "/" in text:
        raise _error(line, f"invalid server address (expected host, host:port or [v6]:port), "
                           f"got {text!r}")
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _error(line, f"invalid IPv6 address (missing ']'), got {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _error(line, f"invalid IPv6 address {host!r} in {text!r}") from None
        if rest:
            if not rest.startswith(":"):
                raise _error(line, f"invalid server address {text!r}")
            port_text = rest[1:]
    elif text.count(":") > 1:
        raise _error(line, f"an IPv6 address needs brackets ([v6]:port), got {text!r}")
    else:
        host, _, port_text = text.partition(":")
        port_text = port_text if ":" in text else None
    port = _DEFAULT_PORT
    if port_text is not None:
        value = _atoi(port_text)
        if value is None or not 1 <= value <= 65535:
            raise _error(line, f"invalid port {port_text!r} in {text!r}")
        port = value
    if not host:
        raise _error(line, f"no host in {text!r}")
    return host, port


def _server(directive: _Directive) -> UpstreamServer:
    line, args = directive.line, directive.args
    if len(args) < 2:
        raise _error(line, f"'server' needs an address: {directive.text}")
    address = args[1]
    host, port = _address(line, address)
    weight, max_fails, fail_timeout, down = 1, _DEFAULT_MAX_FAILS, _DEFAULT_FAIL_TIMEOUT, False
    for param in args[2:]:
        name, eq, value = param.partition("=")
        if eq and name == "weight":
            number = _atoi(value)
            if number is None or not 1 <= number <= MAX_WEIGHT:
                raise _error(line, f"weight must be an integer from 1 to {MAX_WEIGHT} (nginx "
                                   f"refuses 0, lbalgo's limit is {MAX_WEIGHT}), got {param!r}")
            weight = number
        elif eq and name == "max_fails":
            number = _atoi(value)
            if number is None:
                raise _error(line, f"max_fails must be an integer >= 0, got {param!r}")
            max_fails = number
        elif eq and name == "fail_timeout":
            seconds = parse_time(value)
            if seconds is None or seconds == 0:
                raise _error(line, f"fail_timeout must be a time of at least 1s (such as 10, "
                                   f"10s, 1m), got {param!r}")
            fail_timeout = seconds
        elif eq and name == "max_conns":
            if _atoi(value) != 0:
                raise _error(line, f"max_conns is not supported (only max_conns=0, no limit), "
                                   f"got {param!r}")
        elif param == "down":
            down = True
        elif param in ("backup", "resolve") or name in ("route", "service", "slow_start",
                                                         "drain"):
            raise _error(line, f"{param!r} is not supported by lbalgo: {directive.text}")
        else:
            raise _error(line, f"invalid parameter {param!r}: {directive.text}")
    try:
        backend = Backend(host, port, weight, name=address)
    except InvalidBackendError as error:
        raise _error(line, f"{error}: {directive.text}") from None
    return UpstreamServer(line, address, backend, max_fails, fail_timeout, down)


def _balancing(directive: _Directive) -> Balancing:
    args = directive.args
    if args[0] == "least_conn":
        if len(args) != 1:
            raise _error(directive.line, f"'least_conn' takes no arguments: {directive.text}")
        return "least_conn"
    if args[0] == "hash":
        if args[1:] != ("$remote_addr", "consistent"):
            raise _error(directive.line, f"only 'hash $remote_addr consistent;' is supported, "
                                         f"got {directive.text!r}")
        return "hash"
    raise _error(directive.line, f"balancing method {args[0]!r} is not supported (round robin, "
                                 f"'least_conn;' or 'hash $remote_addr consistent;'): "
                                 f"{directive.text}")


def load_upstream(text: str) -> Upstream:
    """Read an nginx ``upstream NAME { ... }`` block, or just its directives.

    Understood: ``server ADDRESS [weight=N] [max_fails=N] [fail_timeout=T] [down];`` (address
    ``host``, ``host:port`` or ``[v6]:port``, port 80 when none is given; ``T`` in nginx's time
    syntax, whole seconds; nginx's defaults ``weight=1 max_fails=1 fail_timeout=10``), the
    balancing directive (none: round robin; ``least_conn;``; ``hash $remote_addr
    consistent;``), comments and quoting, and ``zone`` / ``keepalive*``, which do not change
    which server is picked and are ignored. A host name is one backend (nginx would resolve it
    at start and make one server per address). Everything else raises
    :class:`~lbalgo.errors.InvalidGroupError` naming the line: ``backup``, ``resolve``,
    ``unix:`` sockets, ``ip_hash``, ``random``, other hash keys, ``weight=0``, a weight over
    100, unknown directives and parameters, syntax errors, a server listed twice, and
    ``max_fails`` / ``fail_timeout`` that differ between servers (the schedulers hold one
    value for a group). O(len(text)).

    >>> up = load_upstream('''
    ... upstream backend {
    ...     least_conn;
    ...     server [2001:db8::1]:8080 weight=3 max_fails=2 fail_timeout=30s;
    ...     server 10.0.0.2 max_fails=2 fail_timeout=30s down;
    ... }''')
    >>> up.balancing, sorted(up.down), up.max_fails, up.fail_timeout
    ('least_conn', ['10.0.0.2'], 2, 30)
    >>> load_upstream("server 10.0.0.1 backup;")
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidGroupError: line 1: 'backup' is not supported by lbalgo: server 10.0.0.1 backup;
    """  # noqa: E501 -- a doctest's expected output is one line
    if not isinstance(text, str):
        raise InvalidGroupError(f"upstream text must be a str, got {text!r}")
    directives = _parse(text)
    name: str | None = None
    if any(d.args[0] == "upstream" for d in directives):
        head = directives[0]
        if len(directives) != 1 or head.block is None:
            raise _error(head.line, "expected one 'upstream NAME { ... }' block and nothing else")
        if len(head.args) != 2:
            raise _error(head.line, f"'upstream' takes one name: {' '.join(head.args)!r}")
        name, directives = head.args[1], head.block
    balancing: Balancing = "round_robin"
    balancing_line = 0
    servers: list[UpstreamServer] = []
    seen: dict[str, int] = {}
    for directive in directives:
        keyword, line = directive.args[0], directive.line
        if directive.block is not None:
            raise _error(line, f"unexpected block in an upstream: {directive.text}")
        if keyword == "server":
            if len(servers) == MAX_BACKENDS:
                raise _error(line, f"more than {MAX_BACKENDS} servers (lbalgo's limit)")
            server = _server(directive)
            if server.address in seen:
                raise _error(line, f"server {server.address} is listed twice (first on line "
                                   f"{seen[server.address]})")
            seen[server.address] = line
            servers.append(server)
        elif keyword in _NEUTRAL:
            low, high = _NEUTRAL[keyword]
            if not low <= len(directive.args) - 1 <= high:
                raise _error(line, f"wrong number of arguments: {directive.text}")
        elif keyword in _BALANCING:
            if balancing_line:
                raise _error(line, f"balancing method set twice (first on line "
                                   f"{balancing_line}): {directive.text}")
            balancing = _balancing(directive)
            balancing_line = line
        else:
            raise _error(line, f"unknown directive {keyword!r}: {directive.text}")
    if not servers:
        raise InvalidGroupError("no 'server' line in the upstream")
    first = servers[0]
    for server in servers[1:]:
        same = server.max_fails == first.max_fails and (
            server.max_fails == 0 or server.fail_timeout == first.fail_timeout
        )
        if not same:
            raise _error(server.line, f"max_fails={server.max_fails} fail_timeout="
                                      f"{server.fail_timeout}s differ from line {first.line}'s "
                                      f"max_fails={first.max_fails} fail_timeout="
                                      f"{first.fail_timeout}s (one value per upstream)")
    return Upstream(
        name=name,
        balancing=balancing,
        servers=tuple(servers),
        group=BackendGroup(server.backend for server in servers),
        down=frozenset(server.address for server in servers if server.down),
        max_fails=first.max_fails,
        fail_timeout=first.fail_timeout,
    )
