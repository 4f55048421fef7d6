"""Steps C to E, shared by every operation that puts a release live (activate, rollback,
downgrade, a fleet's channel): stage it, keep the live one restorable, switch the pointer with
its history record, check the new release through the pinned reader, quarantine a release that
failed (DESIGN §6, §7).

A failed check is a failed step (`ChecksDidNotPass`, raised after its record is written), so
the run shows which step failed; the caller decides the rollback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kristal.channel import bakes, records
from kristal.channel import pointer as ptr
from kristal.channel.history import last_known_good_for
from kristal.channel.pointer import new_record
from kristal.context import Context
from kristal.crashpoints import crash_point
from kristal.errors import PointerConflict, PointerInvalid, StorageUnavailable
from kristal.formats import layout
from kristal.formats.channel_docs import (
    ActivationKind,
    ActivationRecord,
    CheckRecord,
    QuarantineRecord,
    ReleaseRef,
)
from kristal.operations.outcome import Who
from kristal.operations.plan import ActivationPlan
from kristal.operations.runner import step
from kristal.runtime import staging
from kristal.runtime.checkrunner import run_checks_isolated
from kristal.runtime.checks import CheckReport
from kristal.runtime.session import open_pinned
from kristal.runtime.staging import StagedRelease
from kristal.verify.verifier import VerifiedRelease

# A measurement that replaces the pinned reader's own (a fleet measures each pack once).
Measure = Callable[[ActivationRecord], list[CheckReport]]


class ChecksDidNotPass(Exception):
    """The post-activation checks of `checks.sequence` failed (their record is written)."""

    def __init__(self, checks: CheckRecord) -> None:
        super().__init__(f"release {checks.release_id} failed its checks: {checks.reason}")
        self.checks = checks


@step("stage-release")
def stage_release(ctx: Context, release: VerifiedRelease) -> StagedRelease:
    """Step C: every payload into the content-addressed cache, then each pack's query index;
    nothing live is touched."""
    return staging.stage_release(ctx, release)


@step("confirm-live-restorable")
def confirm_live_restorable(ctx: Context, plan: ActivationPlan) -> str:
    """Before moving away from the live release, its objects must still be there (a rollback
    would need them)."""
    live = plan.state.record
    if live is None:
        return "no release is live: nothing to keep restorable"
    staging.confirm_restorable(ctx, live.active)
    return f"release {live.active.release_id} (live) is restorable"


@step("switch-pointer", retries=False, switches=True)
def switch_pointer(ctx: Context, plan: ActivationPlan, who: Who,
                   kind: ActivationKind | None = None) -> ActivationRecord:
    """Step D: one conditional write of the pointer, then the immutable history object."""
    target = plan.release.entry
    record = new_record(
        ctx.keys,
        plan.state,
        channel_id=plan.channel_id,
        kind=kind or plan.kind,
        active=ReleaseRef.of(target),
        last_known_good=last_known_good_for(ctx, plan.state, target.release_id),
        index_version=plan.release.index.index_version,
        forced=plan.forced,
        operator=who.operator,
        reason=who.reason,
        correlation_id=who.correlation_id,
        flow_run_id=who.flow_run_id,
        now=ctx.now(),
        evidence={**plan.release.evidence, "report_ids": plan.release.report_ids,
                  **({"trust_file_sha256": ctx.trust_sha256} if ctx.trust_sha256 else {}),
                  **({"orchestrator": who.orchestrator} if who.orchestrator != "prefect" else {})},
        bake=plan.bake,
    )
    _require_free_slots(ctx, record, plan.state)
    crash_point("before_switch")
    ptr.commit(ctx, record, plan.state)
    crash_point("after_switch")
    records.write_history(ctx, record)
    crash_point("after_history")
    if plan.state.record is not None and plan.state.record.bake is not None:
        end_superseded_bake(ctx, plan.state.record, record)
    return record


def end_superseded_bake(ctx: Context, before: ActivationRecord, after: ActivationRecord) -> None:
    """The switch away from a release that was baking ends its bake: `superseded` (unless a
    verdict stands already). Best effort: the pointer has moved either way, and the bake's
    state reads as superseded without the record."""
    try:
        if ctx.store.head(layout.bake_verdict(before.channel_id, before.sequence)) is None:
            done = sum(1 for _ in ctx.store.list_keys(
                layout.bake_prefix(before.channel_id, before.sequence)))
            bakes.write_verdict(ctx, before, "superseded", done=done, now=ctx.now(),
                                reason=f"{after.kind} to sequence {after.sequence} during the bake",
                                superseded_by=after.sequence)
    except StorageUnavailable:
        pass


def _require_free_slots(ctx: Context, record: ActivationRecord,
                        read: records.PointerState) -> None:
    """The record's history and checks slots must be empty before the switch: a record there
    while the pointer has not moved was not written by a switch of this sequence, and writing
    after it would adopt it (DESIGN §6): `pointer_invalid`, nothing written. If the pointer
    moved meanwhile, another writer won the sequence: `pointer_conflict`, as the commit says."""
    channel, sequence = record.channel_id, record.sequence
    for what, key in (("history", layout.history(channel, sequence)),
                      ("checks", layout.checks(channel, sequence))):
        if ctx.store.head(key) is not None:
            now = records.read_pointer(ctx, channel)
            if now.sequence != read.sequence:
                raise PointerConflict(
                    f"pointer of {channel} moved to sequence {now.sequence} while we prepared "
                    f"sequence {sequence}; nothing was changed")
            raise PointerInvalid(
                f"{what} record {sequence} of {channel} already exists before sequence "
                f"{sequence} was switched to: not written by this channel's switches; nothing "
                "was changed")


def pack_checks(ctx: Context, pack: Any) -> CheckReport:
    """One pack's expectations against its index in the cache, in a fresh process (its own
    peak RSS): the live checks (under the pinned reader) and a dry run's (staged, not live)."""
    return run_checks_isolated(staging.index_path(ctx, pack.pack_id), pack.expectations,
                               pack.manifest.triples().sha256)


