"""Loopback ports for tests that start their own servers."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A port nothing listens on (bound then released): connections to it are refused until
    someone binds it, which a server started on it may find done already (retry then)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
