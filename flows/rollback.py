"""The `rollback` flow: back to a release this channel had live, fast, recorded, conditional
on the activation it was asked about still being live (`kristal.operations.rollback`).
"""

from __future__ import annotations

from prefect import flow

from flows import prefect_fixes
from flows.params import RollbackRequest, RunOutcome
from kristal.operations import rollback as operation
from kristal.operations.outcome import Who
from tasks.run_labels import channel_tags, ended, label_run
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context, log_outcome

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="rollback", log_prints=True)
def rollback(request: RollbackRequest) -> RunOutcome:
    """Go back to a release this channel had live (guarded by the activation it is about)."""
    name = _name(request)
    label_run(name, [*channel_tags(request.channel_id), "kristal-rollback",
                     *(["automatic"] if _automatic(request) else [])])
    run = PrefectRunner()
    outcome = log_outcome(operation.rollback(
        run, domain_context(),
        channel_id=request.channel_id,
        to=request.to,
        expected_activation_id=request.expected_activation_id,
        failed_flow_run_id=request.failed_flow_run_id,
        automatic=request.automatic,
        who=Who.of(request.operator, request.reason, request.correlation_id, run.run_id),
    ))
    if outcome.outcome == "nothing_to_do":  # an automation's late or needless rollback
        label_run(f"{name}: nothing to do")
    elif outcome.release_id is not None:
        label_run(f"{name.partition(' → ')[0]} → {outcome.release_id}")
    return ended(outcome, message=outcome.message or outcome.outcome)  # type: ignore[return-value]


def _automatic(request: RollbackRequest) -> bool:
    return request.automatic or request.failed_flow_run_id is not None


def _name(request: RollbackRequest) -> str:
    verb = "auto-rollback" if _automatic(request) else "rollback"
    to = f"sequence {request.to}" if isinstance(request.to, int) else request.to
    return f"{verb} {request.channel_id} → {to}"
