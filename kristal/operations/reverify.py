"""Nightly re-verification of what is live (DESIGN §6 invariants 4-5, §8 `reverify`).

For one channel, each check group below returns rows (name, ok, detail, code); a failed row
carries the error code that explains it. Nothing here changes what is live: the only write is
the idempotent repair of a missing `history[pointer.sequence]` (invariant 4).

Groups, in order (each callable on its own, as one Prefect task each):
1. `check_pointer_chain`: the pointer parses, history is dense 1..N, every record links to its
   predecessor by `prev_record_sha256`, and the pointer equals history[N] (this reads the whole
   history: a nightly job, not a hot path).
2. `check_trust`: the live release verifies against today's trust roots (`verify_release`,
   index entry equal to the live record's `active`); the expiry horizon of the index, the
   release's validation reports and the channel's trust keys (expired: failed; within
   `EXPIRY_WARNING`: a warning, still ok); expired rollback authorizations (informational).
3. `check_objects`: every payload object of the live release re-hashes (streaming) to its
   manifest's sha256 and size.
4. `check_local_index`: the staged query index of each live pack, when this machine has one,
   was built from that pack's triples file and holds the expected row count.
5. `check_checks_record`: the live record's `checks/<sequence>.json` passed, or is missing for
   less than the checks timeout (pending); missing longer, or failed, fails (invariant 5).

`StorageUnavailable` is not turned into a row by the group functions, so a task wrapping one can
retry it; `reverify_channel` (no Prefect) converts it into a failed row as a last resort.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

from kristal.channel import pointer as ptr
from kristal.channel.index import read_index_bytes
from kristal.context import Context
from kristal.errors import (
    ALL_ERRORS,
    CheckFailed,
    FileHashMismatch,
    FileInventoryMissing,
    IndexExpired,
    KeyExpired,
    KristalError,
    PointerInvalid,
    ReleaseIdSubstitutionBlocked,
    StorageUnavailable,
    ValidationReportMissing,
)
from kristal.formats import layout
from kristal.formats.artifacts import RuntimePackManifest, ValidationReport
from kristal.formats.canonical import canonical_bytes, canonical_sha256, parse_json
from kristal.formats.channel_docs import (
    ActivationRecord,
    ChannelIndex,
    ReleaseRef,
    RollbackAuthorization,
)
from kristal.formats.identity import DocKind, verify_identity
from kristal.formats.models import EXPECTATIONS_EXT, parse_model
from kristal.runtime.sqlite_index import PinnedReader
from kristal.runtime.staging import TRIPLES_PATH, index_path, record_inventory
from kristal.store.s3 import ObjectNotFound, ObjectStore
from kristal.verify.fetch import verify_release
from kristal.verify.verifier import MAX_MANIFEST_BYTES

EXPIRY_WARNING = timedelta(days=7)
DEFAULT_CHECKS_TIMEOUT_S = 900.0
HASH_WORKERS = 4
HISTORY_WORKERS = 8
_CHANNEL_INDEX_KEY = re.compile(
    r"^channels/([a-z0-9][a-z0-9-]{0,62}/[a-z0-9][a-z0-9-]{0,62}/[a-z0-9][a-z0-9-]{0,62})"
    r"/index\.json$"
)

# Row names (stable: tests, artifacts and alerts refer to them).
POINTER_CHAIN = "pointer-and-history-chain"
LIVE_RELEASE = "live-release-verifies"
EXPIRY = "expiry-horizon"
AUTHORIZATIONS = "rollback-authorizations"
OBJECTS = "objects-rehash"
LOCAL_INDEX = "local-query-index"
CHECKS_RECORD = "post-activation-checks"


class CheckRow(BaseModel):
    """One line of a channel's re-verification table."""

    model_config = ConfigDict(frozen=True)

    name: str
    ok: bool
    detail: str
    code: str | None = None  # the error code of a failed row


