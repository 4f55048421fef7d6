"""Channel locks as Prefect global-concurrency leases: acquired, renewed and released here.

Prefect's `concurrency()` leaves a 503 from the API to the client's generic retry, which waits
2 s, then 4 s (and Prefect 3.9 sleeps those 2 s even with PREFECT_CLIENT_MAX_RETRIES=0, before
returning the 503). On the SQLite-backed server a 503 (`database is locked`, when two writers
collide) was measured on lease acquisitions several times per fleet run; a channel lock sits on
the rollback fast path and on every fleet wave, so acquire and release are sent once each
through the client's own connection and a busy answer is asked again after 50 ms. The lease is
kept alive by a thread of its own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import httpx
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import ConcurrencyLeaseHolder

from kristal.config import lease_renew_s
from tasks import lock_registry

LEASE_S = 60.0  # the server refuses shorter leases
HEAL_CHECK_S = 2.0  # while refused (423): how often to look for a holder that is gone
BUSY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)  # 503/502/429 and dropped connections
LOCKED_BACKOFF_MAX_S = 1.0  # a 423 (held by someone else): re-ask at least this often
_BUSY_STATUSES = frozenset({429, 502, 503, 504})

log = logging.getLogger("kristal.leases")


class LimitMissing(RuntimeError):
    """A named limit does not exist, so holding the others would not lock everything asked."""


def _send_once(client: SyncPrefectClient, path: str, payload: dict[str, Any]) -> httpx.Response:
    """POST once: the client's base URL, auth headers and connection, none of its retries."""
    http = client._client  # its send() wraps the retry loop described above
    response = httpx.Client.send(http, http.build_request("POST", path, json=payload))
    response.raise_for_status()
    return response


