"""Sending one event to Prefect and knowing it arrived: a POST to the events API, answered
204, instead of `emit_event`'s background queue, which drops an event it cannot deliver and
says nothing (a monitor's `report-failure` must not print success for a lost report).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from kristal.errors import StorageUnavailable


def deliver_event(name: str, *, resource: dict[str, str], payload: dict[str, Any]) -> UUID:
    """Post the event; its id once the server took it, else `StorageUnavailable` (exit 4)."""
    from prefect.client.orchestration import get_client
    from prefect.events import Event
    from prefect.settings import PREFECT_API_URL

    event = Event(event=name, resource=resource, payload=payload)
    where = PREFECT_API_URL.value() or "(no PREFECT_API_URL)"
    try:
        with get_client(sync_client=True) as client:
            response = client.request("POST", "/events",
                                      json=[event.model_dump(mode="json")])
    except Exception as exc:  # connection refused, timeouts, an HTTP error status
        raise StorageUnavailable(
            f"the Prefect API at {where} did not take event {name} "
            f"({type(exc).__name__}: {exc}); nothing was reported") from None
    if response.status_code != 204:
        raise StorageUnavailable(f"the Prefect API at {where} answered {response.status_code} "
                                 f"to event {name}; nothing was reported")
    return event.id
