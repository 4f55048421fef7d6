"""Downgrades (DESIGN §5): to an older generation, or below the floor, only to a release named by
an unexpired rollback authorization of this channel, signed by the channel authority, whose pack
IDs are exactly the target's. The target then goes through the full verification, staging and
post-activation gates of an activation; nothing of the current release is kept.
"""

from __future__ import annotations

from kristal.channel import pointer as ptr
from kristal.context import Context
from kristal.errors import (
    KristalError,
    ReleaseQuarantined,
    RollbackNotAuthorized,
    RollbackTargetMissing,
)
from kristal.formats.channel_docs import ChannelIndex, RollbackAuthorization
from kristal.formats.identity import DocKind, check_id, verify_identity
from kristal.formats.models import parse_model
from kristal.operations.plan import ActivationPlan
from kristal.trust.signing import require_signatures
from kristal.verify.fetch import verify_release


def find_authorization(
    ctx: Context, index: ChannelIndex, authorization_id: str, release_id: int
) -> RollbackAuthorization:
    """The authorization in the (already verified) index, checked on its own merits."""
    check_id(authorization_id, "authorization_id")
    raw = next(
        (a for a in index.rollback_authorizations if a.get("authorization_id") == authorization_id),
        None,
    )
    if raw is None:
        raise RollbackNotAuthorized(
            f"no rollback authorization {authorization_id} in the index of {index.channel_id}"
        )
    try:
        auth = parse_model(RollbackAuthorization, raw, what="rollback authorization")
        verify_identity(raw, DocKind.ROLLBACK_AUTHORIZATION)
        require_signatures(
            raw,
            DocKind.ROLLBACK_AUTHORIZATION,
            ctx.trust(index.channel_id),
            "channel-authority",
            now=ctx.now(),
            what="rollback authorization",
        )
    except KristalError as exc:
        raise RollbackNotAuthorized(f"authorization {authorization_id}: {exc.line()}") from None
    if auth.channel_id != index.channel_id:
        raise RollbackNotAuthorized(
            f"authorization {authorization_id} is for channel {auth.channel_id}, "
            f"not {index.channel_id}"
        )
    if auth.expires_at <= ctx.now():
        raise RollbackNotAuthorized(
            f"authorization {authorization_id} expired at {auth.expires_at:%Y-%m-%dT%H:%M:%SZ}"
        )
    if auth.target_release_id != release_id:
        raise RollbackNotAuthorized(
            f"authorization {authorization_id} names release {auth.target_release_id}, "
            f"not {release_id}"
        )
    return auth


def plan_downgrade(
    ctx: Context, channel_id: str, *, release_id: int, authorization_id: str
) -> ActivationPlan:
    state = ptr.read_pointer(ctx.store, channel_id)
    repaired = ptr.repair_history(ctx.store, state)
    live = state.record
    if live is None:
        raise RollbackTargetMissing(f"{channel_id} has nothing live to downgrade from")
    release = verify_release(
        ctx, channel_id, release_id=release_id, min_index_version=live.index_version
    )
    auth = find_authorization(ctx, release.index, authorization_id, release_id)
    if sorted(auth.target_runtime_pack_ids) != sorted(release.entry.runtime_pack_ids):
        raise RollbackNotAuthorized(
            f"authorization {authorization_id} blesses packs {auth.target_runtime_pack_ids}, "
            f"release {release_id} has {release.entry.runtime_pack_ids}"
        )
    if live.active.release_id == release_id:
        raise RollbackTargetMissing(f"release {release_id} is already live in {channel_id}")
    if ptr.read_quarantine(ctx.store, channel_id, release_id) is not None:
        raise ReleaseQuarantined(f"release {release_id} is quarantined in {channel_id}")
    plan = ActivationPlan(
        channel_id, state, release, "downgrade", forced=False, repaired_history=repaired
    )
    plan.notes.append(
        f"downgrade from release {live.active.release_id} (generation "
        f"{live.active.generation}) to release {release_id} (generation "
        f"{release.entry.generation}) under authorization {authorization_id}: {auth.reason}"
    )
    release.evidence["authorization"] = {
        "authorization_id": authorization_id,
        "issuer": auth.issuer,
        "expires_at": auth.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return plan
