"""Deploying every flow to a Prefect work pool (`kristalctl deploy --pool NAME`): the same
deployments `serve` registers (names, typed parameters, the nightly schedule), run by
`prefect worker start --pool NAME` processes instead of one `serve` process, with the code
taken from this checkout (a `set_working_directory` pull step) and heartbeats on, so a run
whose worker dies is found by the zombie automation; with `--store-block NAME` every run gets
`KRISTAL_STORE_BLOCK=NAME` (its store from that block, whatever the worker's KRISTAL_S3_*).
The automations are applied after. With regions, each gets its work queue `kristal-<region>`
(`fleet-activate --fan-out`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from deployments.automations import (
    HEARTBEAT_S,
    Registered,
    applied_report,
    apply_automations,
    reset_warnings,
)
from kristal.config import ServeSettings
from kristal.errors import UsageInvalid
from kristal.formats.models import CHANNEL_PART, CHANNEL_PART_PATTERN
from tasks.names import region_queue

REPO_ROOT = Path(__file__).resolve().parent.parent
# flow name -> (entrypoint, deployment name)
ENTRYPOINTS = {
    "activate": ("flows/activate.py:activate", "activate"),
    "rollback": ("flows/rollback.py:rollback", "rollback"),
    "downgrade": ("flows/downgrade.py:downgrade", "downgrade"),
    "bake": ("flows/bake.py:bake", "bake"),
    "reverify": ("flows/reverify.py:reverify", "nightly"),
    "fleet-activate": ("flows/fleet.py:fleet_activate", "fleet-activate"),
}


def ensure_process_pool(client: Any, pool: str) -> bool:
    """Create a `process` work pool named `pool` if there is none; True if created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    try:
        client.read_work_pool(pool)
        return False
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        return True


def job_env(store_block: str | None = None) -> dict[str, str]:
    """The environment every deployment's runs get on top of the worker's: heartbeats, and
    with `store_block`, `KRISTAL_STORE_BLOCK` (the runs take their store from that block)."""
    env = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    if store_block:
        env["KRISTAL_STORE_BLOCK"] = store_block
    return env


def deploy_to_pool(pool: str, *, source: Path = REPO_ROOT,
                   store_block: str | None = None) -> tuple[Registered, bool]:
    """Every flow deployed to `pool` (created if missing); returns the ids and whether the
    pool was created. Idempotent: a second call updates the same deployments (and, without
    `store_block`, drops a store block an earlier deploy set)."""
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.schedules import Cron

    with get_client(sync_client=True) as client:
        created = ensure_process_pool(client, pool)
    settings = ServeSettings.from_env()
    ids: dict[str, UUID] = {}
    for flow_name, (entrypoint, name) in ENTRYPOINTS.items():
        flow = cast(Flow[Any, Any], Flow.from_source(source=str(source), entrypoint=entrypoint))
        extra: dict[str, Any] = {}
        if flow_name == "reverify":
            extra = {"schedules": [Cron(settings.reverify_cron,
                                        timezone=settings.reverify_timezone)],
                     "parameters": {"request": {}}}
        ids[flow_name] = cast(UUID, flow.deploy(
            name=name, work_pool_name=pool, build=False, push=False, print_next_steps=False,
            description=flow.description,
            job_variables={"env": job_env(store_block)},
            **extra,
        ))
    return Registered(ids), created


def ensure_region_queues(pool: str, regions: Sequence[str]) -> list[str]:
    """The work queue `kristal-<region>` of each region in `pool`, created where missing (a
    fanned-out fleet refuses a region without one: the server would create it on the first
    run and no worker would poll it). Returns the queues' names."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    for region in regions:
        if not CHANNEL_PART.fullmatch(region):
            raise UsageInvalid(f"--region {region!r} is not a channel's region "
                               f"({CHANNEL_PART_PATTERN})")
    names = [region_queue(r) for r in dict.fromkeys(regions)]
    with get_client(sync_client=True) as client:
        existing = {q.name for q in client.read_work_queues(work_pool_name=pool)}
        for name in names:
            if name not in existing:
                with contextlib.suppress(ObjectAlreadyExists):  # created meanwhile
                    client.create_work_queue(
                        name, work_pool_name=pool,
                        description="kristal: fleet-activate --fan-out runs this region's "
                        "channels here")
    return names


def deploy_and_automate(pool: str, store_block: str | None = None, *,
                        regions: Sequence[str] = ()) -> dict[str, Any]:
    registered, created = deploy_to_pool(pool, store_block=store_block)
    applied = apply_automations(registered)
    return {"work_pool": pool, "pool_created": created, "store_block": store_block,
            "deployments": {k: str(v) for k, v in registered.ids.items()},
            "work_queues": ensure_region_queues(pool, regions),
            "automations": [a.automation.name for a in applied],
            "applied": applied_report(applied),
            "warnings": reset_warnings(applied)}
