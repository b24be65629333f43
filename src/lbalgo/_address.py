"""Client-address normalisation: one client is one key, whatever its spelling.

A client address becomes its packed bytes: 4 for IPv4 (also for an IPv4-mapped IPv6 address
such as ``::ffff:10.0.0.1``, which is the same client arriving over a dual-stack socket) and 16
for any other IPv6 address, so compression and case no longer matter. ``socket.inet_pton``
parses the common case in about a tenth of the time ``ipaddress.ip_address`` takes; it is
exactly as strict as ``ipaddress`` on glibc (no leading zeros, no short forms such as ``"1"``,
no ports, no spaces), which :data:`STRICT_PTON` checks once at import time. Everything the fast
parser refuses goes through ``ipaddress``, the reference, which also accepts a zone
(``fe80::1%eth0``); the zone is not part of the key.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

from lbalgo._validate import shown
from lbalgo.errors import InvalidOptionError

__all__ = ["STRICT_PTON", "address_key", "address_text", "bad_address", "remote_addr"]

_INET = socket.AF_INET
_INET6 = socket.AF_INET6
_pton = socket.inet_pton
_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _pton_is_strict() -> bool:
    # BSD and old libcs accept forms ipaddress rejects ("01.2.3.4"); there, every string takes
    # the reference path so no platform accepts an address another one refuses.
    for loose in ("01.2.3.4", "1.2.3", "1", "1.2.3.4 ", "0x1.2.3.4"):
        try:
            _pton(_INET, loose)
        except OSError:
            continue
        return False
    return True


STRICT_PTON = _pton_is_strict()
"""Whether ``inet_pton`` may serve as the fast path here (true on glibc)."""


def bad_address(client: object) -> InvalidOptionError:
    """The error for something that is not a client address, naming it (an
    :class:`~lbalgo.InvalidOptionError`, so a ``ValueError``)."""
    return InvalidOptionError(
        f"client must be an IPv4 or IPv6 address (str, IPv4Address or IPv6Address), "
        f"got {shown(client)}"
    )


def _unmap(packed: bytes) -> bytes:
    return packed[12:] if packed[:12] == _MAPPED_PREFIX else packed


def _packed(client: object) -> bytes:
    """The address's packed bytes as written (4 for IPv4, 16 for IPv6, mapped ones too)."""
    if type(client) is str and STRICT_PTON:
        try:
            if ":" in client:
                return _pton(_INET6, client)
            return _pton(_INET, client)
        except (OSError, ValueError):  # ValueError: an embedded NUL character
            pass
    if isinstance(client, str):
        try:
            return ip_address(client).packed
        except ValueError:
            raise bad_address(client) from None
    if isinstance(client, (IPv4Address, IPv6Address)):
        return client.packed
    raise bad_address(client)


def address_key(client: object) -> bytes:
    """The client's packed address: 4 bytes for IPv4 and IPv4-mapped IPv6, else 16.

    O(1). Raises ``ValueError`` naming the value for anything that is not an address.

    >>> address_key("10.0.0.1") == address_key("::FFFF:10.0.0.1") == bytes([10, 0, 0, 1])
    True
    >>> address_key("2001:db8::1") == address_key("2001:0DB8:0:0:0:0:0:0001")
    True
    >>> address_key("10.0.0.1:80")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lbalgo.errors.InvalidOptionError: client must be an IPv4 or IPv6 address (...),
    got '10.0.0.1:80'
    """
    return _unmap(_packed(client))


def remote_addr(client: object) -> str:
    """The client as nginx's ``$remote_addr`` prints it, spelled as given: an IPv4 address in
    dotted decimal, any IPv6 address (IPv4-mapped ones included: ``::ffff:10.0.0.1`` is what
    a dual-stack listener sees for an IPv4 client) as ``ngx_inet6_ntop`` writes it.

    O(1). Raises ``ValueError`` naming the value for anything that is not an address.

    >>> remote_addr("10.0.0.1"), remote_addr("::FFFF:10.0.0.1"), remote_addr("2001:DB8::0:1")
    ('10.0.0.1', '::ffff:10.0.0.1', '2001:db8::1')
    """
    return address_text(_packed(client))


def address_text(key: bytes) -> str:
    """The address as nginx prints ``$remote_addr`` for a client with this key.

    IPv4 in dotted decimal; IPv6 as ``ngx_inet6_ntop`` writes it: lower-case hex, the first
    longest run of two or more zero groups compressed, and the last 32 bits in dotted decimal
    for IPv4-mapped (``::ffff:1.2.3.4``) and IPv4-compatible addresses (``::1.2.3.4``, but not
    ``::1`` or ``::ff``). Python's ``str(IPv6Address)`` differs there.

    >>> address_text(address_key("::FFFF:10.0.0.1")), address_text(address_key("2001:DB8::0:1"))
    ('10.0.0.1', '2001:db8::1')
    >>> address_text(address_key("::1.2.3.4")), address_text(address_key("::1"))
    ('::1.2.3.4', '::1')
    >>> address_text(bytes(10) + bytes([255, 255, 10, 0, 0, 1]))
    '::ffff:10.0.0.1'
    """
    if len(key) == 4:
        return ".".join(map(str, key))
    groups = [key[i] << 8 | key[i + 1] for i in range(0, 16, 2)]
    # nginx: the first longest run of zero groups, if at least 2 long
    zero, best, run, start = -1, 1, 0, 0
    for index, group in enumerate(groups):
        if group:
            if run > best:
                zero, best = start, run
            run = 0
            continue
        if run == 0:
            start = index
        run += 1
    if run > best:
        zero, best = start, run
    count = 8
    text = ""
    if zero == 0:
        mapped = best == 5 and groups[5] == 0xFFFF
        if mapped or best == 6 or (best == 7 and key[14] != 0 and key[15] != 1):
            count = 6
        text = ":"
    parts = []
    index = 0
    while index < count:
        if index == zero:
            parts.append(":")
            index += best
            continue
        parts.append(f"{groups[index]:x}" + (":" if index < 7 else ""))
        index += 1
    text += "".join(parts)
    if count == 6:
        text += ".".join(map(str, key[12:]))
    return text
