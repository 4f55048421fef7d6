"""The activate operation, steps A to E (DESIGN §5-§7), under the channel's lock:

  A, B  resolve the release from the channel's signed index and verify it (`plan`)
  C     stage it: download, verify and index, without touching what is live (`steps`)
  D, E  switch the pointer and check the release live; roll back on a failed check (`golive`)

A dry run stops after C and reports the plan. The live release asked for again (`force`)
resumes its checks, or finishes the rollback of checks that failed (DESIGN §6 invariant 5).
"""

from __future__ import annotations

from kristal.context import Context
from kristal.crashpoints import crash_point
from kristal.errors import ChecksNotPassed
from kristal.operations.dry_run import dry_run_result, staged_checks
from kristal.operations.golive import go_live
from kristal.operations.outcome import Outcome, Who
from kristal.operations.plan import ActivationPlan, plan_activation
from kristal.operations.reports import report_run
from kristal.operations.rollback import CHANNEL_LOCK_WAIT_S
from kristal.operations.runner import Runner
from kristal.operations.steps import stage_release


def activate(
    run: Runner,
    ctx: Context,
    *,
    channel_id: str,
    who: Who,
    release_id: int | None = None,
    exchange_id: str | None = None,
    pack_ids: list[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
    bake: str | None = None,
    bake_interval: str | None = None,
) -> Outcome:
    with run.lock([channel_id], wait_s=CHANNEL_LOCK_WAIT_S):
        plan = run(plan_activation, ctx, channel_id, release_id=release_id,
                   exchange_id=exchange_id, pack_ids=pack_ids, force=force,
                   bake=bake, bake_interval=bake_interval)  # A, B
        crash_point("after_verify")
        target = plan.release.entry.release_id
        run.log(f"verified release {target} against index v{plan.release.index.index_version}"
                f" of {channel_id}")
        if plan.noop:
            report_run(run, plan, None, None, "already live and checked")
            return Outcome(channel_id=channel_id, outcome="already_live", release_id=target,
                           plan=plan.summary(), message="already live and checked",
                           orchestrator=run.orchestrator)
        if plan.failed_checks is None:
            staged = run(stage_release, ctx, plan.release)  # C
            crash_point("after_stage")
            run.log(f"staged release {target}: {len(staged.files)} files kept, "
                    f"{len(staged.hashed_in_flight)} verified in flight, "
                    f"{staged.downloaded} downloaded")
        if dry_run:
            return _dry_run(run, ctx, plan)
        return go_live(run, ctx, plan, who)  # D, E


def _dry_run(run: Runner, ctx: Context, plan: ActivationPlan) -> Outcome:
    """After C: the plan, its diff against what is live and the staged index's checks;
    a failing expectation refuses (`check_failed`, exit 1: nothing switched)."""
    reports = run(staged_checks, ctx, plan.release)
    try:
        message, checks = dry_run_result(plan, reports)
    except ChecksNotPassed as failed:
        report_run(run, plan, None, None, f"dry run: {failed.message}")
        raise
    report_run(run, plan, None, None, "dry run: verified, staged and checked; nothing switched")
    return Outcome(channel_id=plan.channel_id, outcome="planned",
                   plan={**plan.summary(), "checks": checks},
                   release_id=plan.release.entry.release_id, orchestrator=run.orchestrator,
                   message=message)
