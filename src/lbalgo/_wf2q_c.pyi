"""Types of lbalgo._wf2q_c (src/lbalgo/_wf2q_c.c): LocalLedger's acquire and release in C."""

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

class Schedule:
    """The WF2Q schedule's fields (``_load``, ``_start``, the heaps ...) as C struct members."""

    def acquire(self, exclude: AbstractSet[str] = ...) -> str | None: ...
    def release_open(self, key: str, /) -> bool: ...
    def release(self, key: str, /) -> None: ...

class RequestPath:
    """A WeightedLeastConnections's pick, release and connection on a LocalLedger, in C."""

    def __init__(
        self,
        ledger: Schedule,
        lock: Any,
        slots: dict[str, Any],
        lease: Callable[..., Any],
        slow_pick: Callable[[Any, Any], Any],
        slow_connection: Callable[[Any, Any], Any],
        slow_release: Callable[[Any, bool], None],
        slow_end: Callable[[Any, bool], None],
    ) -> None: ...
    def pick(self, client: Any = ..., *, exclude: Any = ...) -> Any: ...
    def connection(self, client: Any = ..., *, exclude: Any = ...) -> Any: ...
    def release(self, backend: Any, *, failed: bool = ...) -> None: ...
    def end(self, slot: Any, failed: bool, /) -> None: ...
    def retarget(self, slots: dict[str, Any], /) -> None: ...
