"""Fleet activation, the domain part (no Prefect): one build released to many channels, the
waves it is activated in, and the skew report of which channel runs which release.

Rules:
- **One build, many channels.** Every channel has its own signed index, so a fleet release is
  the *same* Exchange, Runtime Pack(s) and validation reports named by an index entry in every
  channel (`publish_to_channels`). Publishing again per channel would not give the same IDs
  (signature and pack `created_at`, `build_id` differ), and the fleet would download N copies.
  Same IDs mean the payload is fetched once into the content-addressed cache and the query
  index is built once per pack ID.
- **Waves.** The canary channel(s) first, on their own, then the other channels in waves of
  `wave_size`, in the given order (`plan_waves`). A wave is done when every channel in it is.
- **Halt and veto.** The first wave with a failed channel (refused, or activated then rolled
  back by its checks) halts the fleet: later waves are not attempted; their channels are
  vetoed. Channels of the failed wave that did activate stay live (they passed their own
  checks); the failed channel was rolled back inside its activation, as in `activate`.
- **The veto is a record, not a revocation** (by default). A signed revocation
  (`governance.revoke`, reason `fleet-veto`) would be permanent (the index has no un-revoke),
  would need the channel-authority signing key on the runner that activates (activation
  otherwise needs no key), and a canary can fail for reasons of its own (latency, memory on
  its host) that say little about the other channels. The veto is therefore recorded in the
  fleet run's artifacts and result, and it is *durable without a revocation*: the failed
  channel's quarantine record (written by the automatic rollback) makes any re-run of the
  same fleet halt again at that wave, before the vetoed channels are touched. Where a hard,
  signed veto is wanted, `revoke_vetoed` (below; `FleetRequest.revoke_vetoed` in the flow)
  revokes the release in the vetoed channels' indexes with reason code `fleet-veto`.
- **Skew report** reads only pointers and check records (two small GETs per channel).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from kristal.channel.directory import channel_rows
from kristal.channel.index import update_index
from kristal.context import Context
from kristal.errors import (
    FileInventoryMissing,
    GenerationMismatch,
    KristalError,
    UsageInvalid,
    ValidationReportMissing,
)
from kristal.formats import layout
from kristal.formats.artifacts import ValidationReport
from kristal.formats.channel_docs import ChannelIndex
from kristal.formats.identity import DocKind
from kristal.formats.models import validate_channel_id
from kristal.formats.time import rfc3339
from kristal.publish.publisher import PublisherKeys, PublishResult, check_release_id_free
from kristal.store.s3 import ObjectStore
from kristal.trust.roots import TrustFile
from kristal.trust.signing import SigningKey
from kristal.verify.fetch import read_by_id

FLEET_VETO_REASON = "fleet-veto"



def _unique(channel_ids: Iterable[str], what: str) -> list[str]:
    seen: list[str] = []
    for channel_id in channel_ids:
        validate_channel_id(channel_id)
        if channel_id in seen:
            raise UsageInvalid(f"{what}: channel {channel_id} is listed twice")
        seen.append(channel_id)
    return seen


# --- one build released to many channels ------------------------------------------------------
def _report_profiles(store: ObjectStore, report_ids: list[str]) -> set[str]:
    profiles = set()
    for report_id in report_ids:
        try:
            report = read_by_id(store, layout.validation_report(report_id),
                                DocKind.VALIDATION_REPORT, ValidationReport)
        except FileInventoryMissing:
            continue
        profiles.add(report.profile)
    return profiles


def publish_to_channels(
    store: ObjectStore,
    trust_file: TrustFile,
    keys: PublisherKeys,
    *,
    result_of_first_publish: PublishResult,
    channel_ids: list[str],
    release_id: int,
    generation: int,
    now: Callable[[], datetime],
) -> list[PublishResult]:
    """Name the already-uploaded artifacts of one publish as `release_id` in other channels.

    Nothing is built or uploaded: each channel's index gets one entry (signed by the channel
    authority, conditional write) binding the same Exchange, packs, federation root and reports.
    The channel of the first publish is skipped if listed. Refused before any write when the
    generation differs from the artifacts' (they carry it, signed) or when a channel's trust
    entry requires a validation profile the build has no report for; refused per channel (the
    ones before it keep their entry) when the release id is taken or not above the highest.
    """
    first = result_of_first_publish
    if generation != first.generation:
        raise GenerationMismatch(
            f"the build carries generation {first.generation} in its signed manifests; "
            f"it cannot be released as generation {generation}"
        )
    if release_id < 1:
        raise UsageInvalid("release id >= 1 is required")
    targets = [c for c in _unique(channel_ids, "publish") if c != first.channel_id]
    profiles = _report_profiles(store, first.validation_report_ids)
    for channel_id in targets:
        missing = set(trust_file.for_channel(channel_id).required_profiles) - profiles
        if missing:
            raise ValidationReportMissing(
                f"channel {channel_id} requires profile(s) {sorted(missing)}; "
                f"the build has reports for {sorted(profiles)} only"
            )
    entry: dict[str, Any] = {
        "release_id": release_id,
        "generation": generation,
        "exchange_id": first.exchange_id,
        "runtime_pack_ids": list(first.runtime_pack_ids),
        "validation_report_ids": list(first.validation_report_ids),
        "published_at": rfc3339(now()),
    }
    if first.federation_id:
        entry["federation_id"] = first.federation_id

    def add_release(index: ChannelIndex | None) -> dict[str, Any]:
        from kristal.channel.index import index_body

        check_release_id_free(index, release_id)
        body = index_body(index)
        body["releases"].append(dict(entry))
        return body

    results = []
    for channel_id in targets:
        new_index = update_index(
            store, channel_id, trust_file.for_channel(channel_id), keys.authority, add_release,
            now=now,
        )
        results.append(
            PublishResult(
                channel_id=channel_id,
                release_id=release_id,
                generation=generation,
                exchange_id=first.exchange_id,
                runtime_pack_ids=list(first.runtime_pack_ids),
                federation_id=first.federation_id,
                validation_report_ids=list(first.validation_report_ids),
                index_version=new_index.index_version,
                row_count=first.row_count,
                failed_profiles=list(first.failed_profiles),
            )
        )
    return results


# --- waves ------------------------------------------------------------------------------------
def plan_waves(
    channel_ids: list[str], canary: list[str] | None, wave_size: int
) -> list[list[str]]:
    """Canary wave first (default: the first channel; `[]`: no canary), then `wave_size` each.

    Order is kept; every channel is in exactly one wave; a canary must be one of the channels.
    """
    if wave_size < 1:
        raise UsageInvalid(f"wave size must be at least 1, not {wave_size}")
    channels = _unique(channel_ids, "fleet")
    if not channels:
        raise UsageInvalid("a fleet needs at least one channel")
    canaries = channels[:1] if canary is None else _unique(canary, "canary")
    stray = [c for c in canaries if c not in channels]
    if stray:
        raise UsageInvalid(f"canary channel(s) {stray} are not in the fleet")
    rest = [c for c in channels if c not in canaries]
    waves = [canaries] if canaries else []
    waves += [rest[i : i + wave_size] for i in range(0, len(rest), wave_size)]
    return waves


# --- the veto, as a signed revocation (optional) ------------------------------------------------
def revoke_vetoed(
    ctx: Context, authority: SigningKey, channel_ids: list[str], release_id: int
) -> dict[str, str]:
    """Revoke `release_id` (reason `fleet-veto`) in each channel's index; channel -> outcome.

    A channel whose index does not have the release, or already revokes it, is reported, not
    failed: the veto is best effort per channel and never stops at the first refusal.
    """
    from kristal.channel.governance import revoke

    outcomes: dict[str, str] = {}
    for channel_id in channel_ids:
        try:
            revoke(ctx, authority, channel_id, release_id, FLEET_VETO_REASON)
            outcomes[channel_id] = "revoked"
        except KristalError as exc:
            outcomes[channel_id] = f"not revoked: {exc.line()}"
    return outcomes


# --- which channel runs which release -------------------------------------------------------
def skew_report(
    ctx: Context, channel_ids: list[str], known_checks: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per channel, in the given order: live release, generation, sequence, checks.

    Every pointer is read now. `known_checks` (activation ID -> check result) are results the
    caller wrote itself moments ago; a channel still live at one of those activations is not
    asked for its checks record again (it is write-once, so it cannot have changed).
    """
    return channel_rows(ctx, channel_ids, known_checks)


def skew_summary(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Release id (as text, `none` when nothing is live) -> the channels running it."""
    by_release: dict[str, list[str]] = {}
    for row in rows:
        key = "none" if row["release_id"] is None else str(row["release_id"])
        by_release.setdefault(key, []).append(row["channel"])
    return by_release
