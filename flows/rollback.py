"""The `rollback` flow: back to a release this channel had live, fast, recorded, conditional
on the activation it was asked about still being live (DESIGN §6 invariant 7).
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from flows.params import RollbackRequest, RunOutcome
from flows.prefect_fixes import no_heartbeat_join
from kristal.formats.channel_docs import ActivationKind
from kristal.operations.plan import Who
from kristal.operations.rollback import RollbackTo
from tasks.activation import (
    post_activation_checks,
    quarantine_live,
    record_check_outcome,
    rollback_switch,
    switched_by_run,
)
from tasks.followup import open_follow_up
from tasks.reporting import report_run
from tasks.runtime import CHANNEL_LOCK_TIMEOUT_S, channel_lock

no_heartbeat_join()  # before any run of this module's flows: see flows.prefect_fixes

# A guarded rollback does not wait for a crashed run's lease to expire (up to ~75 s).
AUTOMATED_LOCK_WAIT_S = 10.0


def rollback_steps(
    channel_id: str,
    to: RollbackTo,
    expected_activation_id: str | None,
    kind: ActivationKind,
    who: Who,
) -> RunOutcome:
    """Switch on the fast path (one task), then check and report. Takes no lock: callers hold
    it."""
    plan, record, noop_reason = rollback_switch(channel_id, to, expected_activation_id, kind, who)
    if plan is None or record is None:
        return RunOutcome(channel_id=channel_id, outcome="nothing_to_do", message=noop_reason)
    reports = post_activation_checks(record, plan)
    checks = record_check_outcome(record, reports)
    report_run(plan, record, checks, f"rolled back to release {record.active.release_id}")
    open_follow_up(record, checks, who.reason)
    return RunOutcome(
        channel_id=channel_id,
        outcome="rolled_back",
        sequence=record.sequence,
        activation_id=record.activation_id,
        release_id=record.active.release_id,
        check_result=checks.result,
        message=f"release {record.active.release_id} is live again (sequence {record.sequence})",
    )


def who_of(operator: str, reason: str, correlation_id: str | None) -> Who:
    run_id = flow_run.get_id()
    return Who(
        operator=operator,
        reason=reason,
        correlation_id=correlation_id or (str(run_id) if run_id else "local"),
        flow_run_id=str(run_id) if run_id else None,
    )


@flow(name="rollback", log_prints=True)
def rollback(request: RollbackRequest) -> RunOutcome:
    who = who_of(request.operator, request.reason, request.correlation_id)
    channel = request.channel_id
    guarded = request.expected_activation_id is not None or request.failed_flow_run_id is not None
    with channel_lock(channel, wait_s=AUTOMATED_LOCK_WAIT_S if guarded else CHANNEL_LOCK_TIMEOUT_S,
                      proceed_without=guarded):
        expected = request.expected_activation_id
        if request.failed_flow_run_id is not None:
            expected = switched_by_run(channel, request.failed_flow_run_id)
            if expected is None:
                return RunOutcome(
                    channel_id=channel, outcome="nothing_to_do",
                    message=f"the live record of {channel} was not switched by run "
                    f"{request.failed_flow_run_id}; nothing rolled back",
                )
        if request.automatic or request.failed_flow_run_id is not None:
            if expected is not None:
                quarantine_live(channel, expected, request.reason)
            return rollback_steps(channel, "previous", expected, "auto_rollback", who)
        return rollback_steps(channel, request.to, expected, "rollback", who)
