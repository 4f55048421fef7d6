"""Runs of a deployment submitted from here and followed to their end (a worker of the pool runs
them): `kristalctl ... --via-deployment`, and each channel of a fleet fanned out
(`tasks.fanout`). What a run did comes back as if it had run in this process: the outcome from
the run's `kristal-outcome` log line, a failure from its final state (the error's class and
message, so the `error: <code>: ...` line is the same).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any, cast

from prefect.client.schemas.objects import FlowRun

from kristal.errors import (
    ALL_ERRORS,
    InternalError,
    KristalError,
    StorageUnavailable,
    UsageInvalid,
    WorkerUnavailable,
)
from kristal.operations.outcome import Outcome
from tasks.names import OUTCOME_LOG_PREFIX

_RAISED = re.compile(r"(?:exception: )?([A-Za-z]+): ([a-z_]+): (.*)", re.S)
POLL_S = 1.0


def error_from_state(message: str) -> KristalError:
    """The coded error a failed run ended with, rebuilt from its state message."""
    found = _RAISED.search(message or "")
    if found:
        cls = next((c for c in ALL_ERRORS if c.__name__ == found.group(1)
                    and c.code == found.group(2)), None)
        if cls is not None:
            return cls(found.group(3).strip())
    return InternalError(f"the run failed: {message}")


def outcome_of_run(client: Any, flow_run_id: Any) -> Outcome | None:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
        any_=[flow_run_id])), limit=200)
    lines = [log.message for log in logs if log.message.startswith(OUTCOME_LOG_PREFIX)]
    if not lines:
        return None
    return Outcome.model_validate(json.loads(lines[-1][len(OUTCOME_LOG_PREFIX):]))


def submit_run(deployment: str, parameters: dict[str, Any], *,
               work_queue_name: str | None = None, tags: Sequence[str] = (),
               name: str | None = None) -> FlowRun:
    """A new run of `deployment` (`flow/name`), not waited for; a top-level run (not a subflow
    of the caller's run: it shows under its deployment, as any run of it)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        return cast(FlowRun, run_deployment(
            name=deployment, parameters=parameters, timeout=0, as_subflow=False,
            work_queue_name=work_queue_name, tags=list(tags) or None, flow_run_name=name))
    except ObjectNotFound:
        raise UsageInvalid(f"no deployment {deployment} on this server (kristalctl deploy "
                           "--pool NAME, or kristalctl serve)") from None


def _cancel_if_unstarted(client: Any, run: FlowRun, waited_s: float) -> bool:
    """Cancel a run no worker has taken yet; False if one took it meanwhile."""
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Cancelled

    done = client.set_flow_run_state(run.id, Cancelled(
        message=f"no worker of work queue {run.work_queue_name} started it in {waited_s:.0f}s"))
    return bool(done.status == SetStateStatus.ACCEPT)


def follow_run(run: FlowRun, *, start_timeout_s: float | None = None) -> Outcome:
    """Wait for the end of `run`; its outcome, or raise the error it failed with. With
    `start_timeout_s`, a run still waiting for a worker after that long is cancelled and
    `WorkerUnavailable` raised (nothing ran); a run a worker started is awaited to its end."""
    from prefect.client.orchestration import get_client

    began = time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            current = client.read_flow_run(run.id)
            state = current.state
            if state is not None and state.is_final():
                break
            waited = time.monotonic() - began
            if (start_timeout_s is not None and waited > start_timeout_s
                    and (state is None or state.is_scheduled())
                    and _cancel_if_unstarted(client, current, waited)):
                raise WorkerUnavailable(
                    f"no worker of work queue {current.work_queue_name} started run "
                    f"{current.name} in {waited:.0f}s: cancelled before it began (start a "
                    f"worker with `prefect worker start --pool POOL --work-queue "
                    f"{current.work_queue_name}`)")
            time.sleep(POLL_S)
        if state.is_completed():
            for _ in range(20):  # the run's last log lines may land just after its state
                outcome = outcome_of_run(client, current.id)
                if outcome is not None:
                    return outcome
                time.sleep(0.25)
            raise StorageUnavailable(f"run {current.name} ({current.id}) completed but its "
                                     "outcome line was not found in its logs")
    raise error_from_state(state.message or f"ended {state.name}")


def run_via_deployment(deployment: str, request: Any) -> Outcome:
    """Run `deployment` (`flow/name`) with `request`, wait for its end, return its outcome or
    raise the error it failed with."""
    from tasks.run_labels import announce

    run = submit_run(deployment, {"request": request.model_dump(mode="json")})
    announce(str(run.id), run.name)
    return follow_run(run)
