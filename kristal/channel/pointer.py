"""The active-pointer protocol of DESIGN §6: the only way anything goes live.

`read_pointer` returns the record and the ETag of the same GET; `commit` switches it with one
conditional write and resolves every ambiguous outcome by re-reading (an Iceberg-style commit:
written, conflict, or unknown, each handled on purpose). History objects are immutable and
repaired idempotently from the pointer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kristal.errors import (
    CommitUnknown,
    ManifestSchemaInvalid,
    PointerConflict,
    PointerInvalid,
    StorageUnavailable,
)
from kristal.formats import layout
from kristal.formats.canonical import canonical_bytes, canonical_sha256, parse_json
from kristal.formats.channel_docs import ActivationRecord, CheckRecord, QuarantineRecord
from kristal.formats.models import parse_model
from kristal.store.s3 import ObjectNotFound, ObjectStore, WriteStatus

MAX_RECORD_BYTES = 1024 * 1024
T = TypeVar("T")
COMMIT_ATTEMPTS = 3


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


def commit(store: ObjectStore, record: ActivationRecord, expected: PointerState) -> PointerState:
    """Switch the pointer from `expected` to `record` in one conditional write.

    Returns the new state. Raises `PointerConflict` when another writer moved the pointer first
    (nothing of ours was written) and `CommitUnknown` when the outcome stays ambiguous after
    re-reading (nothing may be cleaned up then).
    """
    if record.sequence != expected.sequence + 1:
        raise PointerConflict(
            f"record sequence {record.sequence} does not follow live sequence {expected.sequence}"
        )
    store.ensure_conditional_writes()
    key = layout.pointer(record.channel_id)
    body, raw = record_bytes(record)
    last_detail = ""
    for attempt in range(COMMIT_ATTEMPTS):
        if expected.etag is None:
            outcome = store.put_if_absent(key, body)
        else:
            outcome = store.put_if_match(key, body, expected.etag)
        if outcome.status is WriteStatus.WRITTEN:
            return PointerState(record, outcome.etag, raw)
        last_detail = outcome.detail or outcome.status.value
        # A 412 can answer our own retried write; a timeout or 5xx may have landed: re-read.
        try:
            now = read_pointer(store, record.channel_id)
        except (StorageUnavailable, PointerInvalid):
            time.sleep(0.2 * (attempt + 1))
            continue
        if now.record is not None and now.record.activation_id == record.activation_id:
            return now
        if now.etag != expected.etag:
            if now.sequence > record.sequence:
                # Our write may have landed and been built upon since: history knows.
                landed = read_history(store, record.channel_id, record.sequence)
                if landed is not None and landed.activation_id == record.activation_id:
                    return PointerState(record, None, raw)
            holder = now.record.activation_id if now.record else "nothing"
            raise PointerConflict(
                f"pointer of {record.channel_id} moved to sequence {now.sequence} ({holder}) "
                f"while we prepared sequence {record.sequence}; nothing was changed"
            )
        if outcome.status is WriteStatus.PRECONDITION_FAILED:
            # 412 yet the same ETag is live: a stale read on the server side; try once more.
            time.sleep(0.1)
            continue
        # UNKNOWN and the old record is still live: a conditional retry of our own is safe.
        time.sleep(0.2 * (attempt + 1))
    raise CommitUnknown(
        f"pointer write for sequence {record.sequence} of {record.channel_id} has an unknown "
        f"outcome after {COMMIT_ATTEMPTS} attempts ({last_detail}); nothing staged was removed"
    )


def _write_once(store: ObjectStore, key: str, body: bytes, read_back: Callable[[], T | None],
                what: str) -> T | None:
    """If-None-Match: * with a re-read after anything but success: the first copy stands.

    Returns what is stored when it is not ours (None when ours was written)."""
    for attempt in range(COMMIT_ATTEMPTS):
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
    raise StorageUnavailable(f"could not write {what} after {COMMIT_ATTEMPTS} attempts")


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


def read_history(store: ObjectStore, channel_id: str, sequence: int) -> ActivationRecord | None:
    try:
        data, _etag = store.get_bytes(
            layout.history(channel_id, sequence), max_bytes=MAX_RECORD_BYTES
        )
    except ObjectNotFound:
        return None
    except ManifestSchemaInvalid as exc:
        raise PointerInvalid(f"history record {sequence}: {exc.message}") from None
    record, _raw = parse_record(data, channel_id, what=f"history record {sequence}")
    if record.sequence != sequence:
        raise PointerInvalid(f"history object {sequence} holds sequence {record.sequence}")
    return record


def repair_history(store: ObjectStore, state: PointerState) -> bool:
    """Invariant 4: make sure `history[pointer.sequence]` exists. Returns True if it wrote it."""
    if state.record is None:
        return False
    if store.head(layout.history(state.record.channel_id, state.record.sequence)) is not None:
        return False
    write_history(store, state.record)
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
