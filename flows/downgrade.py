"""The `downgrade` flow: to an older generation only through a signed rollback authorization,
with the full verification, staging and post-activation gates, and an optional human approval
(a typed Prefect input form showing the plan) before the switch
(`kristal.operations.downgrade`).
"""

from __future__ import annotations

from prefect import flow

from flows import prefect_fixes
from flows.params import DowngradeRequest, RunOutcome
from kristal.operations import downgrade as operation
from kristal.operations.outcome import Who
from tasks.bake_launch import follow_with_bake
from tasks.run_labels import channel_tags, ended, label_run
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context, log_outcome

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="downgrade", log_prints=True)
def downgrade(request: DowngradeRequest) -> RunOutcome:
    """Move a channel to an older generation, only to a target an authorization blesses."""
    label_run(f"downgrade {request.channel_id} → {request.release_id}",
              [*channel_tags(request.channel_id), "kristal-downgrade",
               f"release:{request.release_id}"])
    run = PrefectRunner()
    outcome = operation.downgrade(
        run, domain_context(),
        channel_id=request.channel_id,
        release_id=request.release_id,
        authorization_id=request.authorization_id,
        require_approval=request.require_approval,
        who=Who.of(request.operator, request.reason, request.correlation_id, run.run_id),
    )
    done = log_outcome(follow_with_bake(outcome, request.operator))
    return ended(done, message=done.message or done.outcome)  # type: ignore[return-value]
