"""A fleet fanned out to a work pool (`fleet-activate --fan-out`): each channel's activation is a
run of the `activate/activate` deployment on the work queue of the channel's region,
`kristal-<region>`, so that region's workers stage the release from their own store; the fleet
waits for each run and reads what it did as `--via-deployment` does (`tasks.deployment_runs`).
The halt, veto and rollback decision stays the fleet's (`kristal.operations.fleet`).

Rules:
- **The region queues must exist before the fleet starts** (`kristalctl deploy --pool NAME
  --region R ...` creates them). Prefect's server creates a queue that a new run names and
  that does not exist (`create_flow_run_from_deployment`: `create_queue_if_not_found=True`),
  and no worker would ever poll it, so the run would wait forever. A channel whose region has
  no queue is therefore refused (`usage_invalid`, exit 2) before anything is switched; it is
  not sent to the pool's default queue, whose workers may stage from another region's store.
- **A run no worker starts** within `KRISTAL_FANOUT_START_TIMEOUT_S` (300 s) is cancelled and
  the channel fails with `worker_unavailable` (so the fleet halts, as on any failed channel);
  a started run is awaited to its end (a worker that dies with it stops its heartbeats, and
  the zombie automation marks it Crashed).
- **No lock is held here**: each run takes its own channel's lock. The runs are top-level runs
  of the deployment (`as_subflow=False`, as `--via-deployment`): they show under `activate`
  and the failed-run automation treats them as any activate run. They are named
  `fleet-<key>-w<wave>-<tenant>.<env>.<region>` and tagged `kristal-fleet`, `fleet:<key>`,
  `fleet-run:<the fleet's run id>` and `channel:<id>`.
"""

from __future__ import annotations

from collections.abc import Sequence

from kristal.config import fanout_start_timeout_s
from kristal.errors import KristalError, UsageInvalid
from kristal.formats.models import validate_channel_id
from kristal.operations.runner import RanElsewhere, RemoteActivation
from tasks.deployment_runs import follow_run, submit_run
from tasks.names import ACTIVATE_DEPLOYMENT, channel_region_queue


def check_region_queues(channel_ids: Sequence[str]) -> str:
    """Refuse (`usage_invalid`) unless the `activate` deployment is on a work pool that has
    every channel's region queue; returns where the channels will run."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    wanted = sorted({channel_region_queue(c) for c in channel_ids})
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(ACTIVATE_DEPLOYMENT)
        except ObjectNotFound:
            raise UsageInvalid(f"--fan-out runs the {ACTIVATE_DEPLOYMENT} deployment on a work "
                               "pool, and this server has none (kristalctl deploy --pool NAME "
                               "--region R ...)") from None
        pool = deployment.work_pool_name
        if not pool:
            raise UsageInvalid(f"--fan-out needs {ACTIVATE_DEPLOYMENT} deployed to a work pool "
                               "(kristalctl deploy --pool NAME --region R ...), not served")
        queues = {q.name for q in client.read_work_queues(work_pool_name=pool)}
    missing = [q for q in wanted if q not in queues]
    if missing:
        regions = " ".join(f"--region {q.removeprefix('kristal-')}" for q in missing)
        raise UsageInvalid(f"work pool {pool} has no work queue {', '.join(missing)}: nothing "
                           f"was started (kristalctl deploy --pool {pool} {regions}, and a "
                           "worker per region: prefect worker start --pool "
                           f"{pool} --work-queue {missing[0]})")
    return f"work pool {pool}, queues {', '.join(wanted)}"


def run_name(job: RemoteActivation) -> str:
    """The name the `activate` flow gives itself (`tasks.run_labels`): the fleet and wave are
    in the run's tags."""
    return f"activate {validate_channel_id(job.channel_id)} → {job.release_id}"


def activate_on_worker(job: RemoteActivation, fleet_run_id: str | None) -> RanElsewhere:
    """Run `activate` for one channel on its region's queue and wait for its end."""
    queue = channel_region_queue(job.channel_id)
    tags = ["kristal-fleet", f"fleet:{job.fleet}", f"wave:{job.wave}",
            f"channel:{job.channel_id}"]
    if fleet_run_id:
        tags.append(f"fleet-run:{fleet_run_id}")
    run = submit_run(ACTIVATE_DEPLOYMENT, {"request": {
        "channel_id": job.channel_id, "release_id": job.release_id, "force": job.force,
        "operator": job.operator, "reason": job.reason,
        "correlation_id": job.correlation_id}}, work_queue_name=queue, tags=tags,
        name=run_name(job))
    where = f"run {run.name} ({run.id}) on work queue {queue}"
    try:
        outcome = follow_run(run, start_timeout_s=fanout_start_timeout_s())
    except KristalError as exc:  # the same error, saying where it happened
        raise type(exc)(f"{exc.message} [{where}]") from None
    return RanElsewhere(outcome=outcome, where=where)
