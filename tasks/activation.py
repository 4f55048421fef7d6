"""Thin Prefect tasks over `kristal.activation`, `kristal.staging` and `kristal.rollback`.

Side effects are never cached; storage hiccups retry with backoff; verification and policy
failures fail at once.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from kristal.formats.channel_docs import ActivationRecord, CheckRecord
from kristal.operations import plan as activation
from kristal.operations.plan import ActivationPlan, Who
from kristal.operations.rollback import RollbackDecision, RollbackTo, plan_rollback
from kristal.runtime import staging
from kristal.runtime.checks import CheckReport
from kristal.runtime.staging import StagedRelease
from tasks.runtime import RETRY_DELAYS, domain_context, retry_on_transient

RETRYING = {
    "retries": len(RETRY_DELAYS),
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_condition_fn": retry_on_transient,
    "cache_policy": NO_CACHE,
}


@task(name="resolve-and-verify", **RETRYING)
def resolve_and_verify(
    channel_id: str,
    release_id: int | None,
    exchange_id: str | None,
    pack_ids: list[str] | None,
    force: bool,
) -> ActivationPlan:
    return activation.plan_activation(
        domain_context(),
        channel_id,
        release_id=release_id,
        exchange_id=exchange_id,
        pack_ids=pack_ids,
        force=force,
    )


@task(name="stage-release", **RETRYING)
def stage_release(plan: ActivationPlan) -> StagedRelease:
    return staging.stage_release(domain_context(), plan.release)


@task(name="confirm-live-restorable", **RETRYING)
def confirm_live_restorable(plan: ActivationPlan) -> str:
    live = plan.state.record
    if live is None:
        return "no release is live: nothing to keep restorable"
    staging.confirm_restorable(domain_context(), live.active)
    return f"release {live.active.release_id} (live) is restorable"


@task(name="switch-pointer", cache_policy=NO_CACHE)
def switch_pointer(plan: ActivationPlan, who: Who) -> ActivationRecord:
    return activation.switch(domain_context(), plan, who)


@task(name="post-activation-checks", **RETRYING)
def post_activation_checks(record: ActivationRecord, plan: ActivationPlan) -> list[CheckReport]:
    return activation.measure(domain_context(), record, plan.release)


@task(name="record-check-outcome", **RETRYING)
def record_check_outcome(record: ActivationRecord, reports: list[CheckReport]) -> CheckRecord:
    return activation.record_checks(domain_context(), record, reports)


@task(name="quarantine-release", **RETRYING)
def quarantine_release(record: ActivationRecord, reason: str) -> None:
    activation.quarantine(domain_context(), record, reason)


# No retries: a retry after a switch that landed would roll back the rollback.
@task(name="rollback-switch", cache_policy=NO_CACHE)
def rollback_switch(
    channel_id: str, to: RollbackTo, expected_activation_id: str | None, kind: str, who: Who
) -> tuple[ActivationPlan | None, ActivationRecord | None, str]:
    """The rollback fast path as one step: choose and re-verify the target, re-hash its cached
    files (downloading only what is missing), switch. Returns (plan, record, no-op reason)."""
    ctx = domain_context()
    decision: RollbackDecision = plan_rollback(
        ctx, channel_id, to=to, expected_activation_id=expected_activation_id,
        kind=kind,  # type: ignore[arg-type]
    )
    if decision.plan is None:
        return None, None, decision.noop_reason or ""
    staging.stage_release(ctx, decision.plan.release)
    return decision.plan, activation.switch(ctx, decision.plan, who), ""


@task(name="plan-downgrade", **RETRYING)
def plan_downgrade_task(channel_id: str, release_id: int, authorization_id: str) -> ActivationPlan:
    from kristal.operations.downgrade import plan_downgrade

    return plan_downgrade(domain_context(), channel_id, release_id=release_id,
                          authorization_id=authorization_id)


@task(name="find-run-activation", **RETRYING)
def switched_by_run(channel_id: str, flow_run_id: str) -> str | None:
    """The live activation if the given run switched it forward (activate or downgrade)."""
    from kristal.channel import pointer as ptr

    live = ptr.read_pointer(domain_context().store, channel_id).record
    if live is None or live.flow_run_id != flow_run_id:
        return None
    if live.kind not in ("activate", "downgrade"):
        return None
    return live.activation_id


@task(name="quarantine-live", **RETRYING)
def quarantine_live(channel_id: str, activation_id: str, reason: str) -> None:
    """Quarantine the live release if `activation_id` is still the live one (else do nothing)."""
    from kristal.channel import pointer as ptr

    ctx = domain_context()
    live = ptr.read_pointer(ctx.store, channel_id).record
    if live is not None and live.activation_id == activation_id:
        activation.quarantine(ctx, live, reason)