class ChannelReport(BaseModel):
    """Every check of one channel; `ok` when every row is."""

    channel_id: str
    sequence: int | None = None
    activation_id: str | None = None
    release_id: int | None = None
    rows: list[CheckRow]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def failures(self) -> list[CheckRow]:
        return [row for row in self.rows if not row.ok]

    def reasons(self) -> list[str]:
        return [f"{r.name}: {r.code or 'failed'}: {r.detail}" for r in self.failures]

    def error(self) -> KristalError:
        """The coded error a run fails with: `CheckFailed` when the post-activation checks
        (failed, or missing past the timeout) caused it, else the first failure's own code."""
        failures = self.failures
        if not failures:
            raise ValueError(f"{self.channel_id} passed re-verification: no error to raise")
        message = f"{self.channel_id} failed re-verification: " + "; ".join(self.reasons())
        if any(r.name == CHECKS_RECORD for r in failures):
            return CheckFailed(message)
        return error_class(failures[0].code)(message)


def error_class(code: str | None) -> type[KristalError]:
    """The `KristalError` subclass with this code (`CheckFailed` for an unknown one)."""
    return next((cls for cls in ALL_ERRORS if cls.code == code), CheckFailed)


def _failed(name: str, exc: KristalError, prefix: str = "") -> CheckRow:
    return CheckRow(name=name, ok=False, detail=f"{prefix}{exc.message}", code=exc.code)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- discovery -------------------------------------------------------------------------------
def list_channels(ctx: Context) -> list[str]:
    """Every channel with a signed index in the bucket (`channels/*/*/*/index.json`), sorted."""
    found = {
        match.group(1)
        for key in ctx.store.list_keys("channels/")
        if (match := _CHANNEL_INDEX_KEY.match(key))
    }
    return sorted(found)


# --- 1. pointer and history chain ------------------------------------------------------------
def _read_history_raw(
    store: ObjectStore, channel_id: str, sequence: int
) -> tuple[ActivationRecord, dict[str, Any]] | None:
    try:
        data, _etag = store.get_bytes(
            layout.history(channel_id, sequence), max_bytes=ptr.MAX_RECORD_BYTES
        )
    except ObjectNotFound:
        return None
    record, raw = ptr.parse_record(data, channel_id, what=f"history record {sequence}")
    if record.sequence != sequence:
        raise PointerInvalid(f"history object {sequence} holds sequence {record.sequence}")
    return record, raw


def verify_chain(
    store: ObjectStore,
    channel_id: str,
    upto_sequence: int,
    *,
    pointer: ptr.PointerState | None = None,
) -> int:
    """Walk history 1..`upto_sequence`: dense, each record hash-linked to its predecessor, and
    the pointer (read here unless given) equal to the last one. Returns the records checked;
    any break raises `PointerInvalid` naming the first bad sequence.

    The link is `canonical_sha256` of the previous record exactly as stored (its JSON, which is
    its `model_dump(mode="json")` when written by this code).
    """
    if upto_sequence < 1:
        return 0
    sequences = range(1, upto_sequence + 1)
    with ThreadPoolExecutor(max_workers=HISTORY_WORKERS) as pool:
        loaded = list(pool.map(lambda s: _read_history_raw(store, channel_id, s), sequences))
    missing = [s for s, item in zip(sequences, loaded, strict=True) if item is None]
    if missing:
        shown = ", ".join(str(s) for s in missing[:10])
        raise PointerInvalid(
            f"history of {channel_id} is not dense: record(s) {shown} of 1..{upto_sequence} "
            "are missing"
        )
    prev: tuple[ActivationRecord, dict[str, Any]] | None = None
    for sequence, item in zip(sequences, loaded, strict=True):
        assert item is not None
        record, raw = item
        if prev is None:
            if record.prev_record_sha256 is not None or record.previous_sequence is not None:
                raise PointerInvalid(f"history record 1 of {channel_id} links to a predecessor")
        else:
            prev_record, prev_raw = prev
            expected = canonical_sha256(prev_raw)
            if record.prev_record_sha256 != expected:
                raise PointerInvalid(
                    f"history record {sequence} of {channel_id} links to "
                    f"{record.prev_record_sha256}, but record {sequence - 1} hashes to "
                    f"{expected}: the chain is broken"
                )
            if record.previous_sequence != sequence - 1:
                raise PointerInvalid(
                    f"history record {sequence} names previous sequence "
                    f"{record.previous_sequence}, not {sequence - 1}"
                )
            if record.previous != prev_record.active:
                raise PointerInvalid(
                    f"history record {sequence} names previous release "
                    f"{record.previous.release_id if record.previous else None}, but record "
                    f"{sequence - 1} made release {prev_record.active.release_id} live"
                )
        prev = (record, raw)
    state = pointer if pointer is not None else ptr.read_pointer(store, channel_id)
    assert prev is not None
    if state.raw is None or state.record is None:
        raise PointerInvalid(f"{channel_id} has history up to {upto_sequence} but no pointer")
    if state.record.sequence != upto_sequence:
        raise PointerInvalid(
            f"pointer of {channel_id} is at sequence {state.record.sequence}, the chain was "
            f"walked to {upto_sequence}"
        )
    if canonical_bytes(state.raw) != canonical_bytes(prev[1]):
        raise PointerInvalid(
            f"pointer of {channel_id} (activation {state.record.activation_id}) differs from "
            f"history record {upto_sequence} (activation {prev[0].activation_id})"
        )
    return upto_sequence


