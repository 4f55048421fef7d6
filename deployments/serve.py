"""How Prefect serves kristal-activate: every flow as a deployment with a typed form, the nightly
`reverify` schedule (cron with an explicit timezone), and the automations, applied idempotently.

`kristalctl serve` calls `serve_all()`; `build_deployments()` and `apply_automations()` are
separate so tests can register without blocking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from prefect.automations import (
    Automation,
    CallWebhook,
    EventTrigger,
    Posture,
    RunDeployment,
)
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from kristal.config import ServeSettings
from kristal.operations import events
from tasks.names import (
    AUTO_ROLLBACK_ON_CHECK_FAILED,
    AUTO_ROLLBACK_ON_FAILED_RUN,
    CHANNEL_RESOURCE_PREFIX,
    FOLLOWUP_BLOCK,
    FOLLOWUP_NOTIFICATION,
)


def build_deployments() -> list[RunnerDeployment]:
    from flows.activate import activate
    from flows.bake import bake
    from flows.downgrade import downgrade
    from flows.fleet import fleet_activate
    from flows.reverify import reverify
    from flows.rollback import rollback

    settings = ServeSettings.from_env()
    # Prefect types its sync-compatible methods as `X | Coroutine`: in sync code they are X.
    return [cast(RunnerDeployment, d) for d in (
        activate.to_deployment(name="activate", description=activate.__doc__),
        rollback.to_deployment(name="rollback", description=rollback.__doc__),
        downgrade.to_deployment(name="downgrade", description=downgrade.__doc__),
        bake.to_deployment(name="bake", description=bake.__doc__),
        reverify.to_deployment(
            name="nightly", description="Nightly re-verification of every live store.",
            schedules=[Cron(settings.reverify_cron, timezone=settings.reverify_timezone)],
            parameters={"request": {}},
        ),
        fleet_activate.to_deployment(name="fleet-activate", description=fleet_activate.__doc__),
    )]


@dataclass(frozen=True)
class Registered:
    ids: dict[str, UUID]  # flow name -> deployment id


def register(deployments: list[RunnerDeployment]) -> Registered:
    return Registered({str(d.flow_name): cast(UUID, d.apply()) for d in deployments})


def _upsert(automation: Automation) -> Automation:
    try:
        existing = Automation.read(name=automation.name)
    except ValueError:
        existing = None
    if existing is None:
        return cast(Automation, automation.create())
    automation.id = cast(Automation, existing).id
    automation.update()
    return automation


def _rollback_parameters(**request: Any) -> dict[str, Any]:
    return {"request": {"operator": "automation", **request}}


def automations(registered: Registered, followup_block_id: UUID | None) -> list[Automation]:
    rollback_id = registered.ids["rollback"]
    watched = [registered.ids[name] for name in ("activate", "downgrade") if name in registered.ids]
    result = [
        Automation(
            name=AUTO_ROLLBACK_ON_FAILED_RUN,
            description="A failed or crashed activate/downgrade run rolls back whatever it "
            "switched (nothing if it failed before its switch or already rolled back).",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                match_related={"prefect.resource.id": [f"prefect.deployment.{d}" for d in watched]},
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


def apply_automations(registered: Registered, webhook_url: str | None = None) -> list[Automation]:
    block_id = followup_webhook(webhook_url or ServeSettings.from_env().followup_webhook_url)
    return [_upsert(a) for a in automations(registered, block_id)]


def serve_all() -> None:
    from prefect import serve

    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
    deployments = build_deployments()
    apply_automations(register(deployments))
    serve(*deployments, limit=4)
