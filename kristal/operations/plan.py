"""Steps A and B of an activation (DESIGN §5): read the pointer once, verify the release, and
apply the activation policy, giving the `ActivationPlan` every later step works from.

Policy, in order: at or above the floor; the live release again only with `force` (resume its
checks, or finish the rollback of checks that failed); not quarantined here unless forced;
above the highest activated release; not an older generation (that is a downgrade).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kristal.channel import records
from kristal.context import Context
from kristal.errors import (
    GenerationMismatch,
    ReleaseIdDowngradeBlocked,
    ReleaseIdSubstitutionBlocked,
    ReleaseQuarantined,
)
from kristal.formats.bake_docs import BakePlan, resolve_bake
from kristal.formats.channel_docs import (
    ActivationKind,
    CheckRecord,
    ReleaseRef,
)
from kristal.operations.runner import step
from kristal.verify.fetch import DocumentMemo, verify_release
from kristal.verify.verifier import VerifiedRelease


@dataclass
class ActivationPlan:
    channel_id: str
    state: records.PointerState
    release: VerifiedRelease
    kind: ActivationKind
    forced: bool
    resume: bool = False  # the live record is this release with checks pending: only check
    failed_checks: CheckRecord | None = None  # live, checks failed, rollback never happened
    noop: bool = False  # already live and checked
    repaired_history: bool = False
    bake: BakePlan | None = None  # what the new record promises (activate, downgrade)
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


@step("resolve-and-verify")
def plan_activation(
    ctx: Context,
    channel_id: str,
    *,
    release_id: int | None = None,
    exchange_id: str | None = None,
    pack_ids: list[str] | None = None,
    force: bool = False,
    memo: DocumentMemo | None = None,
    state: records.PointerState | None = None,
    bake: str | None = None,
    bake_interval: str | None = None,
) -> ActivationPlan:
    """Steps A and B: read the pointer once, verify the release, apply the activation policy.

    `memo`: content-addressed documents shared with other channels (`verify_release`);
    `state`: the caller's own read of this channel's pointer, moments ago (else read here);
    `bake`, `bake_interval`: the request's own bake, within the channel policy's bounds."""
    baking = resolve_bake(ctx.trust(channel_id).bake, channel_id, duration=bake,
                          interval=bake_interval)
    if state is None:
        state = records.read_pointer(ctx, channel_id)
    repaired = records.repair_history(ctx, state)
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
    plan = ActivationPlan(channel_id, state, release, "activate", force, repaired_history=repaired,
                          bake=baking)
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
            checks = records.read_checks(ctx, live)
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
        quarantined = records.read_quarantine(ctx, channel_id, target.release_id)
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
