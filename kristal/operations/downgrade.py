"""Downgrades (DESIGN §5): to an older generation, or below the floor, only to a release named by
an unexpired rollback authorization of this channel, signed by the channel authority, whose pack
IDs are exactly the target's. The target then goes through the full verification, staging and
post-activation gates of an activation; nothing of the current release is kept.
"""

from __future__ import annotations

from kristal.channel import records
from kristal.context import Context
from kristal.errors import (
    KristalError,
    PointerConflict,
    ReleaseQuarantined,
    RollbackNotAuthorized,
    RollbackTargetMissing,
)
from kristal.formats.bake_docs import resolve_bake
from kristal.formats.channel_docs import ChannelIndex, RollbackAuthorization
from kristal.formats.identity import DocKind, check_id, verify_identity
from kristal.formats.models import parse_model
from kristal.formats.time import rfc3339
from kristal.operations import approval
from kristal.operations.golive import go_live
from kristal.operations.outcome import Outcome, Who
from kristal.operations.plan import ActivationPlan
from kristal.operations.rollback import CHANNEL_LOCK_WAIT_S
from kristal.operations.runner import Runner, step
from kristal.operations.steps import stage_release
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


@step("plan-downgrade")
def plan_downgrade(
    ctx: Context, channel_id: str, *, release_id: int, authorization_id: str
) -> ActivationPlan:
    state = records.read_pointer(ctx, channel_id)
    repaired = records.repair_history(ctx, state)
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
    if records.read_quarantine(ctx, channel_id, release_id) is not None:
        raise ReleaseQuarantined(f"release {release_id} is quarantined in {channel_id}")
    plan = ActivationPlan(
        channel_id, state, release, "downgrade", forced=False, repaired_history=repaired,
        bake=resolve_bake(ctx.trust(channel_id).bake, channel_id),
    )
    plan.notes.append(
        f"downgrade from release {live.active.release_id} (generation "
        f"{live.active.generation}) to release {release_id} (generation "
        f"{release.entry.generation}) under authorization {authorization_id}: {auth.reason}"
    )
    release.evidence["authorization"] = {
        "authorization_id": authorization_id,
        "issuer": auth.issuer,
        "expires_at": rfc3339(auth.expires_at),
    }
    return plan


def plan_markdown(plan: ActivationPlan, rules: list[str]) -> str:
    """What the approver is shown: from what to what, under which authorization, the rules."""
    summary = plan.summary()
    live, target = summary["live"] or {}, summary["target"]
    auth = plan.release.evidence.get("authorization", {})
    return "\n".join([
        f"## Downgrade `{plan.channel_id}`",
        f"- live now: release {live.get('release_id')} (generation {live.get('generation')})",
        f"- will be: release {target['release_id']} (generation {target['generation']})",
        f"- exchange: `{target['exchange_id']}`",
        *[f"- pack: `{p}`" for p in target["runtime_pack_ids"]],
        f"- authorization: `{auth.get('authorization_id')}` by {auth.get('issuer')}, "
        f"expires {auth.get('expires_at')}",
        *[f"- {note}" for note in plan.notes],
        *rules,
    ])


def downgrade(
    run: Runner,
    ctx: Context,
    *,
    channel_id: str,
    release_id: int,
    authorization_id: str,
    who: Who,
    require_approval: bool = False,
) -> Outcome:
    """To an older generation through a signed authorization, with the full verification,
    staging and post-activation gates; with an approval (asked for, or the channel's policy),
    a human decides between staging and the switch.

    The channel lock is not held while a human decides: after the approval the downgrade
    takes it, plans again and goes on only if the live activation is still the one the
    approver was shown (else `pointer_conflict`, nothing switched)."""
    policy = ctx.trust(channel_id).approval
    if not (require_approval or policy.required):
        with run.lock([channel_id], wait_s=CHANNEL_LOCK_WAIT_S):
            plan = run(plan_downgrade, ctx, channel_id, release_id=release_id,
                       authorization_id=authorization_id)
            run(stage_release, ctx, plan.release)
            return go_live(run, ctx, plan, who)
    shown = run(plan_downgrade, ctx, channel_id, release_id=release_id,
                authorization_id=authorization_id)
    run(stage_release, ctx, shown.release)
    answer = run.ask_approval(plan_markdown(shown, approval.rules_markdown(policy, who)),
                              approval.timeout_s(policy))
    approved = approval.judge(run, channel_id, release_id, answer, policy, who)
    with run.lock([channel_id], wait_s=CHANNEL_LOCK_WAIT_S):
        plan = run(plan_downgrade, ctx, channel_id, release_id=release_id,
                   authorization_id=authorization_id)
        was, now = shown.state.record, plan.state.record
        if was is None or now is None or was.activation_id != now.activation_id:
            raise PointerConflict(
                f"{channel_id} changed while the downgrade waited for its approval (sequence "
                f"{was.sequence if was else None} then, {now.sequence if now else None} now): "
                "nothing switched; ask for the downgrade again")
        run(stage_release, ctx, plan.release)
        plan.release.evidence["approved_by"] = approved.approver
        plan.notes.append(f"approved by {approved.approver}"
                          + (f": {approved.comment}" if approved.comment else ""))
        return go_live(run, ctx, plan, who)