class ChainOutcome(BaseModel):
    """Group 1's rows, and the live record the other groups check (None: nothing to check)."""

    rows: list[CheckRow]
    live: ActivationRecord | None = None


def check_pointer_chain(ctx: Context, channel_id: str) -> ChainOutcome:
    try:
        state = ptr.read_pointer(ctx.store, channel_id)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return ChainOutcome(rows=[_failed(POINTER_CHAIN, exc, "the pointer does not parse: ")])
    if state.record is None:
        row = CheckRow(
            name=POINTER_CHAIN, ok=True, detail="no release has ever been live: nothing to check"
        )
        return ChainOutcome(rows=[row])
    live = state.record
    notes: list[str] = []
    try:
        if ptr.repair_history(ctx.store, state):
            notes.append(f"repaired missing history record {live.sequence} from the pointer")
        checked = verify_chain(ctx.store, channel_id, live.sequence, pointer=state)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        prefix = "; ".join(notes) + "; " if notes else ""
        return ChainOutcome(rows=[_failed(POINTER_CHAIN, exc, prefix)], live=live)
    notes.append(
        f"pointer at sequence {live.sequence} (activation {live.activation_id}, release "
        f"{live.active.release_id}) equals history; chain of {checked} record(s) holds"
    )
    return ChainOutcome(rows=[CheckRow(name=POINTER_CHAIN, ok=True, detail="; ".join(notes))],
                        live=live)


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
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return _failed(LIVE_RELEASE, exc)
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
    """The index as stored (shape only: its signatures are judged by `_verify_live`)."""
    raw = read_index_bytes(ctx.store, channel_id)
    if raw is None:
        return None
    return parse_model(
        ChannelIndex, parse_json(raw[0], max_bytes=MAX_MANIFEST_BYTES, what="channel index"),
        what="channel index",
    )


def _read_report(ctx: Context, report_id: str) -> ValidationReport | None:
    try:
        data, _ = ctx.store.get_bytes(layout.validation_report(report_id),
                                      max_bytes=MAX_MANIFEST_BYTES)
    except ObjectNotFound:
        return None
    return parse_model(
        ValidationReport, parse_json(data, max_bytes=MAX_MANIFEST_BYTES, what="validation report"),
        what=f"validation report {report_id}",
    )


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
            expired.append((error, f"{what} expired at {_rfc3339(moment)}"))
        elif moment <= horizon:
            warnings.append(f"warning: {what} expires at {_rfc3339(moment)} (within "
                            f"{EXPIRY_WARNING.days} days)")
        else:
            seen.append(f"{what} until {_rfc3339(moment)}")

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
        return _failed(EXPIRY, exc)
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
            expired.append(f"{label} expired at {_rfc3339(auth.expires_at)}")
        else:
            current.append(f"{label} until {_rfc3339(auth.expires_at)}")
    parts = []
    if expired:
        parts.append("expired (informational): " + "; ".join(expired))
    if current:
        parts.append("in force: " + "; ".join(current))
    return CheckRow(name=AUTHORIZATIONS, ok=True, detail=" | ".join(parts))


