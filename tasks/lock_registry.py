"""Who holds a channel lock, kept beside Prefect's lease (a Prefect Variable per lock) so that
a slot whose holder is gone can be told from one that is merely busy.

Prefect's API does not list a global limit's lease holders, and a lease kept in the server's
memory vanishes with a server restart while the slot it took stays taken: every later
acquisition would wait for good. A holder writes `{lock, lease_id, holder, renewed_at}` when it
acquires and again each time it renews its lease; a slot taken while its entry is missing or
older than the stale age (`KRISTAL_LOCK_STALE_S`, four renewals by default) has no live
holder, and is freed (`free_stale`). Everything here is best effort: the conditional write of
the pointer is the only lock correctness relies on (DESIGN §6).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient

from kristal.config import lease_renew_s, lock_stale_s

log = logging.getLogger("kristal.locks")
PREFIX = "kristal_lock_"


def stale_after_s() -> float:
    """A registry entry older than this names no live holder."""
    return lock_stale_s() or 4 * lease_renew_s()


def variable_name(limit_name: str) -> str:
    return PREFIX + hashlib.sha256(limit_name.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Holder:
    """A registry entry: who took the lock, under which lease, when last seen alive."""

    lock: str
    lease_id: str
    holder: dict[str, Any] | None
    renewed_at: datetime

    def age_s(self) -> float:
        return (datetime.now(UTC) - self.renewed_at).total_seconds()

    def describe(self) -> str:
        who = (f"{self.holder.get('type', 'run').replace('_', ' ')} {self.holder.get('id')}"
               if self.holder else "a process outside any run")
        return f"{who}, lease {self.lease_id}, last renewed {self.age_s():.0f} s ago"


def _request(client: SyncPrefectClient, method: str, path: str,
             payload: dict[str, Any] | None = None) -> httpx.Response:
    http = client._client  # once, none of the client's own retries (see tasks.leases)
    return httpx.Client.send(http, http.build_request(method, path, json=payload))


def write(client: SyncPrefectClient, limit_names: list[str], lease_id: str,
          holder: dict[str, Any] | None) -> None:
    """Record (or refresh) this lease as the holder of each lock."""
    now = datetime.now(UTC).isoformat()
    for name in limit_names:
        value = {"lock": name, "lease_id": lease_id, "holder": holder, "renewed_at": now}
        try:
            path = f"/variables/name/{variable_name(name)}"
            response = _request(client, "PATCH", path, {"value": value})
            if response.status_code == 404:
                response = _request(client, "POST", "/variables/",
                                    {"name": variable_name(name), "value": value})
            response.raise_for_status()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("could not record the holder of %s: %s", name, exc)


def read(client: SyncPrefectClient, limit_name: str) -> Holder | None:
    try:
        response = _request(client, "GET", f"/variables/name/{variable_name(limit_name)}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        value = response.json().get("value") or {}
        return Holder(lock=str(value["lock"]), lease_id=str(value["lease_id"]),
                      holder=value.get("holder"),
                      renewed_at=datetime.fromisoformat(str(value["renewed_at"])))
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.warning("could not read the holder of %s: %s", limit_name, exc)
        return None


def clear(client: SyncPrefectClient, limit_names: list[str], lease_id: str | None) -> None:
    """Remove the entries this lease wrote (another lease's entry is left alone)."""
    for name in limit_names:
        entry = read(client, name)
        if entry is not None and (lease_id is None or entry.lease_id == lease_id):
            try:
                _request(client, "DELETE", f"/variables/name/{variable_name(name)}")
            except httpx.HTTPError as exc:
                log.warning("could not clear the holder of %s: %s", name, exc)


def active_slots(client: SyncPrefectClient, limit_name: str) -> int:
    response = _request(client, "GET", f"/v2/concurrency_limits/{limit_name}")
    response.raise_for_status()
    return int(response.json().get("active_slots", 0))


def free(client: SyncPrefectClient, limit_name: str) -> None:
    """Set the lock's taken slots to zero (a channel lock has one) and forget its holder."""
    _request(client, "PATCH", f"/v2/concurrency_limits/{limit_name}",
             {"active_slots": 0}).raise_for_status()
    clear(client, [limit_name], None)


def free_stale(client: SyncPrefectClient, limit_names: list[str],
               locked_for_s: float) -> list[str]:
    """Free each lock whose holder is gone: its entry is older than the stale age, or it has
    had none while the lock stayed taken for longer than that. Returns what was freed."""
    freed = []
    limit = stale_after_s()
    for name in limit_names:
        entry = read(client, name)
        gone = entry.age_s() > limit if entry is not None else locked_for_s > limit
        if not gone:
            continue
        try:
            if active_slots(client, name) == 0:
                continue
            free(client, name)
        except httpx.HTTPError as exc:
            log.warning("could not free the stale lock %s: %s", name, exc)
            continue
        log.warning("freed channel lock %s: %s", name,
                    f"its holder ({entry.describe()}) is gone" if entry is not None else
                    f"taken for {locked_for_s:.0f} s with no holder recorded (a lease lost to "
                    "a Prefect server restart?)")
        freed.append(name)
    return freed
