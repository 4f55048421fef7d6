"""Shared plumbing for tasks: the per-process domain context, transient-error retries, and the
per-channel Prefect concurrency limit (a courtesy lock; the conditional write is the real one).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL
from prefect.utilities.asyncutils import run_coro_as_sync

from kristal.config import Settings
from kristal.context import Context
from kristal.errors import StorageUnavailable
from tasks.leases import Lease, LimitMissing, current_holder

_contexts: dict[tuple[Any, ...], Context] = {}
_upserted: set[tuple[str, str]] = set()
RETRY_DELAYS = [1, 2, 4]
# A holder renews its lease while alive (`tasks.leases`); a holder killed with -9 (a Crashed
# run) frees the channel once its lease expires and the server's repossessor notices.
CHANNEL_LOCK_TIMEOUT_S = 600.0
UPSERTS_IN_FLIGHT = 8
LIMITS_PAGE = 200


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


def ensure_channel_limits(channel_ids: list[str]) -> list[str]:
    """Create the channels' limits (size 1) where missing, once per server and channel per
    process; many at once run concurrently (a fleet's). Returns the limit names."""
    names = [lock_name(c) for c in channel_ids]
    api = str(PREFECT_API_URL.value())
    missing = [n for n in dict.fromkeys(names) if (api, n) not in _upserted]
    if len(missing) == 1:
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(missing[0], 1)
    elif missing:
        run_coro_as_sync(_upsert_limits(missing))
    _upserted.update((api, n) for n in missing)
    return names


async def _upsert_limits(names: list[str]) -> None:
    """Upsert many limits: one paged listing finds the existing ones (in steady state nothing
    else is sent), then the missing ones are created concurrently."""
    wanted = set(names)
    gate = asyncio.Semaphore(UPSERTS_IN_FLIGHT)
    async with get_client() as client:
        existing: dict[str, int] = {}
        offset = 0
        while True:
            page = await client.read_global_concurrency_limits(limit=LIMITS_PAGE, offset=offset)
            existing.update((lim.name, lim.limit) for lim in page if lim.name in wanted)
            if len(page) < LIMITS_PAGE:
                break
            offset += LIMITS_PAGE

        async def one(name: str) -> None:
            async with gate:
                if name not in existing:
                    try:
                        await client.create_global_concurrency_limit(
                            GlobalConcurrencyLimitCreate(name=name, limit=1))
                        return
                    except ObjectAlreadyExists:
                        pass  # created meanwhile by someone else: the upsert checks its size
                await client.upsert_global_concurrency_limit_by_name(name, 1)

        await asyncio.gather(*(one(n) for n in names if existing.get(n) != 1))


@contextmanager
def hold_channel_limits(channel_ids: list[str], *, wait_s: float = CHANNEL_LOCK_TIMEOUT_S,
                        holder: Any = None) -> Iterator[Lease]:
    """Hold the limits of these channels as one lease, creating them where missing. A limit
    deleted behind this process's back (it remembers what it created) is created again."""
    names = ensure_channel_limits(channel_ids)
    lease = Lease(names, holder if holder is not None else current_holder())
    try:
        lease.acquire(wait_s)
    except LimitMissing:
        api = str(PREFECT_API_URL.value())
        _upserted.difference_update((api, n) for n in names)
        ensure_channel_limits(channel_ids)
        lease.acquire(wait_s)
    try:
        yield lease
    finally:
        lease.release()


@contextmanager
def channel_lock(channel_id: str, *, wait_s: float = CHANNEL_LOCK_TIMEOUT_S,
                 proceed_without: bool = False) -> Iterator[bool]:
    """Hold the channel's global concurrency limit (upserted first: strict needs it to exist).

    Yields whether the lock is held. With `proceed_without`, a lock still held after `wait_s`
    (typically by a run that was killed: its lease outlives it by up to a minute) is skipped:
    only for operations guarded by `expected_activation_id`, whose conditional write is safe on
    its own (DESIGN §6: the conditional write is the only lock correctness relies on).
    """
    name = lock_name(channel_id)
    held = ExitStack()
    try:
        held.enter_context(hold_channel_limits([channel_id], wait_s=wait_s))
    except TimeoutError:
        if not proceed_without:
            raise
        get_run_logger_safe().warning(
            f"channel lock {name} still held after {wait_s:.0f} s (a crashed run's lease?); "
            "proceeding on the conditional write alone"
        )
        yield False
        return
    with held:
        yield True


def get_run_logger_safe() -> Any:
    import logging

    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("kristal")
