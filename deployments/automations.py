"""The automations kristal-activate relies on, applied idempotently (by name): roll back a failed
or crashed activate/downgrade run, roll back on `kristal.check.failed`, carry follow-ups to the
tracker, and mark a run whose heartbeats stopped (its worker died with it) Crashed, which the
first automation then rolls back.

`kristalctl serve` applies them for the deployments it serves; `kristalctl automations apply`
applies them for deployments already on the server (`kristalctl deploy`, `prefect deploy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, cast
from uuid import UUID

from prefect.automations import (
    Automation,
    CallWebhook,
    EventTrigger,
    Posture,
    RunDeployment,
)
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState

from kristal.config import ServeSettings, zombie_after_s
from kristal.operations import events
from tasks.names import (
    AUTO_ROLLBACK_ON_CHECK_FAILED,
    AUTO_ROLLBACK_ON_FAILED_RUN,
    CHANNEL_RESOURCE_PREFIX,
    CRASH_ZOMBIE_RUNS,
    FOLLOWUP_BLOCK,
    FOLLOWUP_NOTIFICATION,
)


@dataclass(frozen=True)
class Registered:
    ids: dict[str, UUID]  # flow name -> deployment id


# Runs of our deployments beat every HEARTBEAT_S (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, which
# Prefect needs at 30 s or more); one silent for `KRISTAL_ZOMBIE_AFTER_S` (default 90) is
# marked Crashed.
HEARTBEAT_S = 30


def _definition(automation: Automation) -> dict[str, Any]:
    # Python mode, not JSON: a trigger's `expect` and `after` are sets, and JSON mode lists a
    # set in its iteration order, which for equal sets depends on the order they were filled
    # in (the server's list, read back, against ours) under one hash seed in eight: the re-apply
    # then read as a change and reset the zombie trigger (seen in CI).
    return automation.model_dump(exclude={"id"})


@dataclass(frozen=True)
class Applied:
    automation: Automation
    outcome: Literal["created", "updated", "unchanged"]
    changed: tuple[str, ...] = ()  # the definition's fields an update changed


def _changed_fields(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    fields: list[str] = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            fields += _changed_fields(old, new, f"{prefix}{key}.")
        elif old != new:
            fields.append(f"{prefix}{key}")
    return fields


def _upsert(automation: Automation) -> Applied:
    """Create, or update only if the definition changed: an update resets the server's state
    of the automation's triggers, so a proactive one (the zombie-run detection) would forget
    the runs it is waiting on and never fire for a host that died just before."""
    try:
        existing = Automation.read(name=automation.name)
    except ValueError:
        existing = None
    if existing is None:
        return Applied(cast(Automation, automation.create()), "created")
    current = cast(Automation, existing)
    automation.id = current.id
    changed = _changed_fields(_definition(current), _definition(automation))
    if not changed:
        return Applied(automation, "unchanged")
    automation.update()
    return Applied(automation, "updated", tuple(changed))


def _rollback_parameters(**request: Any) -> dict[str, Any]:
    return {"request": {"operator": "automation", **request}}


def automations(registered: Registered, followup_block_id: UUID | None) -> list[Automation]:
    zombie_after = timedelta(seconds=zombie_after_s())
    rollback_id = registered.ids["rollback"]
    watched = [registered.ids[name] for name in ("activate", "downgrade") if name in registered.ids]
    result = [
        Automation(
            name=AUTO_ROLLBACK_ON_FAILED_RUN,
            description="A failed or crashed activate/downgrade run rolls back whatever it "
            "switched (nothing if it failed before its switch or already rolled back).",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match_related={"prefect.resource.id": sorted(
                    f"prefect.deployment.{d}" for d in watched)},
                posture=Posture.Reactive, threshold=1, within=0,
            ),
            actions=[RunDeployment(
                source="selected", deployment_id=rollback_id,
                parameters=_rollback_parameters(
                    channel_id="{{ flow_run.parameters.request.channel_id }}",
                    reason="automation: run {{ flow_run.name }} ended {{ flow_run.state.name }}",
                    correlation_id="{{ flow_run.id | string }}",
                    failed_flow_run_id="{{ flow_run.id | string }}",
                ),
            )],
        ),
        Automation(
            name=AUTO_ROLLBACK_ON_CHECK_FAILED,
            description="A monitor reported a failed check for a live activation.",
            trigger=EventTrigger(
                expect={events.CHECK_FAILED},
                match={"prefect.resource.id": f"{CHANNEL_RESOURCE_PREFIX}*"},
                for_each={"prefect.resource.id"},
                posture=Posture.Reactive, threshold=1, within=0,
            ),
            actions=[RunDeployment(
                source="selected", deployment_id=rollback_id,
                parameters=_rollback_parameters(
                    channel_id=f"{{{{ event.resource.id | replace('{CHANNEL_RESOURCE_PREFIX}', '') "
                    "| replace('.', '/') }}",
                    reason="monitor: {{ event.payload.reason }}",
                    correlation_id="{{ event.id | string }}",
                    expected_activation_id="{{ event.payload.activation_id }}",
                    automatic=True,
                ),
            )],
        ),
        Automation(
            name=CRASH_ZOMBIE_RUNS,
            description="A run of ours whose heartbeats stopped (its worker died with it) is "
            "marked Crashed; a crashed activate/downgrade is then rolled back.",
            trigger=EventTrigger(
                # Running too (the server emits it): a run killed before its first heartbeat
                # reached the server (its events go out from a background queue) is found.
                after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
                expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                        "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                        "prefect.flow-run.Crashed"},
                match={"prefect.resource.id": ["prefect.flow-run.*"]},
                # Sorted: the ids come in whatever order the deployments were registered, and
                # a reordered list reads as a changed definition (an update resets the
                # trigger's state: a host that just died would never be marked).
                match_related={"prefect.resource.id": sorted(
                    f"prefect.deployment.{d}" for d in registered.ids.values())},
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive, threshold=1, within=zombie_after,
            ),
            actions=[ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {zombie_after.total_seconds():.0f}s: the run's "
                "worker or host is gone (kristal zombie detection)",
            )],
        ),
    ]
    if followup_block_id is not None:
        result.append(Automation(
            name=FOLLOWUP_NOTIFICATION,
            description="Every rollback opens a follow-up in the team's tracker.",
            trigger=EventTrigger(expect={events.ROLLBACK_RECORDED},
                                 match={"prefect.resource.id": f"{CHANNEL_RESOURCE_PREFIX}*"},
                                 posture=Posture.Reactive, threshold=1, within=0),
            actions=[CallWebhook(block_document_id=followup_block_id, payload=(
                '{"title": "kristal rollback in {{ event.payload.channel_id }}", '
                '"channel_id": "{{ event.payload.channel_id }}", '
                '"release_id": {{ event.payload.release_id }}, '
                '"failed_release_id": "{{ event.payload.failed_release_id }}", '
                '"correlation_id": "{{ event.payload.correlation_id }}", '
                '"cause": {{ event.payload.cause | tojson }}}'
            ))],
        ))
    return result


def followup_webhook(url: str | None) -> UUID | None:
    """The webhook block that carries follow-ups (KRISTAL_FOLLOWUP_WEBHOOK_URL), saved by name."""
    if not url:
        return None
    from prefect.blocks.webhook import Webhook

    block = Webhook.model_validate({"method": "POST", "url": url, "allow_private_urls": True,
                                    "headers": {"Content-Type": "application/json"}})
    return cast(UUID, block.save(FOLLOWUP_BLOCK, overwrite=True))


def apply_automations(registered: Registered, webhook_url: str | None = None) -> list[Applied]:
    """Each automation created, updated or left as it is (what `--json` reports)."""
    block_id = followup_webhook(webhook_url or ServeSettings.from_env().followup_webhook_url)
    return [_upsert(a) for a in automations(registered, block_id)]


def applied_report(applied: list[Applied]) -> dict[str, dict[str, Any]]:
    """What each automation's apply did, by name, for `--json`."""
    return {a.automation.name: {"outcome": a.outcome, "changed": list(a.changed)}
            for a in applied}


