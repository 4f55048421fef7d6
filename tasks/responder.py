"""The failure responder (`kristalctl respond`): a long-running process that subscribes to
`kristal.check.failed` on Prefect's events stream and runs the guarded `rollback` flow in this
process, its imports, Prefect client and domain context already warm, so a report does not wait
for a runner's poll and a fresh Python process (the automation's path).

- Every rollback is guarded by the report's activation (DESIGN §6 invariant 7), as the
  automation's is: of the responder and the automation, whichever comes second finds that
  activation no longer live and changes nothing. The automation stays as the fallback.
- A report is validated before anything runs: the channel from the resource id
  (`kristal.channel.<tenant>.<env>.<region>`), an activation id in the payload, a payload
  `channel_id` (if any) naming the same channel. Anything else is ignored, and said so.
- Reports of one channel are handled one at a time, in arrival order; channels in parallel.
- The stream is re-opened when it drops. Prefect's subscriber backfills the last minute on
  every connection; an event already handled is skipped by its id.
- Every report handled gives one `Handled`: what it did (rolled back / nothing to do / ignored /
  failed), for one line of output.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.events.schemas.events import Event

from kristal.errors import KristalError
from kristal.formats.models import validate_channel_id
from kristal.operations.events import CHECK_FAILED
from tasks.names import CHANNEL_RESOURCE_PREFIX, channel_resource_id

WORKERS = 4  # channels rolled back at once
SEEN_TTL_S = 600.0  # event ids remembered (the subscriber replays the last minute)
SEEN_MAX = 10_000
REOPEN_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after the subscriber's own retries gave up

Result = Literal["rolled_back", "nothing_to_do", "ignored", "failed"]


@dataclass(frozen=True)
class Report:
    """A validated `kristal.check.failed`: which activation of which channel failed, and why."""

    event_id: str
    channel_id: str
    activation_id: str
    reason: str
    occurred: datetime
    delivery_s: float | None = None  # from its occurrence to its arrival here

    def seconds_since(self) -> float:
        """How long ago it was reported."""
        return round((datetime.now(UTC) - self.occurred).total_seconds(), 3)


@dataclass(frozen=True)
class Handled:
    """What the responder did about one event."""

    event_id: str
    result: Result
    message: str
    channel_id: str | None = None
    activation_id: str | None = None
    release_id: int | None = None
    sequence: int | None = None
    flow_run_id: str | None = None
    error_code: str | None = None
    seconds: float | None = None  # from the event's occurrence to the rollback's outcome
    delivery_s: float | None = None  # of which: from its occurrence to its arrival here

    def line(self) -> str:
        where = self.channel_id or "?"
        took = f" ({self.seconds:.2f} s after the report)" if self.seconds is not None else ""
        what = f"error: {self.error_code}: {self.message}" if self.error_code else self.message
        return f"{where}: {self.result.replace('_', ' ')}: {what}{took}"

    def doc(self) -> dict[str, Any]:
        return {"event": CHECK_FAILED, **asdict(self)}


class ReportInvalid(ValueError):
    """An event that is not a report the responder may act on."""


def parse_report(event: Event) -> Report:
    """The report an event carries, or `ReportInvalid` saying what is wrong with it."""
    resource_id = event.resource.id
    if not resource_id.startswith(CHANNEL_RESOURCE_PREFIX):
        raise ReportInvalid(f"resource {resource_id[:120]!r} is not a channel")
    parts = resource_id.removeprefix(CHANNEL_RESOURCE_PREFIX).split(".")
    try:
        channel_id = validate_channel_id("/".join(parts))
    except KristalError as exc:
        raise ReportInvalid(f"resource {resource_id[:120]!r}: {exc.message}") from None
    payload = event.payload or {}
    activation_id = payload.get("activation_id")
    if not isinstance(activation_id, str) or not 0 < len(activation_id) <= 100:
        raise ReportInvalid("the payload names no activation_id (a report must say which "
                            "activation failed, or a later release could be rolled back)")
    named = payload.get("channel_id")
    if named is not None and named != channel_id:
        raise ReportInvalid(f"the payload's channel_id {str(named)[:100]!r} is not the "
                            f"resource's channel {channel_id}")
    reason = payload.get("reason")
    reason = reason[:500] if isinstance(reason, str) and reason.strip() else "no reason given"
    return Report(event_id=str(event.id), channel_id=channel_id, activation_id=activation_id,
                  reason=reason, occurred=event.occurred,
                  delivery_s=round((datetime.now(UTC) - event.occurred).total_seconds(), 3))


class Responder:
    """Reads reports off the stream and hands each to `handle` (`flows.respond.roll_back`:
    the rollback flow) on a worker thread, one at a time per channel; `on_handled` gets every
    outcome, `on_status` the stream's comings and goings."""

    def __init__(self, *, handle: Callable[[Report], Handled],
                 on_handled: Callable[[Handled], None], on_status: Callable[[str], None],
                 channel_ids: Sequence[str] = (), workers: int = WORKERS) -> None:
        self._on_handled = on_handled
        self._on_status = on_status
        self._resources = [channel_resource_id(c) for c in channel_ids]
        self._handle = handle
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="respond")
        self._mutex = threading.Lock()
        self._pending: dict[str, deque[Report]] = {}
        self._seen: OrderedDict[str, float] = OrderedDict()

    def event_filter(self) -> EventFilter:
        resource = (EventResourceFilter(id=self._resources) if self._resources
                    else EventResourceFilter(id_prefix=[CHANNEL_RESOURCE_PREFIX]))
        return EventFilter(event=EventNameFilter(name=[CHECK_FAILED]), resource=resource)

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop` is set, then let the reports in hand finish."""
        listener = asyncio.create_task(self._listen())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({listener, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (listener, stopping):
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
            await asyncio.to_thread(self._pool.shutdown, wait=True)

    async def _listen(self) -> None:
        failures = 0
        opened_before = False
        while True:
            try:
                async with get_events_subscriber(filter=self.event_filter(),
                                                 reconnect_on_clean_close=True) as subscriber:
                    what = ", ".join(self._resources) or f"{CHANNEL_RESOURCE_PREFIX}*"
                    self._on_status(f"{'re-opened the stream' if opened_before else 'listening'}"
                                    f": {CHECK_FAILED} for {what}")
                    opened_before, failures = True, 0
                    async for event in subscriber:
                        self.accept(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream dropped for good: open it again
                delay = REOPEN_DELAYS_S[min(failures, len(REOPEN_DELAYS_S) - 1)]
                failures += 1
                self._on_status(f"the event stream is down ({type(exc).__name__}: "
                                f"{str(exc)[:200]}); opening it again in {delay:.0f} s")
                await asyncio.sleep(delay)
            else:
                self._on_status("the event stream ended; opening it again")

    def accept(self, event: Event) -> None:
        """Validate one event and queue it behind its channel's earlier reports."""
        event_id = str(event.id)
        if not self._first_sighting(event_id):
            return
        try:
            report = parse_report(event)
        except ReportInvalid as exc:
            self._on_handled(Handled(event_id=event_id, result="ignored", message=str(exc)))
            return
        with self._mutex:
            queue = self._pending.setdefault(report.channel_id, deque())
            queue.append(report)
            if len(queue) > 1:
                return  # this channel's drain is running and will get to it
        self._pool.submit(self._drain, report.channel_id)

    def _first_sighting(self, event_id: str) -> bool:
        now = time.monotonic()
        while self._seen and (len(self._seen) > SEEN_MAX
                              or next(iter(self._seen.values())) < now - SEEN_TTL_S):
            self._seen.popitem(last=False)
        if event_id in self._seen:
            return False
        self._seen[event_id] = now
        return True

    def _drain(self, channel_id: str) -> None:
        while True:
            with self._mutex:
                report = self._pending[channel_id][0]
            try:
                handled = self._handle(report)
            except Exception as exc:  # a handler's own bug: say so, keep going
                handled = Handled(event_id=report.event_id, result="failed",
                                  channel_id=report.channel_id, error_code="internal_error",
                                  activation_id=report.activation_id,
                                  message=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                self._on_handled(handled)
            with self._mutex:
                queue = self._pending[channel_id]
                queue.popleft()
                if not queue:
                    del self._pending[channel_id]
                    return
