"""What a run says about itself in the Prefect UI: a name that says what it does (`activate
acme/prod/eu-west-1 → 4`), tags to filter runs by (channel, tenant, environment, region,
release), and a final state whose message says how it ended (`nothing to do`, `halted`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any
from uuid import UUID

from prefect.states import Completed, Failed, State

from kristal.formats.models import validate_channel_id
from tasks.run_log import run_logger

MAX_CHANNEL_TAGS = 20  # a fleet of hundreds is tagged by its release, not by every channel

# Who wants to hear of a run this process starts or submits (the CLI prints its URL).
_listeners: list[Callable[[str, str, str | None], None]] = []
_announced: set[str] = set()


def on_run(listener: Callable[[str, str, str | None], None]) -> None:
    """Call `listener(run_id, name, ui_url)` once for each run started or submitted here."""
    _listeners.append(listener)


_notice_listeners: list[Callable[[str, str | None], None]] = []


def on_notice(listener: Callable[[str, str | None], None]) -> None:
    """Call `listener(message, run_url)` for what a run here needs a person to know now (a
    paused run waiting for a decision)."""
    _notice_listeners.append(listener)


def notice(message: str, *, url: str | None = None) -> None:
    """`url`: the page the message is about (default: this run's; "" for none)."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if url is None:
        url = run_ui_url(str(run_id)) if run_id else ""
    run_logger().info(f"{message}: {url}" if url else message)
    for listener in _notice_listeners:
        listener(message, url or None)


def announce(run_id: str, name: str) -> None:
    if run_id in _announced or not _listeners:
        return
    _announced.add(run_id)
    url = run_ui_url(run_id)
    for listener in _listeners:
        listener(run_id, name, url)


def run_ui_url(run_id: str) -> str | None:
    """The run's page in the UI (`/runs/flow-run/ID`; `prefect.runtime`'s own helper gives a
    `/flow-runs/...` path the UI does not serve)."""
    return _url_for("flow-run", run_id)


def task_run_ui_url(task_run_id: str) -> str | None:
    return _url_for("task-run", task_run_id)


def _url_for(kind: str, obj_id: str) -> str | None:
    from prefect.utilities.urls import url_for

    try:
        return url_for(kind, obj_id=obj_id)
    except Exception:  # no UI URL can be derived (no API URL): the id still says which run
        return None


def channel_tags(channel_id: str) -> list[str]:
    tenant, environment, region = validate_channel_id(channel_id).split("/")
    return [f"channel:{channel_id}", f"tenant:{tenant}", f"environment:{environment}",
            f"region:{region}"]


def fleet_tags(channel_ids: Sequence[str]) -> list[str]:
    tags: set[str] = set()
    for channel in channel_ids[:MAX_CHANNEL_TAGS]:
        tags.update(channel_tags(channel))
    return sorted(tags)


def label_run(name: str, tags: Iterable[str] = ()) -> None:
    """Rename the current flow run and add `tags` to it (one API call). A run created from the
    UI or by an automation gets a random name at creation; this is the one place that knows
    what it is about. A failed label is logged, never a reason to fail the run."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return
    try:
        merged = sorted({*flow_run.get_tags(), *tags})
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(str(run_id)), name=name, tags=merged)
    except Exception as exc:  # a view: never fail the run for it
        run_logger().warning(f"run not renamed to {name!r}: {type(exc).__name__}: {exc}")
    announce(str(run_id), name)


def ended(outcome: Any, *, message: str, failed: bool = False) -> State[Any]:
    """The run's final state carrying `outcome` as its result and `message` in the UI (a
    flow that returns a state ends in it; its caller still gets `outcome`)."""
    return (Failed if failed else Completed)(message=message, data=outcome)


def release_arrow(release_id: int | None, exchange_id: str | None) -> str:
    if release_id is not None:
        return f"→ {release_id}"
    return f"→ exchange {exchange_id[:19]}…" if exchange_id else "→ ?"
