"""Choosing and verifying a rollback target (DESIGN §5 rules, §6 invariant 7).

A rollback goes back to a release this channel had live, found by following links from the
live record (never by listing history), re-verified against today's trust roots and
revocations. With `expected_activation_id` it does nothing unless that activation is live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kristal.channel import records
from kristal.channel.history import MAX_WALK, passed, proven_back
from kristal.channel.index import load_verified_index, read_index_bytes
from kristal.context import Context
from kristal.errors import (
    ReleaseIdSubstitutionBlocked,
    ReleaseQuarantined,
    RollbackFailed,
    RollbackNotAuthorized,
    RollbackTargetMissing,
)
from kristal.formats.channel_docs import ActivationKind, ReleaseRef
from kristal.operations.plan import ActivationPlan
from kristal.verify.fetch import verify_release

RollbackTo = Literal["last-known-good", "previous"] | int


@dataclass
class RollbackDecision:
    """Either a plan to switch, or the reason nothing will be done (a no-op is not an error)."""

    plan: ActivationPlan | None
    noop_reason: str | None = None
    target_sequence: int | None = None


def automatic_target(ctx: Context, state: records.PointerState) -> tuple[ReleaseRef, int]:
    """The automatic rollback's target (DESIGN §5): the nearest earlier record whose release is
    not the failed (live) one, not quarantined here, not revoked, not below the floor, and whose
    checks passed; usually the record's `previous`, across generations too (it was live a moment
    ago). Each record on the way is proven by the hash chain from the pointer down before it is
    trusted. None of them: `rollback_failed`, and nothing is changed."""
    live = state.record
    assert live is not None
    channel = live.channel_id
    raw_index = read_index_bytes(ctx.store, channel)
    index = (load_verified_index(raw_index[0], channel, ctx.trust(channel), now=ctx.now())
             if raw_index is not None else None)
    failed = live.active.release_id
    skipped: list[str] = []
    walk = proven_back(ctx, state, down_to=max(1, live.sequence - MAX_WALK))
    for record in walk:
        rid = record.active.release_id
        entry = index.release(rid) if index is not None else None
        why = (
            "the failed release" if rid == failed
            else "quarantined" if records.read_quarantine(ctx, channel, rid) is not None
            else "not in the index" if entry is None or index is None
            else "revoked" if index.revocation_for(entry, ctx.now()) is not None
            else "below the floor" if rid < index.minimum_allowed_release_id
            else "its checks did not pass" if not passed(ctx, record)
            else None
        )
        if why is None:
            return record.active, record.sequence
        skipped.append(f"sequence {record.sequence} (release {rid}): {why}")
    raise RollbackFailed(
        f"no safe automatic rollback target before sequence {live.sequence} of {channel}"
        + (f" ({'; '.join(skipped[:6])})" if skipped else ": nothing was live before it"))


def _target_record(
    ctx: Context, state: records.PointerState, to: RollbackTo, kind: ActivationKind
) -> tuple[ReleaseRef, int | None]:
    """The record to go back to, proven by the chain from the pointer down (DESIGN §6)."""
    live = state.record
    assert live is not None
    channel = live.channel_id
    if kind == "auto_rollback":
        return automatic_target(ctx, state)
    if to == "previous":
        if live.previous is None:
            raise RollbackTargetMissing(
                f"sequence {live.sequence} of {channel} has no previous release"
            )
        target = next(proven_back(ctx, state, down_to=live.sequence - 1))
    elif to == "last-known-good":
        for record in proven_back(ctx, state):
            rid = record.active.release_id
            if rid == live.active.release_id or not passed(ctx, record):
                continue
            if records.read_quarantine(ctx, channel, rid) is not None:
                continue
            return record.active, record.sequence
        raise RollbackTargetMissing(
            f"{channel} has no last-known-good release before sequence {live.sequence}"
        )
    else:
        if not isinstance(to, int) or to < 1 or to >= live.sequence:
            raise RollbackTargetMissing(
                f"rollback target sequence {to!r} must be an earlier sequence than "
                f"{live.sequence}")
        *_, target = proven_back(ctx, state, down_to=to)
    if records.read_quarantine(ctx, channel, target.active.release_id) is not None:
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
    state = records.read_pointer(ctx, channel_id)
    repaired = records.repair_history(ctx, state)
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
    target, target_sequence = _target_record(ctx, state, to, kind)
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
    floor = release.index.minimum_allowed_release_id
    if target.release_id < floor:
        message = (f"release {target.release_id} is below the floor {floor} of {channel_id}: "
                   "going there is a downgrade, which needs an authorization")
        if kind == "auto_rollback":
            raise RollbackFailed(f"no safe automatic rollback target: {message}")
        raise RollbackNotAuthorized(message)
    if ReleaseRef.of(release.entry) != target:
        raise ReleaseIdSubstitutionBlocked(
            f"the index entry of release {target.release_id} no longer binds the artifacts that "
            "were live"
        )
    plan = ActivationPlan(channel_id, state, release, kind, forced=False, repaired_history=repaired)
    plan.notes.append(f"rolling back to release {target.release_id} of sequence {target_sequence}")
    return RollbackDecision(plan, None, target_sequence)
