"""One reader (and writer) per kind of channel document (DESIGN §4, §6): the pointer, the
immutable history records, the checks and the quarantine records.

Reads are bounded (`MAX_RECORD_BYTES`) and parsed strictly; a record that does not parse, or
names another channel or sequence, is `pointer_invalid`. History, checks and quarantine are
write-once (`If-None-Match: *`): the first copy stands, and a re-read after any doubtful answer
tells whether it is ours.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kristal.errors import ManifestSchemaInvalid, ObjectNotFound, PointerInvalid, StorageUnavailable
from kristal.formats import layout
from kristal.formats.canonical import canonical_bytes, canonical_sha256, parse_json
from kristal.formats.channel_docs import ActivationRecord, CheckRecord, QuarantineRecord
from kristal.formats.models import parse_model
from kristal.store.s3 import ObjectStore, WriteStatus

MAX_RECORD_BYTES = 1024 * 1024
WRITE_ATTEMPTS = 3
T = TypeVar("T")


@dataclass(frozen=True)
class PointerState:
    """One read of `active.json`: the record (None before the first activation) and its ETag."""

    record: ActivationRecord | None
    etag: str | None
    raw: dict[str, Any] | None

    @property
    def sequence(self) -> int:
        return self.record.sequence if self.record else 0

    @property
    def record_sha256(self) -> str | None:
        return canonical_sha256(self.raw) if self.raw is not None else None


def parse_record(
    data: bytes, channel_id: str, *, what: str
) -> tuple[ActivationRecord, dict[str, Any]]:
    try:
        raw = parse_json(data, max_bytes=MAX_RECORD_BYTES, what=what)
        record = parse_model(ActivationRecord, raw, what=what)
    except ManifestSchemaInvalid as exc:
        raise PointerInvalid(exc.message, field=exc.field) from None
    if record.channel_id != channel_id:
        raise PointerInvalid(f"{what} names channel {record.channel_id!r}, not {channel_id!r}")
    return record, raw


def read_pointer(store: ObjectStore, channel_id: str) -> PointerState:
    try:
        data, etag = store.get_bytes(layout.pointer(channel_id), max_bytes=MAX_RECORD_BYTES)
    except ObjectNotFound:
        return PointerState(None, None, None)
    except ManifestSchemaInvalid as exc:  # oversize: refused while streaming
        raise PointerInvalid(f"active pointer: {exc.message}") from None
    record, raw = parse_record(data, channel_id, what="active pointer")
    return PointerState(record, etag, raw)


def record_bytes(record: ActivationRecord) -> tuple[bytes, dict[str, Any]]:
    raw = record.model_dump(mode="json")
    return canonical_bytes(raw), raw


def _write_once(store: ObjectStore, key: str, body: bytes, read_back: Callable[[], T | None],
                what: str) -> T | None:
    """If-None-Match: * with a re-read after anything but success: the first copy stands.

    Returns what is stored when it is not ours (None when ours was written)."""
    for attempt in range(WRITE_ATTEMPTS):
        outcome = store.put_if_absent(key, body)
        if outcome.status is WriteStatus.WRITTEN:
            return None
        try:
            existing = read_back()
        except StorageUnavailable:
            existing = None
        if existing is not None:
            return existing
        time.sleep(0.2 * (attempt + 1))
    raise StorageUnavailable(f"could not write {what} after {WRITE_ATTEMPTS} attempts")


def write_history(store: ObjectStore, record: ActivationRecord) -> None:
    """Write `activations/<sequence>.json` once (If-None-Match: *); an equal copy is success."""
    body, _raw = record_bytes(record)
    existing = _write_once(
        store, layout.history(record.channel_id, record.sequence), body,
        lambda: read_history(store, record.channel_id, record.sequence),
        f"history {record.sequence} of {record.channel_id}",
    )
    if existing is not None and existing.activation_id != record.activation_id:
        raise PointerInvalid(
            f"history {record.sequence} of {record.channel_id} holds activation "
            f"{existing.activation_id}, the pointer {record.activation_id}"
        )


def read_history_raw(store: ObjectStore, channel_id: str,
                     sequence: int) -> tuple[ActivationRecord, dict[str, Any]] | None:
    """History record `sequence` and its JSON exactly as stored (what the chain hashes)."""
    try:
        data, _etag = store.get_bytes(
            layout.history(channel_id, sequence), max_bytes=MAX_RECORD_BYTES
        )
    except ObjectNotFound:
        return None
    except ManifestSchemaInvalid as exc:
        raise PointerInvalid(f"history record {sequence}: {exc.message}") from None
    record, raw = parse_record(data, channel_id, what=f"history record {sequence}")
    if record.sequence != sequence:
        raise PointerInvalid(f"history object {sequence} holds sequence {record.sequence}")
    return record, raw


def read_history(store: ObjectStore, channel_id: str, sequence: int) -> ActivationRecord | None:
    found = read_history_raw(store, channel_id, sequence)
    return found[0] if found is not None else None


def repair_history(store: ObjectStore, state: PointerState) -> bool:
    """Invariant 4: make sure `history[pointer.sequence]` exists. Returns True if it wrote it.

    Written only where the chain proves the pointer follows on: history[sequence - 1] exists
    and hashes to the pointer's `prev_record_sha256` (a first record links to nothing).
    Anything else is `pointer_invalid`, and nothing is written."""
    record = state.record
    if record is None:
        return False
    if store.head(layout.history(record.channel_id, record.sequence)) is not None:
        return False
    if record.sequence == 1:
        linked = record.prev_record_sha256 is None
    else:
        before = read_history_raw(store, record.channel_id, record.sequence - 1)
        linked = before is not None and canonical_sha256(before[1]) == record.prev_record_sha256
    if not linked:
        raise PointerInvalid(
            f"pointer of {record.channel_id} (sequence {record.sequence}) does not follow on "
            f"from history record {record.sequence - 1}: not repaired into history")
    write_history(store, record)
    return True


def read_checks(store: ObjectStore, channel_id: str, sequence: int) -> CheckRecord | None:
    try:
        data, _ = store.get_bytes(layout.checks(channel_id, sequence), max_bytes=MAX_RECORD_BYTES)
    except ObjectNotFound:
        return None
    raw = parse_json(data, max_bytes=MAX_RECORD_BYTES, what=f"checks {sequence}")
    return parse_model(CheckRecord, raw, what=f"checks {sequence}")


def write_checks(store: ObjectStore, checks: CheckRecord) -> CheckRecord:
    """Immutable: the first outcome written for a sequence stands; returns the one that stands."""
    existing = _write_once(
        store, layout.checks(checks.channel_id, checks.sequence),
        canonical_bytes(checks.model_dump(mode="json")),
        lambda: read_checks(store, checks.channel_id, checks.sequence),
        f"checks {checks.sequence} of {checks.channel_id}",
    )
    return existing or checks


def read_quarantine(
    store: ObjectStore, channel_id: str, release_id: int
) -> QuarantineRecord | None:
    try:
        data, _ = store.get_bytes(
            layout.quarantine(channel_id, release_id), max_bytes=MAX_RECORD_BYTES
        )
    except ObjectNotFound:
        return None
    raw = parse_json(data, max_bytes=MAX_RECORD_BYTES, what="quarantine record")
    return parse_model(QuarantineRecord, raw, what="quarantine record")


def write_quarantine(store: ObjectStore, quarantine: QuarantineRecord) -> None:
    _write_once(
        store, layout.quarantine(quarantine.channel_id, quarantine.release_id),
        canonical_bytes(quarantine.model_dump(mode="json")),
        lambda: read_quarantine(store, quarantine.channel_id, quarantine.release_id),
        f"quarantine of release {quarantine.release_id} in {quarantine.channel_id}",
    )