def check_trust(ctx: Context, live: ActivationRecord) -> list[CheckRow]:
    rows = [_verify_live(ctx, live)]
    try:
        index = _load_index(ctx, live.channel_id)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return [*rows, _failed(EXPIRY, exc, "the channel index does not parse: "),
                CheckRow(name=AUTHORIZATIONS, ok=True, detail="index unreadable: not judged")]
    return [*rows, _expiry(ctx, live, index), _authorizations(ctx, index)]


# --- 3. objects re-hash ----------------------------------------------------------------------
def check_objects(ctx: Context, live: ActivationRecord) -> list[CheckRow]:
    try:
        inventory = record_inventory(ctx, live.active)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return [_failed(OBJECTS, exc, "the live release's manifests cannot be read: ")]

    def rehash(item: tuple[str, Any]) -> tuple[str, KristalError | None]:
        key, entry = item
        try:
            digest, _size = ctx.store.stream_sha256(key, expected_size=entry.size_bytes)
        except ObjectNotFound:
            return key, FileInventoryMissing(f"{key} is missing")
        except FileHashMismatch as exc:
            return key, exc
        if digest != entry.sha256:
            return key, FileHashMismatch(f"{key} has sha256 {digest}, its manifest {entry.sha256}")
        return key, None

    with ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool:
        results = list(pool.map(rehash, inventory))
    problems = [exc for _key, exc in results if exc is not None]
    total = sum(entry.size_bytes for _key, entry in inventory)
    if problems:
        code = next((p.code for p in problems if isinstance(p, FileHashMismatch)),
                    problems[0].code)
        detail = f"{len(problems)} of {len(inventory)} object(s) differ: " + "; ".join(
            p.message for p in problems[:3]
        )
        return [CheckRow(name=OBJECTS, ok=False, detail=detail, code=code)]
    return [CheckRow(name=OBJECTS, ok=True,
                     detail=f"{len(inventory)} object(s), {total} bytes re-hashed: all match")]


# --- 4. the local query index ----------------------------------------------------------------
def _pack_manifest(ctx: Context, pack_id: str) -> RuntimePackManifest:
    key = layout.pack_manifest(pack_id)
    raw = parse_json(ctx.store.get_bytes(key, max_bytes=MAX_MANIFEST_BYTES)[0], what=key)
    verify_identity(raw, DocKind.RUNTIME_PACK)
    return parse_model(RuntimePackManifest, raw, what=key)


def _judge_index(ctx: Context, pack_id: str) -> tuple[bool, str, str | None]:
    db = index_path(ctx, pack_id)
    short = pack_id[:19]
    if not db.exists():
        return True, f"{short}: not staged on this machine", None
    pack = _pack_manifest(ctx, pack_id)
    triples = next((e for e in pack.files if e.path == TRIPLES_PATH), None)
    if triples is None:
        return False, f"{short}: the pack lists no {TRIPLES_PATH}", FileInventoryMissing.code
    expected_rows = (pack.extensions or {}).get(EXPECTATIONS_EXT, {}).get("row_count")
    with PinnedReader(db) as reader:
        source = reader.meta.get("source_sha256")
        meta_rows = reader.meta.get("row_count")
        rows = reader.count()
    if source != triples.sha256:
        return (False, f"{short}: index {db.name} was built from {source}, the pack's triples "
                f"are {triples.sha256}", FileHashMismatch.code)
    if str(rows) != str(meta_rows) or (expected_rows is not None and rows != expected_rows):
        return (False, f"{short}: index holds {rows} rows (meta {meta_rows}), the pack expects "
                f"{expected_rows}", CheckFailed.code)
    return True, f"{short}: staged index matches its pack ({rows} rows)", None


