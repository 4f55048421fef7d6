"""The steps of an activation (DESIGN §5, §6, §7), each callable on its own by a Prefect task.

plan (resolve + verify + policy) -> stage -> switch (pointer + history) -> post-checks ->
on failure: quarantine + automatic rollback to the record's `previous`. Nothing here decides
retries or concurrency; the flow does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kristal.channel import pointer as ptr
from kristal.channel.history import last_known_good_for, new_record
from kristal.context import Context
from kristal.crashpoints import crash_point
from kristal.errors import (
    GenerationMismatch,
    PointerConflict,
    ReleaseIdDowngradeBlocked,
    ReleaseIdSubstitutionBlocked,
    ReleaseQuarantined,
)
from kristal.formats.channel_docs import (
    ActivationKind,
    ActivationRecord,
    CheckRecord,
    QuarantineRecord,
    ReleaseRef,
)
from kristal.runtime.checkrunner import run_checks_isolated
from kristal.runtime.checks import CheckReport
from kristal.runtime.session import open_pinned
from kristal.verify.fetch import DocumentMemo, verify_release
from kristal.verify.verifier import VerifiedRelease


@dataclass(frozen=True)
class Who:
    """Who asked, and why: recorded on every record this run writes."""

    operator: str
    reason: str
    correlation_id: str
    flow_run_id: str | None = None


@dataclass
class ActivationPlan:
    channel_id: str
    state: ptr.PointerState
    release: VerifiedRelease
    kind: ActivationKind
    forced: bool
    resume: bool = False  # the live record is this release with checks pending: only check
    failed_checks: CheckRecord | None = None  # live, checks failed, rollback never happened
    noop: bool = False  # already live and checked
    repaired_history: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        live = self.state.record
        return {
            "channel_id": self.channel_id,
            "kind": self.kind,
            "live": live.active.model_dump(mode="json") if live else None,
            "live_sequence": self.state.sequence,
            "target": ReleaseRef.of(self.release.entry).model_dump(mode="json"),
            "forced": self.forced,
            "resume": self.resume,
            "noop": self.noop,
            "notes": self.notes,
        }


def plan_activation(
    ctx: Context,
    channel_id: str,
    *,
    release_id: int | None = None,
    exchange_id: str | None = None,
    pack_ids: list[str] | None = None,
    force: bool = False,
    memo: DocumentMemo | None = None,
    state: ptr.PointerState | None = None,
) -> ActivationPlan:
    """Steps A and B: read the pointer once, verify the release, apply the activation policy.

    `memo`: content-addressed documents shared with other channels (`verify_release`);
    `state`: the caller's own read of this channel's pointer, moments ago (else read here)."""
    if state is None:
        state = ptr.read_pointer(ctx.store, channel_id)
    repaired = ptr.repair_history(ctx.store, state)
    live = state.record
    release = verify_release(
        ctx,
        channel_id,
        release_id=release_id,
        exchange_id=exchange_id,
        pack_ids=pack_ids,
        min_index_version=live.index_version if live else 0,
        memo=memo,
    )
    plan = ActivationPlan(channel_id, state, release, "activate", force, repaired_history=repaired)
    target = release.entry
    if target.release_id < release.index.minimum_allowed_release_id:
        raise ReleaseIdDowngradeBlocked(
            f"release {target.release_id} is below the channel floor "
            f"{release.index.minimum_allowed_release_id}: only a downgrade can go there"
        )
    if live is not None:
        if live.active.release_id == target.release_id:
            if not force:
                raise ReleaseIdDowngradeBlocked(
                    f"release {target.release_id} is already live (sequence {live.sequence}); "
                    "--force --reason resumes its checks"
                )
            if ReleaseRef.of(target) != live.active:
                raise ReleaseIdSubstitutionBlocked(
                    f"the index entry of release {target.release_id} differs from the live record"
                )
            checks = ptr.read_checks(ctx.store, channel_id, live.sequence)
            plan.resume = checks is None
            plan.noop = checks is not None and checks.result == "passed"
            if checks is not None and checks.result != "passed":
                # A crash between the failed checks and the rollback: finish the rollback.
                plan.failed_checks = checks
            plan.notes.append(
                "resuming at the checks" if plan.resume
                else "already live and checked" if plan.noop
                else "checks had failed: finishing quarantine and rollback"
            )
            return plan
        quarantined = ptr.read_quarantine(ctx.store, channel_id, target.release_id)
        if quarantined is not None:
            if not force:
                raise ReleaseQuarantined(
                    f"release {target.release_id} failed here at sequence {quarantined.sequence} "
                    f"({quarantined.reason}); --force --reason re-activates it"
                )
            plan.notes.append(f"re-activating quarantined release {target.release_id} (forced)")
        if target.release_id < live.highest_activated_release_id or (
            target.release_id == live.highest_activated_release_id and not force
        ):
            raise ReleaseIdDowngradeBlocked(
                f"release {target.release_id} is not above the highest activated release "
                f"{live.highest_activated_release_id} of {channel_id}; use rollback or downgrade"
            )
        if target.generation < live.active.generation:
            raise GenerationMismatch(
                f"release {target.release_id} is generation {target.generation}, the live one "
                f"{live.active.generation}: moving to an older generation is a downgrade"
            )
    return plan


def switch(
    ctx: Context, plan: ActivationPlan, who: Who, kind: ActivationKind | None = None
) -> ActivationRecord:
    """Step D: one conditional write of the pointer, then the immutable history object."""
    target = plan.release.entry
    record = new_record(
        plan.state,
        channel_id=plan.channel_id,
        kind=kind or plan.kind,
        active=ReleaseRef.of(target),
        last_known_good=last_known_good_for(ctx.store, plan.state, target.release_id),
        index_version=plan.release.index.index_version,
        forced=plan.forced,
        operator=who.operator,
        reason=who.reason,
        correlation_id=who.correlation_id,
        flow_run_id=who.flow_run_id,
        now=ctx.now(),
        evidence={**plan.release.evidence, "report_ids": plan.release.report_ids},
    )
    crash_point("before_switch")
    ptr.commit(ctx.store, record, plan.state)
    crash_point("after_switch")
    ptr.write_history(ctx.store, record)
    crash_point("after_history")
    return record


def measure(ctx: Context, record: ActivationRecord, release: VerifiedRelease) -> list[CheckReport]:
    """Step E, measuring only: the pinned reader's indexes, checked in a fresh process each."""
    with open_pinned(ctx, record.channel_id) as session:
        if session.record.activation_id != record.activation_id:
            raise PointerConflict(
                f"sequence {record.sequence} is no longer live (now {session.record.sequence}, "
                f"{session.record.activation_id}); its checks are not ours to run"
            )
        from kristal.runtime.staging import index_path

        reports = [
            run_checks_isolated(index_path(ctx, p.pack_id), p.expectations) for p in release.packs
        ]
    crash_point("after_checks")
    return reports


