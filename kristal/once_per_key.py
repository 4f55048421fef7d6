"""A value per key, computed at most once: concurrent callers of a key wait for the one
computation in flight. Shared by the fleet's document memo and its check measurements."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class OncePerKey(Generic[K, V]):
    def __init__(self, keep: Callable[[V], bool] = lambda _value: True) -> None:
        """`keep` says whether a computed value is remembered (else the next caller computes)."""
        self._keep = keep
        self._lock = threading.Lock()
        self._key_locks: dict[K, threading.Lock] = {}
        self._values: dict[K, V] = {}
        self.computed = 0

    def get(self, key: K, compute: Callable[[], V]) -> tuple[V, bool]:
        """(value, True if computed by this call); an exception of `compute` is not kept."""
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key in self._values:
                return self._values[key], False
            value = compute()
            with self._lock:
                self.computed += 1
                if self._keep(value):
                    self._values[key] = value
            return value, True
