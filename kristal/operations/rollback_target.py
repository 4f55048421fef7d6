"""Choosing and verifying a rollback target (DESIGN §5 rules, §6 invariant 7).

A rollback goes back to a release this channel had live, found by following links from the
live record (never by listing history), re-verified against today's trust roots and
revocations. With `expected_activation_id` it does nothing unless that activation is live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kristal.channel import records
from kristal.channel.history import good_records
from kristal.context import Context
from kristal.errors import (
    ReleaseIdSubstitutionBlocked,
    ReleaseQuarantined,
    RollbackNotAuthorized,
    RollbackTargetMissing,
)
from kristal.formats.channel_docs import ActivationKind, ActivationRecord, ReleaseRef
from kristal.operations.plan import ActivationPlan
from kristal.verify.fetch import verify_release

RollbackTo = Literal["last-known-good", "previous"] | int


@dataclass
class RollbackDecision:
    """Either a plan to switch, or the reason nothing will be done (a no-op is not an error)."""

    plan: ActivationPlan | None
    noop_reason: str | None = None
    target_sequence: int | None = None


def _target_record(
    ctx: Context, live: ActivationRecord, to: RollbackTo, kind: ActivationKind
) -> tuple[ReleaseRef, int | None]:
    channel = live.channel_id
    if kind == "auto_rollback" or to == "previous":
        if live.previous is None:
            raise RollbackTargetMissing(
                f"sequence {live.sequence} of {channel} has no previous release"
            )
        if kind != "auto_rollback" and records.read_quarantine(
            ctx.store, channel, live.previous.release_id
        ):
            raise ReleaseQuarantined(
                f"previous release {live.previous.release_id} is quarantined here"
            )
        return live.previous, live.previous_sequence
    if to == "last-known-good":
        start = (
            records.read_history(ctx.store, channel, live.last_known_good.sequence)
            if live.last_known_good
            else None
        )
        for record in good_records(ctx.store, start):
            rid = record.active.release_id
            if rid == live.active.release_id or record.sequence >= live.sequence:
                continue
            if records.read_quarantine(ctx.store, channel, rid) is not None:
                continue
            return record.active, record.sequence
        raise RollbackTargetMissing(
            f"{channel} has no last-known-good release before sequence {live.sequence}"
        )
    if not isinstance(to, int) or to < 1 or to >= live.sequence:
        raise RollbackTargetMissing(
            f"rollback target sequence {to!r} must be an earlier sequence than {live.sequence}"
        )
    target = records.read_history(ctx.store, channel, to)
    if target is None:
        raise RollbackTargetMissing(f"{channel} has no history record {to}")
    if records.read_quarantine(ctx.store, channel, target.active.release_id) is not None:
        raise ReleaseQuarantined(f"release {target.active.release_id} is quarantined here")
    return target.active, target.sequence


def plan_rollback(
    ctx: Context,
    channel_id: str,
    *,
    to: RollbackTo = "last-known-good",
    expected_activation_id: str | None = None,
    kind: ActivationKind = "rollback",
) -> RollbackDecision:
    state = records.read_pointer(ctx.store, channel_id)
    repaired = records.repair_history(ctx.store, state)
    live = state.record
    if live is None:
        raise RollbackTargetMissing(
            f"{channel_id} has never had a release live: nothing to roll back"
        )
    if expected_activation_id is not None and live.activation_id != expected_activation_id:
        return RollbackDecision(
            None,
            (
                f"activation {expected_activation_id} is not live in {channel_id} (sequence "
                f"{live.sequence} is {live.activation_id}, release {live.active.release_id}); "
                "nothing rolled back"
            ),
        )
    target, target_sequence = _target_record(ctx, live, to, kind)
    if target.release_id == live.active.release_id:
        raise RollbackTargetMissing(f"release {target.release_id} is already live in {channel_id}")
    if kind == "rollback" and target.generation != live.active.generation:
        raise RollbackNotAuthorized(
            f"release {target.release_id} is generation {target.generation}, the live one "
            f"{live.active.generation}: that is a downgrade, which needs an authorization"
        )
    release = verify_release(
        ctx, channel_id, release_id=target.release_id, min_index_version=live.index_version
    )
    if ReleaseRef.of(release.entry) != target:
        raise ReleaseIdSubstitutionBlocked(
            f"the index entry of release {target.release_id} no longer binds the artifacts that "
            "were live"
        )
    plan = ActivationPlan(channel_id, state, release, kind, forced=False, repaired_history=repaired)
    plan.notes.append(f"rolling back to release {target.release_id} of sequence {target_sequence}")
    return RollbackDecision(plan, None, target_sequence)
