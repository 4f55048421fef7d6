"""Going live (steps D and E) for a verified, staged plan: activate, downgrade, a fleet's
channel and a forced resume all end here (DESIGN §5, §6, §7).

1. Unless the plan resumes a live record, the live release must still be restorable, then the
   pointer is switched (one conditional write) with its history record.
2. The new release is checked through the pinned reader; the outcome is recorded.
3. A failed check quarantines the release and rolls back automatically, inside the run and
   conditional on that activation still being live; the run then fails with `check_failed`.
   A first activation has nothing to go back to: the message says so.
   A refusal after the switch (a checks record that is not ours) is `LiveUnchecked`: the
   exit status says the channel changed.
4. Every run leaves its report; a downgrade (a rollback across generations) opens a follow-up.
"""

from __future__ import annotations

from kristal.channel.bakes import BakeStatus
from kristal.context import Context
from kristal.errors import CheckFailed, KristalError, LiveUnchecked, Refused
from kristal.formats.channel_docs import ActivationRecord, CheckRecord
from kristal.operations.outcome import Outcome, OutcomeKind, Who
from kristal.operations.plan import ActivationPlan
from kristal.operations.reports import open_follow_up, publish_board, report_run
from kristal.operations.rollback import switch_back
from kristal.operations.runner import Runner
from kristal.operations.steps import (
    ChecksDidNotPass,
    Measure,
    confirm_live_restorable,
    post_activation_checks,
    quarantine_release,
    switch_pointer,
)


def go_live(run: Runner, ctx: Context, plan: ActivationPlan, who: Who, *,
            measure: Measure | None = None, report: bool = True) -> Outcome:
    """Steps D and E; a failed check rolls back and raises `CheckFailed`. `report=False`
    leaves no report of its own for a success (a fleet reports its channels in one place);
    a failure is always reported."""
    if plan.resume or plan.failed_checks is not None:
        record = plan.state.record
        assert record is not None
    else:
        run(confirm_live_restorable, ctx, plan)
        record = run(switch_pointer, ctx, plan, who)  # D
        run.log(f"switched {plan.channel_id} to release {record.active.release_id} "
                f"(sequence {record.sequence})")
    try:
        if plan.failed_checks is not None:
            raise ChecksDidNotPass(plan.failed_checks)
        checks = run(post_activation_checks, ctx, record, plan.release, measure,
                     plan.state.record)  # E
    except ChecksDidNotPass as failed:
        raise roll_back_failed(run, ctx, plan, record, failed.checks, who) from None
    except Refused as exc:
        # The pointer moved: a refusal now must not read as "nothing changed" (exit 1).
        raise LiveUnchecked(
            f"release {record.active.release_id} is live in {plan.channel_id} (sequence "
            f"{record.sequence}) but its checks were not recorded: {exc.message}; roll back, "
            "or resume the checks with --force", cause=exc) from exc
    figures = checks.figures
    run.log(f"checks of sequence {record.sequence} passed: {figures.get('row_count')} rows, "
            f"p95 {figures.get('latency_p95_ms', 0):.3g} ms, "
            f"peak RSS {figures.get('peak_rss_mb', 0):.0f} MB")
    done: OutcomeKind = "downgraded" if plan.kind == "downgrade" else "activated"
    if report:
        report_run(run, plan, record, checks, f"{done} and checked")
        publish_board(run, ctx, [plan.channel_id])
    if plan.kind == "downgrade":
        open_follow_up(run, record, checks, who.reason)
    live = f"release {record.active.release_id} is live (sequence {record.sequence})"
    baking = None
    if record.bake is not None:
        baking = BakeStatus(state="baking", total=record.bake.total,
                            interval_s=record.bake.interval_s)
        live += (f", baking: {record.bake.total} measurement(s) every "
                 f"{record.bake.interval_s:g}s before it counts as known-good")
    return Outcome(
        channel_id=plan.channel_id,
        outcome="resumed" if plan.resume else done,
        sequence=record.sequence,
        activation_id=record.activation_id,
        release_id=record.active.release_id,
        check_result=checks.result,
        message=live,
        orchestrator=run.orchestrator,
        bake=baking,
    )


def roll_back_failed(run: Runner, ctx: Context, plan: ActivationPlan, record: ActivationRecord,
                     checks: CheckRecord, who: Who) -> CheckFailed:
    """Quarantine the release that failed, roll back to the automatic target (guarded by its
    activation id), report; returns the error the run fails with."""
    run.log(f"checks of sequence {record.sequence} failed: {checks.reason}", warning=True)
    run(quarantine_release, ctx, record, checks.reason)
    try:
        back = switch_back(run, ctx, plan.channel_id, "previous", record.activation_id,
                           "auto_rollback", who, f"failed checks: {checks.reason}",
                           report=False).message
    except KristalError as exc:  # e.g. a first activation has nothing to go back to
        back = f"no automatic rollback: {exc.line()}"
    report_run(run, plan, record, checks, f"checks failed; {back}")
    publish_board(run, ctx, [plan.channel_id])
    return CheckFailed(
        f"release {record.active.release_id} failed its checks ({checks.reason}); {back}"
    )
