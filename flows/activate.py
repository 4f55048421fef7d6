"""The `activate` flow: resolve, verify, stage, switch, check; on a failed check, quarantine
and roll back inside the run, then fail with the reason (`kristal.operations.activate`).
"""

from __future__ import annotations

from prefect import flow

from flows import prefect_fixes
from flows.params import ActivateRequest, RunOutcome
from kristal.operations import activate as operation
from kristal.operations.outcome import Who
from tasks.bake_launch import follow_with_bake
from tasks.run_labels import channel_tags, ended, label_run, release_arrow
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context, log_outcome

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="activate", log_prints=True)
def activate(request: ActivateRequest) -> RunOutcome:
    """Put a published release live in a channel: verify, stage, switch, check, then bake."""
    label_run(f"{'dry run: ' if request.dry_run else ''}activate {request.channel_id} "
              f"{release_arrow(request.release_id, request.exchange_id)}",
              [*channel_tags(request.channel_id), "kristal-activate",
               *([f"release:{request.release_id}"] if request.release_id else [])])
    run = PrefectRunner()
    outcome = operation.activate(
        run, domain_context(),
        channel_id=request.channel_id,
        release_id=request.release_id,
        exchange_id=request.exchange_id,
        pack_ids=request.runtime_pack_ids,
        force=request.force,
        dry_run=request.dry_run,
        bake=request.bake,
        bake_interval=request.bake_interval,
        who=Who.of(request.operator, request.reason, request.correlation_id, run.run_id),
    )
    done = log_outcome(follow_with_bake(outcome, request.operator))
    return ended(done, message=done.message or done.outcome)  # type: ignore[return-value]
