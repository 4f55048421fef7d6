"""How Prefect serves kristal-activate: every flow as a deployment with a typed form, the nightly
`reverify` schedule (cron with an explicit timezone), and the automations, applied idempotently.

`kristalctl serve` calls `serve_all()`; `build_deployments()` and `apply_automations()` are
separate so tests can register without blocking.
"""

from __future__ import annotations

import os
from typing import cast
from uuid import UUID

from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from deployments.automations import Registered
from kristal.config import ServeSettings


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


def register(deployments: list[RunnerDeployment]) -> Registered:
    return Registered({str(d.flow_name): cast(UUID, d.apply()) for d in deployments})


def serve_all() -> None:
    from prefect import serve

    from deployments.automations import HEARTBEAT_S, apply_automations

    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    deployments = build_deployments()
    apply_automations(register(deployments))
    serve(*deployments, limit=4)
