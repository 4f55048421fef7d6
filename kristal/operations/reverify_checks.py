"""The check groups of a channel's re-verification (DESIGN §6 invariants 4-5, §8 `reverify`),
each a step of its own (`reverify-pointer-chain`, ...).

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

`StorageUnavailable` is not turned into a row by the group functions, so a step wrapping one can
be retried; `reverify.reverify_channel` turns what outlived the retries into a failed row.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

from kristal.channel import records
from kristal.channel.history import walk_chain
from kristal.context import Context
from kristal.errors import (
    CheckFailed,
    ChecksNotPassed,
    FileHashMismatch,
    FileInventoryMissing,
    KristalError,
    ObjectNotFound,
    PointerInvalid,
    StorageUnavailable,
    error_class,
)
from kristal.formats import layout
from kristal.formats.artifacts import RuntimePackManifest
from kristal.formats.channel_docs import (
    ActivationRecord,
)
from kristal.formats.identity import DocKind
from kristal.formats.models import CHANNEL_PATTERN, EXPECTATIONS_EXT
from kristal.formats.time import rfc3339
from kristal.operations.runner import step
from kristal.runtime.sqlite_index import PinnedReader
from kristal.runtime.staging import index_path, record_inventory
from kristal.verify.fetch import read_by_id

HASH_WORKERS = 4
_CHANNEL_INDEX_KEY = re.compile(r"^channels/(" + CHANNEL_PATTERN.strip("^$") + r")/index\.json$")

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

    def error(self, *, rolled_back: bool = False) -> KristalError:
        """The coded error a run fails with: the first failure's own code, whose family says
        what happened to the channel. Failed or overdue post-activation checks are
        `check_failed`: exit 5 when the channel was rolled back for it, else exit 1."""
        failures = self.failures
        if not failures:
            raise ValueError(f"{self.channel_id} passed re-verification: no error to raise")
        message = f"{self.channel_id} failed re-verification: " + "; ".join(self.reasons())
        first = failures[0].code or ChecksNotPassed.code
        if first == CheckFailed.code:
            return CheckFailed(message) if rolled_back else ChecksNotPassed(message)
        return (error_class(first) or ChecksNotPassed)(message)


def failed_row(name: str, exc: KristalError, prefix: str = "") -> CheckRow:
    return CheckRow(name=name, ok=False, detail=f"{prefix}{exc.message}", code=exc.code)



# --- discovery -------------------------------------------------------------------------------
@step("list-channels")
def list_channels(ctx: Context) -> list[str]:
    """Every channel with a signed index in the bucket (`channels/*/*/*/index.json`), sorted."""
    found = {
        match.group(1)
        for key in ctx.store.list_keys("channels/")
        if (match := _CHANNEL_INDEX_KEY.match(key))
    }
    return sorted(found)


# --- 1. pointer and history chain ------------------------------------------------------------
class ChainOutcome(BaseModel):
    """Group 1's rows, and the live record the other groups check (None: nothing to check)."""

    rows: list[CheckRow]
    live: ActivationRecord | None = None


@step("reverify-pointer-chain")
def check_pointer_chain(ctx: Context, channel_id: str) -> ChainOutcome:
    try:
        state = records.read_pointer(ctx, channel_id)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return ChainOutcome(rows=[failed_row(POINTER_CHAIN, exc, "the pointer does not parse: ")])
    if state.record is None:
        row = CheckRow(
            name=POINTER_CHAIN, ok=True, detail="no release has ever been live: nothing to check"
        )
        return ChainOutcome(rows=[row])
    live = state.record
    notes: list[str] = []
    try:
        if records.repair_history(ctx, state):
            notes.append(f"repaired missing history record {live.sequence} from the pointer")
        checked = len(walk_chain(ctx, channel_id, pointer=state))
    except StorageUnavailable:
        raise
    except KristalError as exc:
        prefix = "; ".join(notes) + "; " if notes else ""
        return ChainOutcome(rows=[failed_row(POINTER_CHAIN, exc, prefix)], live=live)
    notes.append(
        f"pointer at sequence {live.sequence} (activation {live.activation_id}, release "
        f"{live.active.release_id}) equals history; chain of {checked} record(s) holds"
    )
    return ChainOutcome(rows=[CheckRow(name=POINTER_CHAIN, ok=True, detail="; ".join(notes))],
                        live=live)


# --- 3. objects re-hash ----------------------------------------------------------------------
@step("reverify-objects")
def check_objects(ctx: Context, live: ActivationRecord) -> list[CheckRow]:
    try:
        inventory = record_inventory(ctx, live.active)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return [failed_row(OBJECTS, exc, "the live release's manifests cannot be read: ")]

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
    return read_by_id(ctx.store, layout.pack_manifest(pack_id), DocKind.RUNTIME_PACK,
                      RuntimePackManifest)


def _judge_index(ctx: Context, pack_id: str) -> tuple[bool, str, str | None]:
    db = index_path(ctx, pack_id)
    short = pack_id[:19]
    if not os.path.lexists(db):
        return True, f"{short}: not staged on this machine", None
    pack = _pack_manifest(ctx, pack_id)
    triples = pack.triples()
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


@step("reverify-local-index")
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
@step("reverify-checks-record")
def check_checks_record(
    ctx: Context, live: ActivationRecord, *, checks_timeout_s: float
) -> list[CheckRow]:
    try:
        checks = records.read_checks(ctx, live)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return [failed_row(CHECKS_RECORD, exc, f"checks {live.sequence} unreadable: ")]
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
                            f"({rfc3339(checks.created_at)})")]


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
