"""The rollback operation (DESIGN §5, §6 invariant 7): back to a release this channel had live,
fast, recorded, never rewriting history, and conditional on the activation it was asked about
still being live.

- A rollback asked for a given failure carries `expected_activation_id` (or the failed run's
  id, which names the activation that run switched): if that activation is no longer live it
  changes nothing and says so, so a late report never rolls back a later release.
- An automatic rollback (a failed check reported after the fact, a failed or crashed run)
  quarantines the failed release and goes to the automatic target; a manual one goes to
  `--to` (default last-known-good). The target is chosen in `rollback_target`.
- The switch is the fast path: one step that re-verifies the target, re-hashes its cached
  files (downloading only what is missing) and writes the pointer. It is never retried: a
  retry after a switch that landed would roll back the rollback.
- Every rollback is checked like an activation and opens a follow-up.
"""

from __future__ import annotations

from kristal.channel import records
from kristal.context import Context
from kristal.errors import RollbackFailed
from kristal.formats.channel_docs import ActivationKind, ActivationRecord, CheckRecord
from kristal.operations import events
from kristal.operations.outcome import Outcome, Who
from kristal.operations.plan import ActivationPlan
from kristal.operations.reports import open_follow_up, publish_board, report_run
from kristal.operations.rollback_target import RollbackTo, plan_rollback
from kristal.operations.runner import Runner, step
from kristal.operations.steps import (
    ChecksDidNotPass,
    post_activation_checks,
    quarantine_release,
    switch_pointer,
)
from kristal.runtime import staging

# Who waits how long for a channel's lock. A guarded rollback does not wait for a crashed
# run's lease to expire (up to ~75 s): its conditional write is safe on its own.
CHANNEL_LOCK_WAIT_S = 600.0
GUARDED_LOCK_WAIT_S = 10.0


@step("find-run-activation")
def switched_by_run(ctx: Context, channel_id: str, flow_run_id: str) -> str | None:
    """The live activation if the given run switched it forward (activate or downgrade)."""
    live = records.read_pointer(ctx, channel_id).record
    if live is None or live.flow_run_id != flow_run_id:
        return None
    if live.kind not in ("activate", "downgrade"):
        return None
    return live.activation_id


@step("quarantine-live")
def quarantine_live(ctx: Context, channel_id: str, activation_id: str, reason: str) -> bool:
    """Quarantine the live release if `activation_id` is still the live one (else nothing)."""
    live = records.read_pointer(ctx, channel_id).record
    if live is None or live.activation_id != activation_id:
        return False
    quarantine_release(ctx, live, reason)
    return True


@step("rollback-switch", retries=False)
def rollback_switch(
    ctx: Context, channel_id: str, to: RollbackTo, expected_activation_id: str | None,
    kind: ActivationKind, who: Who,
) -> tuple[ActivationPlan | None, ActivationRecord | None, str]:
    """Choose and re-verify the target, re-hash its cached files (downloading only what is
    missing), switch. Returns (plan, record, the reason nothing was done)."""
    decision = plan_rollback(ctx, channel_id, to=to,
                             expected_activation_id=expected_activation_id, kind=kind)
    if decision.plan is None:
        return None, None, decision.noop_reason or ""
    staging.stage_release(ctx, decision.plan.release)
    return decision.plan, switch_pointer(ctx, decision.plan, who), ""


def switch_back(
    run: Runner, ctx: Context, channel_id: str, to: RollbackTo,
    expected_activation_id: str | None, kind: ActivationKind, who: Who, cause: str,
    *, report: bool = True,
) -> Outcome:
    """Switch on the fast path, check, report, follow up. Takes no lock: callers hold it.
    `report=False`: the caller writes the run's one report (a failed activation's).
    An automatic rollback with no safe target changes nothing, emits
    `kristal.rollback.failed` (an automation may alert on it) and raises `rollback_failed`."""
    try:
        plan, record, noop_reason = run(rollback_switch, ctx, channel_id, to,
                                        expected_activation_id, kind, who)
    except RollbackFailed as exc:
        run.log(exc.line(), warning=True)
        run.emit(events.ROLLBACK_FAILED, channel_id=channel_id, payload={
            "channel_id": channel_id, "expected_activation_id": expected_activation_id,
            "cause": cause, "reason": exc.message})
        raise
    if plan is None or record is None:
        run.log(noop_reason)
        return Outcome(channel_id=channel_id, outcome="nothing_to_do", message=noop_reason,
                       orchestrator=run.orchestrator)
    run.log(f"switched {channel_id} back to release {record.active.release_id} "
            f"(sequence {record.sequence})")
    checks: CheckRecord
    try:
        checks = run(post_activation_checks, ctx, record, plan.release, None, plan.state.record)
    except ChecksDidNotPass as failed:
        checks = failed.checks
    live_again = f"release {record.active.release_id} is live again (sequence {record.sequence})"
    if checks.result != "passed":
        live_again += f"; its checks failed: {checks.reason}"
    open_follow_up(run, record, checks, cause)
    if report:
        report_run(run, plan, record, checks,
                   f"rolled back to release {record.active.release_id}")
        publish_board(run, ctx, [channel_id])
    return Outcome(
        channel_id=channel_id,
        outcome="rolled_back",
        sequence=record.sequence,
        activation_id=record.activation_id,
        release_id=record.active.release_id,
        check_result=checks.result,
        message=live_again,
        orchestrator=run.orchestrator,
    )


def rollback(
    run: Runner,
    ctx: Context,
    *,
    channel_id: str,
    who: Who,
    to: RollbackTo = "last-known-good",
    expected_activation_id: str | None = None,
    failed_flow_run_id: str | None = None,
    automatic: bool = False,
) -> Outcome:
    """Roll `channel_id` back under its lock (see the module docstring for the rules)."""
    guarded = expected_activation_id is not None or failed_flow_run_id is not None
    wait_s = GUARDED_LOCK_WAIT_S if guarded else CHANNEL_LOCK_WAIT_S
    with run.lock([channel_id], wait_s=wait_s, proceed_without=guarded):
        expected = expected_activation_id
        if failed_flow_run_id is not None:
            expected = run(switched_by_run, ctx, channel_id, failed_flow_run_id)
            if expected is None:
                message = (f"the live record of {channel_id} was not switched by run "
                           f"{failed_flow_run_id}; nothing rolled back")
                run.log(message)
                return Outcome(channel_id=channel_id, outcome="nothing_to_do", message=message,
                               orchestrator=run.orchestrator)
        if automatic or failed_flow_run_id is not None:
            if expected is not None:
                run(quarantine_live, ctx, channel_id, expected, who.reason)
            return switch_back(run, ctx, channel_id, "previous", expected, "auto_rollback", who,
                               who.reason)
        return switch_back(run, ctx, channel_id, to, expected, "rollback", who, who.reason)