def applied_line(applied: list[Applied]) -> str:
    return "; ".join(f"{a.automation.name} ({a.outcome}"
                     + (f": {', '.join(a.changed)})" if a.changed else ")") for a in applied)


def reset_warnings(applied: list[Applied]) -> list[str]:
    """What an operator must know when the zombie automation was updated: its trigger starts
    afresh, so a run already silent (its host died before) is never marked Crashed."""
    if not any(a.automation.name == CRASH_ZOMBIE_RUNS and a.outcome == "updated"
               for a in applied):
        return []
    return [f"warning: {CRASH_ZOMBIE_RUNS!r} was updated: its trigger starts afresh and a run "
            "already silent is not marked Crashed; look for activate/downgrade runs still "
            "Running with no recent heartbeat and roll their channels back by hand"]


def registered_on_server(client: Any) -> Registered:
    """The ids of our deployments already on the server (`kristalctl deploy`, `prefect deploy`,
    or `serve`), by flow name; `rollback` must be among them."""
    from prefect.exceptions import ObjectNotFound

    from kristal.errors import UsageInvalid

    ids: dict[str, UUID] = {}
    for flow_name, name in DEPLOYMENT_NAMES.items():
        try:
            ids[flow_name] = client.read_deployment_by_name(f"{flow_name}/{name}").id
        except ObjectNotFound:
            continue
    if "rollback" not in ids:
        raise UsageInvalid("no rollback/rollback deployment on this server: deploy first "
                           "(kristalctl deploy --pool NAME, or kristalctl serve)")
    return Registered(ids)


DEPLOYMENT_NAMES = {"activate": "activate", "rollback": "rollback", "downgrade": "downgrade",
                    "bake": "bake", "reverify": "nightly", "fleet-activate": "fleet-activate"}
