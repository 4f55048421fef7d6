"""Progress of long work (a download, an index build, a publish, a fleet's waves) for whoever
shows it: nothing by default; the CLI installs rich progress bars on a terminal. Domain code
asks for a `meter` and advances it; it never knows whether anyone is looking.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Meter(Protocol):
    def advance(self, amount: float) -> None: ...

    def close(self) -> None: ...


class _Silent:
    def advance(self, amount: float) -> None:
        pass

    def close(self) -> None:
        pass


SILENT = _Silent()
_factory: Callable[[str, float | None, str], Meter] | None = None
_lock = threading.Lock()


def install(factory: Callable[[str, float | None, str], Meter] | None) -> None:
    """Show progress through `factory(description, total, unit)` (None: show nothing)."""
    global _factory
    with _lock:
        _factory = factory


def meter(description: str, total: float | None, unit: str = "") -> Meter:
    """A meter for one piece of work (`unit` "bytes" shows sizes); silent unless installed."""
    factory = _factory
    return SILENT if factory is None else factory(description, total, unit)


@contextmanager
def metered(description: str, total: float | None, unit: str = "") -> Iterator[Meter]:
    m = meter(description, total, unit)
    try:
        yield m
    finally:
        m.close()
