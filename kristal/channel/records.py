"""One reader (and writer) per kind of channel document (DESIGN §4, §6): the pointer, the
immutable history records, the checks and the quarantine records.

Reads are bounded (`MAX_RECORD_BYTES`), parsed strictly and verified: a record that does not
parse, is not signed by an activator of its channel, names another channel or sequence, or (a
checks or quarantine record) another activation than the record it belongs to, is
`pointer_invalid`. History, checks and quarantine are write-once (`If-None-Match: *`): the
first copy stands, and a re-read after any doubtful answer tells whether it is ours.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kristal.channel.record_keys import ChannelAccess, RecordKeys, sign_record, verify_record
from kristal.errors import ManifestSchemaInvalid, ObjectNotFound, PointerInvalid, StorageUnavailable
from kristal.formats import layout
from kristal.formats.bake_docs import BakeMeasurement, BakeVerdict
from kristal.formats.canonical import canonical_bytes, canonical_sha256, parse_json
from kristal.formats.channel_docs import ActivationRecord, CheckRecord, QuarantineRecord
from kristal.formats.models import parse_model
from kristal.store.s3 import ObjectStore, WriteStatus

__all__ = ["ChannelAccess", "RecordKeys", "get_record", "parse_signed", "sign_record",
           "write_once"]

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


M = TypeVar("M", ActivationRecord, CheckRecord, QuarantineRecord, BakeMeasurement, BakeVerdict)


def parse_signed(keys: RecordKeys, data: bytes, model: type[M], channel_id: str, *,
                  what: str) -> tuple[M, dict[str, Any]]:
    try:
        raw = parse_json(data, max_bytes=MAX_RECORD_BYTES, what=what)
        record = parse_model(model, raw, what=what)
    except ManifestSchemaInvalid as exc:
        raise PointerInvalid(f"{what}: {exc.message}", field=exc.field) from None
    if record.channel_id != channel_id:
        raise PointerInvalid(f"{what} names channel {record.channel_id!r}, not {channel_id!r}")
    verify_record(keys, raw, record, what=what)
    return record, raw


def parse_record(keys: RecordKeys, data: bytes, channel_id: str, *,
                 what: str) -> tuple[ActivationRecord, dict[str, Any]]:
    return parse_signed(keys, data, ActivationRecord, channel_id, what=what)


def get_record(store: ObjectStore, key: str, what: str) -> tuple[bytes, str | None] | None:
    try:
        return store.get_bytes(key, max_bytes=MAX_RECORD_BYTES)
    except ObjectNotFound:
        return None
    except ManifestSchemaInvalid as exc:  # oversize: refused while streaming
        raise PointerInvalid(f"{what}: {exc.message}") from None


def read_pointer(src: ChannelAccess, channel_id: str) -> PointerState:
    got = get_record(src.store, layout.pointer(channel_id), "active pointer")
    if got is None:
        return PointerState(None, None, None)
    record, raw = parse_record(src.keys, got[0], channel_id, what="active pointer")
    return PointerState(record, got[1], raw)


def record_bytes(record: ActivationRecord) -> tuple[bytes, dict[str, Any]]:
    raw = record.model_dump(mode="json")
    return canonical_bytes(raw), raw


def write_once(store: ObjectStore, key: str, body: bytes, read_back: Callable[[], T | None],
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


def write_history(src: ChannelAccess, record: ActivationRecord) -> None:
    """Write `activations/<sequence>.json` once (If-None-Match: *); an equal copy is success.
    `record` is the pointer's record, signed already."""
    body, _raw = record_bytes(record)
    existing = write_once(
        src.store, layout.history(record.channel_id, record.sequence), body,
        lambda: read_history(src, record.channel_id, record.sequence),
        f"history {record.sequence} of {record.channel_id}",
    )
    if existing is not None and existing.activation_id != record.activation_id:
        raise PointerInvalid(
            f"history {record.sequence} of {record.channel_id} holds activation "
            f"{existing.activation_id}, the pointer {record.activation_id}"
        )


def read_history_raw(src: ChannelAccess, channel_id: str,
                     sequence: int) -> tuple[ActivationRecord, dict[str, Any]] | None:
    """History record `sequence` and its JSON exactly as stored (what the chain hashes)."""
    what = f"history record {sequence}"
    got = get_record(src.store, layout.history(channel_id, sequence), what)
    if got is None:
        return None
    record, raw = parse_record(src.keys, got[0], channel_id, what=what)
    if record.sequence != sequence:
        raise PointerInvalid(f"history object {sequence} holds sequence {record.sequence}")
    return record, raw


