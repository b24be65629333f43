"""Running code with lbalgo's numpy kernels on or off (``lbalgo._accel.use_numpy``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from lbalgo._accel import use_numpy

__all__ = ["numpy_kernels"]


@contextmanager
def numpy_kernels(enabled: bool) -> Iterator[None]:
    """The numpy kernels on (where numpy is installed) or off inside the block."""
    previous = use_numpy(enabled)
    try:
        yield
    finally:
        use_numpy(previous)