def current_holder() -> ConcurrencyLeaseHolder | None:
    """The task run or flow run this thread works for, shown in the UI as the lock's holder."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task_ctx.task_run.id)
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_ctx.flow_run.id)
    return None


class Lease:
    """One slot of each named limit, held from `acquire()` until `release()`.

    One API client serves the whole lease (acquire, the renewal thread, release): inside a
    flow run it is the run's own client; elsewhere a new client costs ~20 ms of TLS set-up,
    paid once here rather than per call.
    """

    def __init__(self, names: list[str], holder: ConcurrencyLeaseHolder | None = None, *,
                 on_wait: Callable[[SyncPrefectClient, list[str]], None] | None = None) -> None:
        self.names = sorted(set(names))
        self.holder = holder
        self.on_wait = on_wait  # told once when a holder makes this lease wait
        self.lease_id: UUID | None = None
        self.acquire_attempts = 0
        self._client: SyncPrefectClient | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.lease_id is not None and not self._lost.is_set()

    def acquire(self, wait_s: float) -> None:
        """Take the slots, waiting up to `wait_s` for a holder to let go; TimeoutError after."""
        self._client = get_client(sync_client=True).__enter__()
        try:
            self.lease_id = self._increment(self._client, wait_s)
        except BaseException:
            self._close()
            raise
        self._record(self._client, first=True)
        self._renewer = threading.Thread(target=self._renew, args=(self._client,), daemon=True,
                                         name=f"kristal-lease-{self.names[0]}")
        self._renewer.start()

    def _record(self, client: SyncPrefectClient, *, first: bool = False) -> None:
        if self.lease_id is not None:
            holder = self.holder.model_dump(mode="json") if self.holder is not None else None
            lock_registry.write(client, self.names, str(self.lease_id), holder, first=first)

    def _increment(self, client: SyncPrefectClient, wait_s: float) -> UUID:
        deadline = time.monotonic() + wait_s
        busy = 0
        locked_since: float | None = None  # first refusal of this wait (423)
        healed_at = 0.0
        payload: dict[str, Any] = {"names": self.names, "slots": 1, "mode": "concurrency",
                                   "lease_duration": LEASE_S}
        if self.holder is not None:
            payload["holder"] = self.holder.model_dump(mode="json")
        while True:
            self.acquire_attempts += 1
            pause: float
            try:
                response = _send_once(client, "/v2/concurrency_limits/increment-with-lease",
                                      payload)
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                log.debug("acquire %s: %s %s", self.names, status, exc.response.text[:200])
                if status == 423:
                    pause = min(_retry_after(exc.response), LOCKED_BACKOFF_MAX_S)
                    now = time.monotonic()
                    if locked_since is None and self.on_wait is not None:
                        self.on_wait(client, self.names)
                    locked_since = locked_since if locked_since is not None else now
                    if now - healed_at >= HEAL_CHECK_S:
                        healed_at = now
                        if lock_registry.free_stale(client, self.names, now - locked_since):
                            pause = 0.0
                elif status in _BUSY_STATUSES:
                    pause = BUSY_BACKOFF_S[min(busy, len(BUSY_BACKOFF_S) - 1)]
                    busy += 1
                else:
                    raise
            except httpx.TransportError:
                pause = BUSY_BACKOFF_S[min(busy, len(BUSY_BACKOFF_S) - 1)]
                busy += 1
            else:
                body = response.json()
                lease_id = UUID(body["lease_id"])
                granted = {limit["name"] for limit in body.get("limits", [])}
                if granted != set(self.names):
                    self._decrement(client, lease_id)
                    raise LimitMissing(
                        f"concurrency limits {sorted(set(self.names) - granted)} do not exist")
                return lease_id
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"concurrency limits {self.names} still held after {wait_s:.0f} s")
            time.sleep(min(pause, left))

    def _renew(self, client: SyncPrefectClient) -> None:
        assert self.lease_id is not None
        lease_id, last_renewed = self.lease_id, time.monotonic()
        every = lease_renew_s()
        while not self._stop.wait(every):
            try:
                client.renew_concurrency_lease(lease_id, lease_duration=LEASE_S)
                last_renewed = time.monotonic()
                self._record(client)  # the heartbeat others judge this holder by
            except Exception as exc:  # any failure: try again while the lease lasts
                # 410 (or 404): the server no longer knows the lease (it expired, or the
                # server restarted with its leases in memory): it is lost, not late.
                gone = (isinstance(exc, httpx.HTTPStatusError)
                        and exc.response.status_code in (404, 410))
                if gone or time.monotonic() - last_renewed >= LEASE_S - every:
                    self._lost.set()
                    log.warning("lease on %s lost (%s): channels not yet started will not "
                                "start under it", self.names, exc)
                    return
                log.warning("lease renewal on %s failed, will retry: %s", self.names, exc)

    def release(self) -> None:
        """Let go (idempotent). A release that cannot reach the server is left to expiry."""
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
        lease_id, self.lease_id = self.lease_id, None
        try:
            if lease_id is not None and self._client is not None:
                self._decrement(self._client, lease_id)
                lock_registry.clear(self._client, str(lease_id))
        finally:
            self._close()

    def _decrement(self, client: SyncPrefectClient, lease_id: UUID) -> None:
        for pause in (*BUSY_BACKOFF_S[:4], None):
            try:
                _send_once(client, "/v2/concurrency_limits/decrement-with-lease",
                           {"lease_id": str(lease_id)})
                return
            except (httpx.HTTPStatusError, httpx.TransportError) as exc:
                busy = (isinstance(exc, httpx.TransportError)
                        or exc.response.status_code in _BUSY_STATUSES)
                if pause is None or not busy:
                    log.warning("could not release the lease on %s (it expires within %.0f s "
                                "if still there): %s", self.names, LEASE_S, exc)
                    return
                time.sleep(pause)

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.__exit__(None, None, None)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


@contextlib.contextmanager
def hold_limits(names: list[str], *, wait_s: float,
                holder: ConcurrencyLeaseHolder | None = None) -> Iterator[Lease]:
    """Hold one slot of each limit for the block (a TimeoutError if not had within `wait_s`)."""
    lease = Lease(names, holder if holder is not None else current_holder())
    lease.acquire(wait_s)
    try:
        yield lease
    finally:
        lease.release()
