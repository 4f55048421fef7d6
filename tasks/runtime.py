"""Shared plumbing for tasks: the per-process domain context, transient-error retries, and the
per-channel Prefect concurrency limit (a courtesy lock; the conditional write is the real one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_client
from prefect.concurrency.sync import concurrency

from kristal.config import Settings
from kristal.context import Context
from kristal.errors import StorageUnavailable

_contexts: dict[tuple[Any, ...], Context] = {}
RETRY_DELAYS = [1, 2, 4]
CHANNEL_LOCK_TIMEOUT_S = 600.0
# A holder renews its lease while alive; a holder killed with -9 (a Crashed run) frees the
# channel once its lease expires and the server's repossessor notices.
CHANNEL_LOCK_LEASE_S = 60.0  # the server refuses shorter leases


def domain_context() -> Context:
    """One Context per process and configuration (re-read when the trust file changes)."""
    settings = Settings.from_env()
    try:
        trust_mtime = os.stat(settings.trust_file).st_mtime_ns
    except OSError:
        trust_mtime = 0
    key = (settings, trust_mtime)
    if key not in _contexts:
        _contexts.clear()
        _contexts[key] = Context.from_settings(settings)
    return _contexts[key]


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only storage hiccups; a verification failure never gets better by retrying."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(exc, StorageUnavailable)


def lock_name(channel_id: str) -> str:
    tenant, environment, region = channel_id.split("/")
    return f"kristal-channel:{tenant}:{environment}:{region}"


@contextmanager
def channel_lock(channel_id: str) -> Iterator[None]:
    """Hold the channel's global concurrency limit (upserted first: strict needs it to exist)."""
    name = lock_name(channel_id)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    with concurrency(name, occupy=1, timeout_seconds=CHANNEL_LOCK_TIMEOUT_S, strict=True,
                     lease_duration=CHANNEL_LOCK_LEASE_S):
        yield
