"""The `rollback` flow: back to a release this channel had live, fast, recorded, conditional
on the activation it was asked about still being live (`kristal.operations.rollback`).
"""

from __future__ import annotations

from prefect import flow

from flows import prefect_fixes
from flows.params import RollbackRequest, RunOutcome
from kristal.operations import rollback as operation
from kristal.operations.outcome import Who
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context, log_outcome

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="rollback", log_prints=True)
def rollback(request: RollbackRequest) -> RunOutcome:
    """Go back to a release this channel had live (guarded by the activation it is about)."""
    run = PrefectRunner()
    return log_outcome(operation.rollback(
        run, domain_context(),
        channel_id=request.channel_id,
        to=request.to,
        expected_activation_id=request.expected_activation_id,
        failed_flow_run_id=request.failed_flow_run_id,
        automatic=request.automatic,
        who=Who.of(request.operator, request.reason, request.correlation_id, run.run_id),
    ))