def record_checks(
    ctx: Context, record: ActivationRecord, reports: list[CheckReport]
) -> CheckRecord:
    ok = all(r.passed for r in reports)
    failing = [o for r in reports for o in r.outcomes if not o.passed]
    reason = (
        "all checks passed"
        if ok
        else "; ".join(
            f"{o.name}: expected {o.expected}, measured {o.measured}" for o in failing[:4]
        )
    )
    previous = (
        ptr.read_checks(ctx.store, record.channel_id, record.previous_sequence)
        if record.previous_sequence
        else None
    )
    figures = {
        "row_count": sum(r.row_count for r in reports),
        "latency_p95_ms": max(r.latency_p95_ms for r in reports),
        "peak_rss_mb": max(r.peak_rss_mb for r in reports),
        "runs": min(r.runs for r in reports),
        "outcomes": [o.model_dump(mode="json") for r in reports for o in r.outcomes],
    }
    checks = CheckRecord(
        channel_id=record.channel_id,
        sequence=record.sequence,
        activation_id=record.activation_id,
        release_id=record.active.release_id,
        result="passed" if ok else "failed",
        reason=reason,
        figures=figures,
        previous_figures=previous.figures if previous else None,
        created_at=ctx.now(),
    )
    return ptr.write_checks(ctx.store, checks)


def quarantine(ctx: Context, record: ActivationRecord, reason: str) -> None:
    crash_point("before_rollback")
    ptr.write_quarantine(
        ctx.store,
        QuarantineRecord(
            channel_id=record.channel_id,
            release_id=record.active.release_id,
            reason=reason,
            sequence=record.sequence,
            activation_id=record.activation_id,
            created_at=ctx.now(),
        ),
    )
