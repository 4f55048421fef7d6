"""The activation steps as plain function calls, without Prefect.

Used where the orchestrator must be out of the way: the concurrency and crash tests (which
bypass the Prefect concurrency limit on purpose) and the orchestration-overhead benchmark.
The `activate` flow runs the same steps as tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

from kristal import activation, staging
from kristal.activation import Who
from kristal.context import Context
from kristal.errors import CheckFailed, KristalError
from kristal.models import ActivationKind, ActivationRecord, CheckRecord
from kristal.rollback import RollbackTo, plan_rollback


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
    if plan.noop:
        return PipelineResult(plan.state.record, None, note="already live and checked")
    staging.stage_release(ctx, plan.release)
    if plan.resume:
        record = plan.state.record
        assert record is not None
    else:
        live = plan.state.record
        if live is not None:
            from kristal.release_io import verify_release

            staging.confirm_restorable(
                ctx, verify_release(ctx, channel_id, release_id=live.active.release_id)
            )
        record = activation.switch(ctx, plan, who)
    checks = activation.record_checks(ctx, record, activation.measure(ctx, record, plan.release))
    if checks.result == "passed":
        return PipelineResult(record, checks)
    activation.quarantine(ctx, record, checks.reason)
    try:
        back = rollback_release(
            ctx,
            channel_id,
            "previous",
            who,
            kind="auto_rollback",
            expected_activation_id=record.activation_id,
        )
    except KristalError as exc:
        raise CheckFailed(
            f"release {release_id} failed its checks ({checks.reason}); no rollback: {exc.line()}"
        ) from None
    raise CheckFailed(f"release {release_id} failed its checks ({checks.reason}); {back.note}")


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
