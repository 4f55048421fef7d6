"""Channel locks: one Prefect global concurrency limit per channel (size 1, created where
missing), held as a lease (`tasks.leases`). A courtesy lock that avoids wasted work; the
conditional write of the pointer is the only lock correctness relies on (DESIGN §6).

`channel_lock` holds one channel's for an operation; `WaveLock` holds a fleet wave's channels
from a thread of its own, so the next wave's can be acquired while the current wave runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL
from prefect.utilities.asyncutils import run_coro_as_sync

from tasks.leases import Lease, LimitMissing, current_holder
from tasks.names import lock_name
from tasks.run_log import run_logger

log = logging.getLogger("kristal.locks")
_held: contextvars.ContextVar[tuple[Lease, ...]] = contextvars.ContextVar(
    "kristal_held_leases", default=())
_upserted: set[tuple[str, str]] = set()
UPSERTS_IN_FLIGHT = 8
LIMITS_PAGE = 200
WAVE_LOCK_WAIT_S = 600.0


def ensure_channel_limits(channel_ids: Sequence[str]) -> list[str]:
    """Create the channels' limits (size 1) where missing, once per server and channel per
    process; many at once run concurrently (a fleet's). Returns the limit names."""
    names = [lock_name(c) for c in channel_ids]
    api = str(PREFECT_API_URL.value())
    missing = [n for n in dict.fromkeys(names) if (api, n) not in _upserted]
    if len(missing) == 1:
        with get_client(sync_client=True) as client:
            try:
                client.upsert_global_concurrency_limit_by_name(missing[0], 1)
            except ObjectAlreadyExists:
                # Another process created it between the upsert's read and its create (two
                # workers activating one new channel: seen on PostgreSQL); now it reads back.
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
def hold_channel_limits(channel_ids: Sequence[str], *, wait_s: float,
                        holder: Any = None) -> Iterator[Lease]:
    """Hold the limits of these channels as one lease, creating them where missing. A limit
    deleted behind this process's back (it remembers what it created) is created again."""
    names = ensure_channel_limits(channel_ids)
    lease = Lease(names, holder if holder is not None else current_holder(),
                  on_wait=say_who_holds)
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


def say_who_holds(client: Any, names: list[str]) -> None:
    """Tell whoever waits (the run's log, the CLI) who holds these locks and where to see it."""
    from tasks import lock_registry
    from tasks.run_labels import notice, run_ui_url, task_run_ui_url

    for name in names:
        entry = lock_registry.read(client, name)
        if entry is None:
            notice(f"waiting for {name}: its holder left no record (a process outside any run, "
                   "or gone: `kristalctl unlock` frees a lock whose holder is gone)", url="")
            continue
        holder = entry.holder or {}
        url = (run_ui_url(str(holder["id"])) if holder.get("type") == "flow_run"
               else task_run_ui_url(str(holder["id"])) if holder.get("id") else None)
        notice(f"waiting for {name}: held by {entry.describe()}", url=url or "")


@contextmanager
def channel_lock(channel_ids: Sequence[str], *, wait_s: float,
                 proceed_without: bool = False) -> Iterator[bool]:
    """Hold the channels' global concurrency limits (created first: strict needs them).

    Yields whether the lock is held. With `proceed_without`, a lock still held after `wait_s`
    (typically by a run that was killed: its lease outlives it by up to a minute) is skipped:
    only for operations guarded by `expected_activation_id`, whose conditional write is safe on
    its own (DESIGN §6: the conditional write is the only lock correctness relies on).
    """
    names = ", ".join(lock_name(c) for c in channel_ids)
    held = ExitStack()
    try:
        held_lease = held.enter_context(hold_channel_limits(channel_ids, wait_s=wait_s))
    except TimeoutError:
        if not proceed_without:
            raise
        run_logger().warning(
            f"channel lock {names} still held after {wait_s:.0f} s (a crashed run's lease?); "
            "proceeding on the conditional write alone"
        )
        yield False
        return
    with held:
        token = _held.set((*_held.get(), held_lease))
        try:
            yield True
        finally:
            _held.reset(token)


def lease_lost() -> bool:
    """Whether a channel lock this context holds (`channel_lock`) has lost its lease."""
    return any(not lease.held for lease in _held.get())


class WaveLock:
    """One wave's channel limits, held by a thread of its own from `start()` to `release()`.

    Acquiring in the background lets the next wave's acquisition overlap the running wave, and
    releasing does not hold up the next wave. A lock lost while held (its lease could not be
    renewed) shows in `held`: channels not yet started are then not started.
    """

    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = list(channels)
        self.names = [lock_name(c) for c in channels]
        self._acquired = threading.Event()
        self._release = threading.Event()
        self._error: BaseException | None = None
        self._lease: Lease | None = None
        self._holder = current_holder()  # the flow run, taken in the flow's thread
        # In a copy of the flow's context: its settings, and its API client (no new one).
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._hold,), daemon=True,
                                        name=f"kristal-wave-lock-{self.names[0]}")

    def start(self) -> WaveLock:
        self._thread.start()
        return self

    def _hold(self) -> None:
        try:
            with hold_channel_limits(self.channels, wait_s=WAVE_LOCK_WAIT_S,
                                     holder=self._holder) as lease:
                self._lease = lease
                self._acquired.set()
                self._release.wait()
        except BaseException as exc:  # handed to the flow thread waiting in wait()
            self._error = exc
        finally:
            self._acquired.set()

    def wait(self) -> None:
        """Until the locks are held; raises what acquiring them raised."""
        self._acquired.wait()
        if self._error is not None:
            raise self._error

    @property
    def held(self) -> bool:
        return (self._lease is not None and self._lease.held
                and not self._release.is_set())

    def release(self) -> None:
        self._release.set()

    def join(self, timeout_s: float = 30.0) -> None:
        self._release.set()
        self._thread.join(timeout_s)


def unlock_channel(channel_id: str) -> dict[str, Any]:
    """Free a channel lock whose holder is gone (`kristalctl unlock`): refused with
    `channel_locked` while its holder still renews; nothing to do when it is free."""
    from kristal.errors import ChannelLocked
    from tasks import lock_registry

    name = ensure_channel_limits([channel_id])[0]
    with get_client(sync_client=True) as client:
        taken = lock_registry.active_slots(client, name)
        entry = lock_registry.read(client, name)
        out: dict[str, Any] = {"channel_id": channel_id, "lock": name, "active_slots": taken,
                               "holder": entry.describe() if entry else None, "freed": False}
        if taken == 0:
            return out
        if entry is not None and entry.age_s() <= lock_registry.stale_after_s():
            raise ChannelLocked(f"{name} is held by {entry.describe()}: that run is alive; "
                                "wait for it or cancel it first")
        lock_registry.free(client, name)
    out["freed"] = True
    return out