def measure_pinned(ctx: Context, record: ActivationRecord,
                   release: VerifiedRelease) -> list[CheckReport]:
    """The pinned reader's indexes, checked in a fresh process each (its own peak RSS)."""
    sources = {p.pack_id: p.manifest.triples().sha256 for p in release.packs}
    with open_pinned(ctx, record.channel_id, sources=sources) as session:
        if session.record.activation_id != record.activation_id:
            raise PointerConflict(
                f"sequence {record.sequence} is no longer live (now {session.record.sequence}, "
                f"{session.record.activation_id}); its checks are not ours to run"
            )
        reports = [pack_checks(ctx, p) for p in release.packs]
    crash_point("after_checks")
    return reports


def record_checks(
    ctx: Context, record: ActivationRecord, reports: list[CheckReport],
    before: ActivationRecord | None = None,
) -> CheckRecord:
    """The write-once `checks/<sequence>.json` of these measurements, beside the previous
    release's figures (`before`: the record this one replaced, when the caller has it); the
    record that stands is returned (the first written wins)."""
    ok = all(r.passed for r in reports)
    failing = [o for r in reports for o in r.outcomes if not o.passed]
    reason = (
        "all checks passed"
        if ok
        else "; ".join(
            f"{o.name}: expected {o.expected}, measured {o.measured}" for o in failing[:4]
        )
    )
    if before is None or before.sequence != record.previous_sequence:
        before = (records.read_history(ctx, record.channel_id, record.previous_sequence)
                  if record.previous_sequence else None)
    previous = records.read_checks(ctx, before) if before is not None else None
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
    return records.write_checks(ctx, record, checks)


@step("post-activation-checks")
def post_activation_checks(ctx: Context, record: ActivationRecord, release: VerifiedRelease,
                           measure: Measure | None = None,
                           before: ActivationRecord | None = None) -> CheckRecord:
    """Step E: measure the live release through the pinned reader and record the outcome;
    raises `ChecksDidNotPass` (after recording) when a check failed."""
    reports = measure(record) if measure is not None else measure_pinned(ctx, record, release)
    checks = record_checks(ctx, record, reports, before)
    if checks.result != "passed":
        raise ChecksDidNotPass(checks)
    return checks


@step("quarantine-release")
def quarantine_release(ctx: Context, record: ActivationRecord, reason: str) -> None:
    """The write-once `quarantine/<release_id>.json`: this release failed here."""
    crash_point("before_rollback")
    records.write_quarantine(
        ctx,
        QuarantineRecord(
            channel_id=record.channel_id,
            release_id=record.active.release_id,
            reason=reason,
            sequence=record.sequence,
            activation_id=record.activation_id,
            created_at=ctx.now(),
        ),
    )
