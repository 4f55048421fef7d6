"""`--via-deployment`: submit an operation as a run of its deployment (a worker of the pool
runs it), follow it to its end, and print the same outcome with the same exit status as a run
in this process: the outcome from the run's `kristal-outcome` log line, a failure from its
final state (the error's class and message, so the `error: <code>: ...` line is the same).
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

from kristal.errors import ALL_ERRORS, InternalError, KristalError, StorageUnavailable
from kristal.operations.outcome import Outcome
from tasks.names import OUTCOME_LOG_PREFIX

_RAISED = re.compile(r"(?:exception: )?([A-Za-z]+): ([a-z_]+): (.*)", re.S)


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


def run_via_deployment(deployment: str, request: Any) -> Outcome:
    """Run `deployment` (`flow/name`) with `request`, wait for its end, return its outcome or
    raise the error it failed with."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run = cast(FlowRun, run_deployment(
            name=deployment, parameters={"request": request.model_dump(mode="json")},
            timeout=None, poll_interval=1, as_subflow=False))
    except ObjectNotFound:
        from kristal.errors import UsageInvalid

        raise UsageInvalid(f"no deployment {deployment} on this server (kristalctl deploy "
                           "--pool NAME, or kristalctl serve)") from None
    state = run.state
    with get_client(sync_client=True) as client:
        if state is not None and state.is_completed():
            for _ in range(20):  # the run's last log lines may land just after its state
                outcome = outcome_of_run(client, run.id)
                if outcome is not None:
                    return outcome
                time.sleep(0.25)
            raise StorageUnavailable(f"run {run.name} ({run.id}) completed but its outcome "
                                     "line was not found in its logs")
    if state is None:
        raise InternalError(f"run {run.name} ({run.id}) has no final state")
    raise error_from_state(state.message or f"ended {state.name}")
