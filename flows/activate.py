"""The `activate` flow: resolve, verify, stage, switch, check; on a failed check, quarantine
and roll back inside the run, then fail with the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow

from flows.params import ActivateRequest, RunOutcome
from flows.prefect_fixes import no_heartbeat_join
from flows.rollback import rollback_steps, who_of
from kristal.crashpoints import crash_point
from kristal.errors import CheckFailed, KristalError
from kristal.formats.channel_docs import ActivationRecord
from kristal.operations.plan import ActivationPlan, Who
from kristal.runtime.checks import CheckReport
from tasks.activation import (
    confirm_live_restorable,
    post_activation_checks,
    quarantine_release,
    record_check_outcome,
    resolve_and_verify,
    stage_release,
    switch_pointer,
)
from tasks.followup import open_follow_up
from tasks.reporting import report_run
from tasks.runtime import channel_lock

no_heartbeat_join()  # before any run of this module's flows: see flows.prefect_fixes

Measure = Callable[[ActivationRecord, ActivationPlan], list[CheckReport]]


def go_live(plan: ActivationPlan, who: Who, measure: Measure | None = None,
            note: str = "") -> RunOutcome:
    """Steps D and E for a verified, staged plan; a failed check rolls back and raises.

    `measure` replaces the post-activation measurement (the fleet shares one per pack)."""
    if plan.resume or plan.failed_checks is not None:
        record = plan.state.record
        assert record is not None
    else:
        confirm_live_restorable(plan)
        record = switch_pointer(plan, who)  # D
    checks = plan.failed_checks or record_check_outcome(
        record, (measure or post_activation_checks)(record, plan)  # E
    )
    if checks.result == "failed":
        quarantine_release(record, checks.reason)
        try:
            back = rollback_steps(
                plan.channel_id, "previous", record.activation_id, "auto_rollback", who
            ).message
        except KristalError as exc:  # e.g. a first activation has nothing to go back to
            back = f"no automatic rollback: {exc.line()}"
        report_run(plan, record, checks, f"checks failed; {back}")
        raise CheckFailed(
            f"release {record.active.release_id} failed its checks ({checks.reason}); {back}"
        )
    done = "downgraded" if plan.kind == "downgrade" else "activated"
    report_run(plan, record, checks, f"{done} and checked{note}")
    if plan.kind == "downgrade":  # a downgrade is a rollback across generations: follow it up
        open_follow_up(record, checks, who.reason)
    return RunOutcome(
        channel_id=plan.channel_id,
        outcome="resumed" if plan.resume else
        ("downgraded" if plan.kind == "downgrade" else "activated"),
        sequence=record.sequence,
        activation_id=record.activation_id,
        release_id=record.active.release_id,
        check_result=checks.result,
        message=f"release {record.active.release_id} is live (sequence {record.sequence})",
    )


@flow(name="activate", log_prints=True)
def activate(request: ActivateRequest) -> RunOutcome:
    who = who_of(request.operator, request.reason, request.correlation_id)
    channel = request.channel_id
    with channel_lock(channel):
        plan = resolve_and_verify(
            channel, request.release_id, request.exchange_id, request.runtime_pack_ids,
            request.force,
        )  # A, B
        crash_point("after_verify")
        if plan.noop:
            report_run(plan, None, None, "already live and checked")
            return RunOutcome(channel_id=channel, outcome="already_live",
                              release_id=plan.release.entry.release_id, plan=plan.summary())
        if plan.failed_checks is None:
            stage_release(plan)  # C
            crash_point("after_stage")
        if request.dry_run:
            report_run(plan, None, None, "dry run: verified and staged, nothing switched")
            return RunOutcome(channel_id=channel, outcome="planned", plan=plan.summary(),
                              release_id=plan.release.entry.release_id)
        return go_live(plan, who)
