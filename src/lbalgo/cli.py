"""The ``lbalgo`` command line (the simulator lands with issue 8)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lbalgo`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    print(f"lbalgo: the simulator is not built yet (args: {args})", file=sys.stderr)
    return 0
