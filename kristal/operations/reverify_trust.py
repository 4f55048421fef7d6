"""Re-verification group 2 (`reverify-trust`): the live release verifies against today's trust
roots (index entry equal to the live record's `active`); the expiry horizon of the index, the
release's validation reports and the channel's trust keys (expired: failed; within
`EXPIRY_WARNING`: a warning, still ok); expired rollback authorizations (informational).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from kristal.channel.index import load_verified_index, read_index_bytes
from kristal.context import Context
from kristal.errors import (
    FileInventoryMissing,
    IndexExpired,
    KeyExpired,
    KristalError,
    ReleaseIdDowngradeBlocked,
    ReleaseIdSubstitutionBlocked,
    StorageUnavailable,
    ValidationReportMissing,
)
from kristal.formats import layout
from kristal.formats.artifacts import ValidationReport
from kristal.formats.channel_docs import (
    ActivationRecord,
    ChannelIndex,
    ReleaseRef,
    RollbackAuthorization,
)
from kristal.formats.identity import DocKind, verify_identity
from kristal.formats.models import parse_model
from kristal.formats.time import rfc3339
from kristal.operations.reverify_checks import (
    AUTHORIZATIONS,
    EXPIRY,
    LIVE_RELEASE,
    CheckRow,
    failed_row,
)
from kristal.operations.runner import step
from kristal.verify.fetch import read_by_id, verify_release

EXPIRY_WARNING = timedelta(days=7)


# --- 2. trust: verification, expiry horizon, authorizations ----------------------------------
def _verify_live(ctx: Context, live: ActivationRecord) -> CheckRow:
    try:
        release = verify_release(
            ctx,
            live.channel_id,
            release_id=live.active.release_id,
            min_index_version=live.index_version,
        )
        if ReleaseRef.of(release.entry) != live.active:
            raise ReleaseIdSubstitutionBlocked(
                f"the index entry of release {live.active.release_id} no longer binds the "
                "artifacts the live record names"
            )
        floor = release.index.minimum_allowed_release_id
        if live.active.release_id < floor and live.kind != "downgrade":
            # Below the floor only an authorized downgrade may be live.
            raise ReleaseIdDowngradeBlocked(
                f"live release {live.active.release_id} is below the channel floor {floor} and "
                f"was not put there by an authorized downgrade (sequence {live.sequence} is a "
                f"{live.kind})")
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return failed_row(LIVE_RELEASE, exc)
    return CheckRow(
        name=LIVE_RELEASE,
        ok=True,
        detail=(
            f"release {live.active.release_id} verifies against today's trust roots "
            f"(index v{release.index.index_version}, {len(release.packs)} pack(s), reports "
            f"{', '.join(release.report_ids) or 'none'})"
        ),
    )


def _load_index(ctx: Context, channel_id: str) -> ChannelIndex | None:
    """The index, verified as every reader verifies it (expiry judged by the caller)."""
    raw = read_index_bytes(ctx.store, channel_id)
    if raw is None:
        return None
    return load_verified_index(raw[0], channel_id, ctx.trust(channel_id), now=ctx.now())


def _read_report(ctx: Context, report_id: str) -> ValidationReport | None:
    try:
        return read_by_id(ctx.store, layout.validation_report(report_id),
                          DocKind.VALIDATION_REPORT, ValidationReport)
    except FileInventoryMissing:
        return None


def _expiry(ctx: Context, live: ActivationRecord, index: ChannelIndex | None) -> CheckRow:
    now = ctx.now()
    horizon = now + EXPIRY_WARNING
    expired: list[tuple[type[KristalError], str]] = []
    warnings: list[str] = []
    seen: list[str] = []

    def judge(what: str, moment: datetime | None, error: type[KristalError]) -> None:
        if moment is None:
            seen.append(f"{what}: no expiry")
        elif moment <= now:
            expired.append((error, f"{what} expired at {rfc3339(moment)}"))
        elif moment <= horizon:
            warnings.append(f"warning: {what} expires at {rfc3339(moment)} (within "
                            f"{EXPIRY_WARNING.days} days)")
        else:
            seen.append(f"{what} until {rfc3339(moment)}")

    try:
        if index is None:
            expired.append((FileInventoryMissing, "the channel index is missing"))
        else:
            judge(f"channel index v{index.index_version}", index.expires_at, IndexExpired)
            entry = index.release(live.active.release_id)
            for report_id in entry.validation_report_ids if entry else []:
                report = _read_report(ctx, report_id)
                if report is None:
                    expired.append((ValidationReportMissing, f"report {report_id} is missing"))
                else:
                    judge(f"{report.profile} report {report_id[:19]}", report.expires_at,
                          ValidationReportMissing)
        trust = ctx.trust(live.channel_id)
        for key in trust.keys:
            if trust.is_revoked(key.key_id):
                continue  # revoked keys are judged where they signed (verification)
            judge(f"key {key.key_id} ({', '.join(key.roles)})", key.not_after, KeyExpired)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return failed_row(EXPIRY, exc)
    if expired:
        error, _ = expired[0]
        detail = "; ".join([text for _, text in expired] + warnings)
        return CheckRow(name=EXPIRY, ok=False, detail=detail, code=error.code)
    return CheckRow(name=EXPIRY, ok=True, detail="; ".join(warnings + seen) or "nothing expires")


def _authorizations(ctx: Context, index: ChannelIndex | None) -> CheckRow:
    """Informational: which rollback authorizations of the index have expired."""
    if index is None or not index.rollback_authorizations:
        return CheckRow(name=AUTHORIZATIONS, ok=True, detail="no rollback authorizations")
    now = ctx.now()
    expired: list[str] = []
    current: list[str] = []
    for raw in index.rollback_authorizations:
        try:
            auth = parse_model(RollbackAuthorization, raw, what="rollback authorization")
            verify_identity(raw, DocKind.ROLLBACK_AUTHORIZATION)
        except KristalError as exc:
            expired.append(f"{str(raw.get('authorization_id'))[:19]} unreadable ({exc.code})")
            continue
        label = f"{auth.authorization_id[:19]} (release {auth.target_release_id})"
        if auth.expires_at <= now:
            expired.append(f"{label} expired at {rfc3339(auth.expires_at)}")
        else:
            current.append(f"{label} until {rfc3339(auth.expires_at)}")
    parts = []
    if expired:
        parts.append("expired (informational): " + "; ".join(expired))
    if current:
        parts.append("in force: " + "; ".join(current))
    return CheckRow(name=AUTHORIZATIONS, ok=True, detail=" | ".join(parts))


@step("reverify-trust")
def check_trust(ctx: Context, live: ActivationRecord) -> list[CheckRow]:
    rows = [_verify_live(ctx, live)]
    try:
        index = _load_index(ctx, live.channel_id)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return [*rows, failed_row(EXPIRY, exc, "the channel index does not parse: "),
                CheckRow(name=AUTHORIZATIONS, ok=True, detail="index unreadable: not judged")]
    return [*rows, _expiry(ctx, live, index), _authorizations(ctx, index)]