def read_history(src: ChannelAccess, channel_id: str, sequence: int) -> ActivationRecord | None:
    found = read_history_raw(src, channel_id, sequence)
    return found[0] if found is not None else None


def repair_history(src: ChannelAccess, state: PointerState) -> bool:
    """Invariant 4: make sure `history[pointer.sequence]` exists. Returns True if it wrote it.

    Written only where the chain proves the pointer follows on: history[sequence - 1] exists
    and hashes to the pointer's `prev_record_sha256` (a first record links to nothing).
    Anything else is `pointer_invalid`, and nothing is written."""
    record = state.record
    if record is None:
        return False
    if src.store.head(layout.history(record.channel_id, record.sequence)) is not None:
        return False
    if record.sequence == 1:
        linked = record.prev_record_sha256 is None
    else:
        before = read_history_raw(src, record.channel_id, record.sequence - 1)
        linked = before is not None and canonical_sha256(before[1]) == record.prev_record_sha256
    if not linked:
        raise PointerInvalid(
            f"pointer of {record.channel_id} (sequence {record.sequence}) does not follow on "
            f"from history record {record.sequence - 1}: not repaired into history")
    write_history(src, record)
    return True


def read_checks(src: ChannelAccess, record: ActivationRecord) -> CheckRecord | None:
    """The checks of `record` (None before they are written), bound to it: same sequence,
    activation and release, signed by an activator."""
    channel, sequence = record.channel_id, record.sequence
    what = f"checks record {sequence}"
    got = get_record(src.store, layout.checks(channel, sequence), what)
    if got is None:
        return None
    checks, _raw = parse_signed(src.keys, got[0], CheckRecord, channel, what=what)
    if (checks.sequence, checks.activation_id, checks.release_id) != (
            sequence, record.activation_id, record.active.release_id):
        raise PointerInvalid(
            f"{what} of {channel} is for activation {checks.activation_id} (sequence "
            f"{checks.sequence}, release {checks.release_id}), not for the record it sits "
            f"beside ({record.activation_id}, release {record.active.release_id})")
    return checks


def write_checks(src: ChannelAccess, record: ActivationRecord, checks: CheckRecord) -> CheckRecord:
    """Immutable: the first outcome written for a sequence stands; returns the one that stands
    (a record there that is not this activation's is `pointer_invalid`)."""
    signed = sign_record(src.keys, checks)
    existing = write_once(
        src.store, layout.checks(checks.channel_id, checks.sequence),
        canonical_bytes(signed.model_dump(mode="json")),
        lambda: read_checks(src, record),
        f"checks {checks.sequence} of {checks.channel_id}",
    )
    return existing or signed


def read_quarantine(src: ChannelAccess, channel_id: str,
                    release_id: int) -> QuarantineRecord | None:
    """The quarantine of `release_id` here, bound to the activation that put it live: the
    history record (or the pointer, before its history is repaired) of its sequence."""
    what = f"quarantine record of release {release_id}"
    got = get_record(src.store, layout.quarantine(channel_id, release_id), what)
    if got is None:
        return None
    quarantine, _raw = parse_signed(src.keys, got[0], QuarantineRecord, channel_id, what=what)
    bound = read_history(src, channel_id, quarantine.sequence)
    if bound is None:
        live = read_pointer(src, channel_id).record
        bound = live if live is not None and live.sequence == quarantine.sequence else None
    if (quarantine.release_id != release_id or bound is None
            or bound.activation_id != quarantine.activation_id
            or bound.active.release_id != release_id):
        raise PointerInvalid(
            f"{what} of {channel_id} names activation {quarantine.activation_id} at sequence "
            f"{quarantine.sequence}, which is not the record that put release {release_id} live")
    return quarantine


def write_quarantine(src: ChannelAccess, quarantine: QuarantineRecord) -> None:
    signed = sign_record(src.keys, quarantine)
    write_once(
        src.store, layout.quarantine(quarantine.channel_id, quarantine.release_id),
        canonical_bytes(signed.model_dump(mode="json")),
        lambda: read_quarantine(src, quarantine.channel_id, quarantine.release_id),
        f"quarantine of release {quarantine.release_id} in {quarantine.channel_id}",
    )


def read_checks_at(src: ChannelAccess, channel_id: str, sequence: int) -> CheckRecord | None:
    """The checks of history record `sequence` (of the pointer's record while its history is
    not yet repaired); None if neither that record nor its checks exist."""
    record = read_history(src, channel_id, sequence)
    if record is None:
        live = read_pointer(src, channel_id).record
        record = live if live is not None and live.sequence == sequence else None
    return read_checks(src, record) if record is not None else None
