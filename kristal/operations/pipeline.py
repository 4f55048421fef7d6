"""The activation steps as plain function calls, without Prefect.

Used where the orchestrator must be out of the way: the concurrency and crash tests (which
bypass the Prefect concurrency limit on purpose) and the orchestration-overhead benchmark.
The `activate` flow runs the same steps as tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kristal.context import Context
from kristal.crashpoints import crash_point
from kristal.errors import CheckFailed, KristalError
from kristal.formats.channel_docs import ActivationKind, ActivationRecord, CheckRecord
from kristal.operations import plan as activation
from kristal.operations.plan import ActivationPlan, Who
from kristal.operations.rollback import RollbackTo, plan_rollback
from kristal.runtime import staging
from kristal.runtime.checks import CheckReport

Measure = Callable[[ActivationRecord, ActivationPlan], list[CheckReport]]


@dataclass
class PipelineResult:
    record: ActivationRecord | None
    checks: CheckRecord | None
    rolled_back_to: ActivationRecord | None = None
    note: str = ""


def activate_release(
    ctx: Context, channel_id: str, release_id: int, who: Who, *, force: bool = False
) -> PipelineResult:
    plan = activation.plan_activation(ctx, channel_id, release_id=release_id, force=force)
    crash_point("after_verify")
    if plan.noop:
        return PipelineResult(plan.state.record, None, note="already live and checked")
    if plan.failed_checks is None:
        staging.stage_release(ctx, plan.release)
        crash_point("after_stage")
    return switch_and_check(ctx, plan, who)


def switch_and_check(ctx: Context, plan: ActivationPlan, who: Who,
                     measure: Measure | None = None) -> PipelineResult:
    """Steps D and E (as the `go_live` part of the flows); a failed check rolls back, raises.

    `measure` replaces the measurement (a fleet measures each pack once per run)."""
    if plan.resume or plan.failed_checks is not None:
        record = plan.state.record
        assert record is not None
    else:
        live = plan.state.record
        if live is not None:
            staging.confirm_restorable(ctx, live.active)
        record = activation.switch(ctx, plan, who)
    checks = plan.failed_checks
    if checks is None:
        reports = (measure(record, plan) if measure is not None
                   else activation.measure(ctx, record, plan.release))
        checks = activation.record_checks(ctx, record, reports)
    if checks.result == "passed":
        return PipelineResult(record, checks)
    activation.quarantine(ctx, record, checks.reason)
    rid = record.active.release_id
    try:
        back = rollback_release(ctx, plan.channel_id, "previous", who, kind="auto_rollback",
                                expected_activation_id=record.activation_id)
    except KristalError as exc:
        raise CheckFailed(
            f"release {rid} failed its checks ({checks.reason}); no rollback: {exc.line()}"
        ) from None
    raise CheckFailed(f"release {rid} failed its checks ({checks.reason}); {back.note}")


def downgrade_release(ctx: Context, channel_id: str, release_id: int, authorization_id: str,
                      who: Who) -> PipelineResult:
    from kristal.operations.downgrade import plan_downgrade

    plan = plan_downgrade(ctx, channel_id, release_id=release_id,
                          authorization_id=authorization_id)
    staging.stage_release(ctx, plan.release)
    return switch_and_check(ctx, plan, who)


def rollback_release(
    ctx: Context,
    channel_id: str,
    to: RollbackTo,
    who: Who,
    *,
    kind: ActivationKind = "rollback",
    expected_activation_id: str | None = None,
) -> PipelineResult:
    decision = plan_rollback(
        ctx, channel_id, to=to, expected_activation_id=expected_activation_id, kind=kind
    )
    if decision.plan is None:
        return PipelineResult(None, None, note=decision.noop_reason or "")
    staging.stage_release(ctx, decision.plan.release)
    record = activation.switch(ctx, decision.plan, who)
    checks = activation.record_checks(
        ctx, record, activation.measure(ctx, record, decision.plan.release)
    )
    return PipelineResult(
        record,
        checks,
        rolled_back_to=record,
        note=f"release {record.active.release_id} is live again (sequence {record.sequence})",
    )
