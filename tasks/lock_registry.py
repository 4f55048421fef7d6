"""Who holds a channel lock, kept beside Prefect's lease (a Prefect Variable per lease) so
that a slot whose holder is gone can be told from one that is merely busy.

Prefect's API does not list a global limit's lease holders, and a lease kept in the server's
memory vanishes with a server restart while the slot it took stays taken: every later
acquisition would wait for good. A holder writes `{locks, lease_id, holder, renewed_at}` (one
variable per lease, tagged with its lock names) when it acquires and again each time it renews;
a slot taken while its freshest entry is missing or older than the stale age
(`KRISTAL_LOCK_STALE_S`, four renewals by default) has no live holder, and is freed
(`free_stale`). Everything here is best effort: the conditional write of
the pointer is the only lock correctness relies on (DESIGN §6).
"""

from __future__ import annotations

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


def variable_name(lease_id: str) -> str:
    return PREFIX + lease_id.replace("-", "")


@dataclass(frozen=True)
class Holder:
    """A registry entry: who took the locks, under which lease, when last seen alive."""

    locks: tuple[str, ...]
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
          holder: dict[str, Any] | None, *, first: bool) -> None:
    """Record (`first`) or refresh this lease as the holder of its locks: one entry per lease,
    tagged with each lock's name, so a fleet wave's many locks cost one write."""
    value = {"locks": limit_names, "lease_id": lease_id, "holder": holder,
             "renewed_at": datetime.now(UTC).isoformat()}
    name = variable_name(lease_id)
    try:
        if first:
            response = _request(client, "POST", "/variables/",
                                {"name": name, "value": value, "tags": limit_names})
        else:
            response = _request(client, "PATCH", f"/variables/name/{name}", {"value": value})
            if response.status_code == 404:  # lost with the server's data: write it again
                response = _request(client, "POST", "/variables/",
                                    {"name": name, "value": value, "tags": limit_names})
        response.raise_for_status()
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("could not record the holder of %s: %s", ", ".join(limit_names), exc)


def holders(client: SyncPrefectClient, limit_name: str) -> list[Holder]:
    """Every entry naming this lock, freshest first."""
    try:
        response = _request(client, "POST", "/variables/filter",
                            {"variables": {"tags": {"all_": [limit_name]}}, "limit": 50})
        response.raise_for_status()
        found = []
        for variable in response.json():
            value = variable.get("value") or {}
            found.append(Holder(locks=tuple(value["locks"]), lease_id=str(value["lease_id"]),
                                holder=value.get("holder"),
                                renewed_at=datetime.fromisoformat(str(value["renewed_at"]))))
        return sorted(found, key=lambda h: h.renewed_at, reverse=True)
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.warning("could not read the holders of %s: %s", limit_name, exc)
        return []


def read(client: SyncPrefectClient, limit_name: str) -> Holder | None:
    """The freshest holder entry of this lock, if any."""
    found = holders(client, limit_name)
    return found[0] if found else None


def clear(client: SyncPrefectClient, lease_id: str) -> None:
    """Remove this lease's entry."""
    try:
        _request(client, "DELETE", f"/variables/name/{variable_name(lease_id)}")
    except httpx.HTTPError as exc:
        log.warning("could not clear the holder entry of lease %s: %s", lease_id, exc)


def active_slots(client: SyncPrefectClient, limit_name: str) -> int:
    response = _request(client, "GET", f"/v2/concurrency_limits/{limit_name}")
    response.raise_for_status()
    return int(response.json().get("active_slots", 0))


def free(client: SyncPrefectClient, limit_name: str) -> None:
    """Set the lock's taken slots to zero (a channel lock has one) and forget its stale
    holders (a live holder's entry is never removed here: `free` follows a staleness check)."""
    _request(client, "PATCH", f"/v2/concurrency_limits/{limit_name}",
             {"active_slots": 0}).raise_for_status()
    for entry in holders(client, limit_name):
        if entry.age_s() > stale_after_s():
            clear(client, entry.lease_id)


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
