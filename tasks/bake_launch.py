"""Starting the bake run of an activation that went live baking (`kristal.operations.bake`).

Inside a deployment's run (a worker, `kristalctl serve`), the bake is a run of the `bake`
deployment, so it shows there and any worker of the pool takes it. Anywhere else (a CLI run
against the API) it is a detached `kristalctl bake` process on this host, its own flow run,
logging to `$KRISTAL_HOME/bakes/`. `KRISTAL_BAKE_LAUNCH=none` starts nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun

from kristal.config import bake_launch, home_dir
from kristal.operations.outcome import Outcome
from tasks.names import BAKE_DEPLOYMENT
from tasks.run_log import run_logger


def _in_deployment() -> bool:
    from prefect.runtime import deployment

    return bool(deployment.id)


Targets = list[tuple[str, str]]  # (channel id, activation id)


def _own_queue() -> str | None:
    """The work queue this run came from: its bake goes to the same one (a fanned-out fleet's
    channel ran on its region's queue, whose workers read that region's store)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run.work_queue_name if context and context.flow_run else None


def _run_deployment(targets: Targets, operator: str) -> str | None:
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    (channel_id, activation_id), *more = targets
    try:
        run = cast(FlowRun, run_deployment(
            name=BAKE_DEPLOYMENT, timeout=0, as_subflow=False, work_queue_name=_own_queue(),
            parameters={"request": {
                "channel_id": channel_id, "activation_id": activation_id,
                "more": [{"channel_id": c, "activation_id": a} for c, a in more],
                "operator": operator, "reason": "bake"}},
            tags=["kristal-bake", *(f"channel:{c}" for c, _ in targets[:20])],
        ))
    except ObjectNotFound:
        return None
    return f"bake run {run.name} ({run.id}) of deployment {BAKE_DEPLOYMENT}"


def spawn_bake_process(targets: Targets, operator: str) -> str:
    """A detached `kristalctl bake` (its own session, so it outlives this process)."""
    logs = home_dir() / "bakes"
    logs.mkdir(parents=True, exist_ok=True)
    (channel_id, activation_id), *_ = targets
    stem = f"{channel_id.replace('/', '.')}-{activation_id[:8]}"
    log_path = logs / f"{stem}.log"
    with open(log_path, "ab") as log, open(os.devnull, "rb") as nothing:
        child = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "bake", "--operator", operator,
             *(arg for c, a in targets for arg in ("--target", f"{c}={a}"))],
            stdin=nothing, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "KRISTAL_BAKE_LAUNCH": "none"},
        )
    (logs / f"{stem}.pid").write_text(str(child.pid))
    return f"bake process {child.pid} on this host (log {log_path})"


@task(name="start-bake", cache_policy=NO_CACHE)
def start_bake_run(targets: Targets, operator: str) -> str:
    """Start the bake of live activations (one run for all); returns where it runs."""
    shown = " ".join(c for c, _ in targets[:5]) + (" ..." if len(targets) > 5 else "")
    if bake_launch() == "none":
        where = (f"bake not started (KRISTAL_BAKE_LAUNCH=none): `kristalctl bake {shown}` "
                 "runs it")
        run_logger().info(where)
        return where
    try:
        where = ((_in_deployment() and _run_deployment(targets, operator))
                 or spawn_bake_process(targets, operator))
    except Exception as exc:  # the release is live: say what to do, do not fail the run
        where = (f"bake NOT started ({type(exc).__name__}: {exc}): run `kristalctl bake "
                 f"{shown}`, or the nightly reverify fails the bake as stopped")
        run_logger().warning(where)
        return where
    run_logger().info(f"bake of {shown}: {where}")
    return where


def follow_with_bake(outcome: Outcome, operator: str) -> Outcome:
    """After an operation that went live: start its bake when it has one to run."""
    if outcome.bake is None or outcome.bake.state != "baking" or outcome.activation_id is None:
        return outcome
    where = start_bake_run([(outcome.channel_id, outcome.activation_id)], operator)
    return outcome.model_copy(update={"message": f"{outcome.message}; {where}"})