def check_local_index(ctx: Context, live: ActivationRecord) -> list[CheckRow]:
    details: list[str] = []
    code: str | None = None
    ok = True
    for pack_id in live.active.runtime_pack_ids:
        try:
            good, detail, failure = _judge_index(ctx, pack_id)
        except StorageUnavailable:
            raise
        except KristalError as exc:
            good, detail, failure = False, f"{pack_id[:19]}: {exc.message}", exc.code
        ok = ok and good
        code = code or failure
        details.append(detail)
    return [CheckRow(name=LOCAL_INDEX, ok=ok, detail="; ".join(details), code=code)]


# --- 5. the post-activation checks record ----------------------------------------------------
def check_checks_record(
    ctx: Context, live: ActivationRecord, *, checks_timeout_s: float
) -> list[CheckRow]:
    try:
        checks = ptr.read_checks(ctx.store, live.channel_id, live.sequence)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return [_failed(CHECKS_RECORD, exc, f"checks {live.sequence} unreadable: ")]
    if checks is None:
        age = (ctx.now() - live.created_at).total_seconds()
        if age < checks_timeout_s:
            return [CheckRow(
                name=CHECKS_RECORD, ok=True,
                detail=(f"checks of sequence {live.sequence} pending for {age:.0f}s "
                        f"(timeout {checks_timeout_s:.0f}s)"),
            )]
        return [CheckRow(
            name=CHECKS_RECORD, ok=False, code=CheckFailed.code,
            detail=(f"checks missing past timeout: treated as failed (sequence {live.sequence}, "
                    f"live for {age:.0f}s, timeout {checks_timeout_s:.0f}s)"),
        )]
    if checks.activation_id != live.activation_id:
        return [CheckRow(
            name=CHECKS_RECORD, ok=False, code=PointerInvalid.code,
            detail=(f"checks {live.sequence} belong to activation {checks.activation_id}, not "
                    f"the live {live.activation_id}"),
        )]
    if checks.result != "passed":
        return [CheckRow(name=CHECKS_RECORD, ok=False, code=CheckFailed.code,
                         detail=f"checks of sequence {live.sequence} failed: {checks.reason}")]
    return [CheckRow(name=CHECKS_RECORD, ok=True,
                     detail=f"checks of sequence {live.sequence} passed "
                            f"({_rfc3339(checks.created_at)})")]


# --- one channel, without Prefect ------------------------------------------------------------
def _guarded(name: str, call: Callable[[], list[CheckRow]]) -> list[CheckRow]:
    """Run one group; an outage that outlived its retries is a failed row, not a crash."""
    try:
        return call()
    except KristalError as exc:
        return [_failed(name, exc)]


def build_report(
    channel_id: str, live: ActivationRecord | None, rows: list[CheckRow]
) -> ChannelReport:
    return ChannelReport(
        channel_id=channel_id,
        sequence=live.sequence if live else None,
        activation_id=live.activation_id if live else None,
        release_id=live.active.release_id if live else None,
        rows=rows,
    )


def reverify_channel(
    ctx: Context, channel_id: str, *, checks_timeout_s: float = DEFAULT_CHECKS_TIMEOUT_S
) -> ChannelReport:
    """Every check group of one channel, in order; one row per check."""
    try:
        chain = check_pointer_chain(ctx, channel_id)
    except KristalError as exc:
        return build_report(channel_id, None, [_failed(POINTER_CHAIN, exc)])
    rows = list(chain.rows)
    live = chain.live
    if live is not None:
        rows += _guarded(LIVE_RELEASE, lambda: check_trust(ctx, live))
        rows += _guarded(OBJECTS, lambda: check_objects(ctx, live))
        rows += _guarded(LOCAL_INDEX, lambda: check_local_index(ctx, live))
        rows += _guarded(
            CHECKS_RECORD,
            lambda: check_checks_record(ctx, live, checks_timeout_s=checks_timeout_s),
        )
    return build_report(channel_id, live, rows)
