"""The Prefect runner of the operations (`kristal.operations.runner.Runner`): every domain step
becomes a Prefect task named after it, with `NO_CACHE` (side effects are never skipped) and,
where the step allows it, retries of storage hiccups with backoff; verification and policy
failures fail at once. Locks are the channels' concurrency leases, reports are artifacts of the
flow run, events go to Prefect's events API, approvals are paused runs with a typed form; a
channel activated elsewhere is a run of the `activate` deployment on its region's work queue
(`tasks.fanout`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, ParamSpec, TypeVar, cast

from prefect import Task, pause_flow_run, task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from prefect.utilities.annotations import opaque
from pydantic import Field

from kristal.config import retry_delays_s
from kristal.errors import ActivationAborted
from kristal.operations.runner import (
    Approval,
    Artifact,
    HeldLock,
    Progress,
    RanElsewhere,
    RemoteActivation,
    Step,
)
from tasks.board import update_board
from tasks.locks import WaveLock, channel_lock, ensure_channel_limits, lease_lost
from tasks.names import artifact_key, channel_resource_id, fleet_resource_id
from tasks.reporting import ProgressArtifact, publish_artifact
from tasks.run_log import run_logger
from tasks.runtime import retry_on_transient

P = ParamSpec("P")
R = TypeVar("R")

# A human answers the approval form: the run notices within this many seconds (Prefect: 10).
APPROVAL_POLL_S = 1
_tasks: dict[Step[Any, Any], Task[Any, Any]] = {}
_tasks_lock = threading.Lock()


def task_of(step: Step[P, R]) -> Task[P, R]:
    """The Prefect task of a domain step (built once per process)."""
    with _tasks_lock:
        found = _tasks.get(step)
        if found is None:
            delays = list(retry_delays_s()) if step.retries else []
            found = task(
                name=step.name,
                task_run_name=step.run_name,
                cache_policy=NO_CACHE,
                retries=len(delays),
                retry_delay_seconds=delays,
                retry_condition_fn=retry_on_transient if delays else None,
            )(step.fn)
            _tasks[step] = found
    return found


class ApprovalForm(RunInput):
    """What an approver fills in on the paused run's form: a decision with no default (an
    untouched form approves nothing) and a name."""

    decision: Literal["approve", "reject"] = Field(
        description="Approve the switch, or reject it (nothing changes).")
    approver: str = Field(min_length=1, description="Who decides (recorded).")
    comment: str = Field("", description="Why (recorded with the decision).")


class PrefectRunner:
    """Steps as tasks of the current flow run (see the module docstring)."""

    def __init__(self, *, inline: bool = False) -> None:
        self._inline = inline

    @property
    def run_id(self) -> str | None:
        from prefect.runtime import flow_run

        run_id = flow_run.get_id()
        return str(run_id) if run_id else None

    @property
    def orchestrator(self) -> str:
        return "prefect"

    def __call__(self, step: Step[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        if step.switches and lease_lost():
            raise ActivationAborted(
                f"the channel lock's lease was lost before {step.name} (the Prefect server "
                "restarted, or could not be reached to renew it): nothing was switched; run it "
                "again")
        if self._inline:
            return step.fn(*args, **kwargs)
        # Our arguments are never futures: `opaque` keeps Prefect from walking into them (a
        # context, a verified release) looking for some, which costs time and trips on fields
        # named like mapping methods (a trust entry's `keys`).
        prefect_task = cast(Task[..., R], task_of(step))
        return prefect_task(*[opaque(a) for a in args], **{k: opaque(v) for k, v in kwargs.items()})

    def inline(self) -> PrefectRunner:
        return PrefectRunner(inline=True)

    def lock(self, channel_ids: Sequence[str], *, wait_s: float,
             proceed_without: bool = False) -> AbstractContextManager[bool]:
        return channel_lock(channel_ids, wait_s=wait_s, proceed_without=proceed_without)

    def lock_ahead(self, channel_ids: Sequence[str]) -> HeldLock:
        return WaveLock(channel_ids).start()

    def prepare_locks(self, channel_ids: Sequence[str]) -> None:
        ensure_channel_limits(channel_ids)

    def check_fan_out(self, channel_ids: Sequence[str]) -> str:
        from tasks.fanout import check_region_queues

        return check_region_queues(channel_ids)

    def activate_elsewhere(self, job: RemoteActivation) -> RanElsewhere:
        from tasks.fanout import activate_on_worker

        return activate_on_worker(job, self.run_id)

    def publish(self, artifact: Artifact) -> None:
        if artifact.kind == "board" and artifact.table is not None:
            update_board(artifact.table)
            return
        publish_artifact(artifact)

    def progress(self, kind: str, scope: str, description: str) -> Progress:
        return ProgressArtifact(artifact_key(kind, scope), description)

    def emit(self, event: str, *, channel_id: str | None = None, fleet: str | None = None,
             payload: dict[str, Any]) -> bool:
        from prefect.events import emit_event

        if channel_id is not None:
            resource = {"prefect.resource.id": channel_resource_id(channel_id),
                        "prefect.resource.name": channel_id}
        else:
            resource = {"prefect.resource.id": fleet_resource_id(fleet or "unknown")}
        return emit_event(event=event, resource=resource, payload=payload) is not None

    def log(self, message: str, *, warning: bool = False) -> None:
        logger = run_logger()
        (logger.warning if warning else logger.info)(message)

    def ask_approval(self, description: str, timeout_s: float) -> Approval | None:
        from prefect.exceptions import FlowPauseTimeout

        from tasks.run_labels import notice

        notice(f"waiting for an approval (at most {timeout_s:g}s): decide on the paused run's "
               "form in the Prefect UI")
        try:
            answer = pause_flow_run(
                wait_for_input=ApprovalForm.with_initial_data(description=description),
                timeout=max(1, int(timeout_s)),
                poll_interval=APPROVAL_POLL_S,
            )
        except FlowPauseTimeout:
            return None
        return Approval(approver=answer.approver, approve=answer.decision == "approve",
                        comment=answer.comment)
