"""Building activation records and walking a channel's history without listing it.

Each record carries `previous`/`previous_sequence` and `last_known_good`, so `status`,
`rollback` and `last-known-good` follow a few links from the live record instead of reading
the whole history (constant time in the history's length).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from kristal.channel import pointer as ptr
from kristal.errors import PointerInvalid
from kristal.formats import layout
from kristal.formats.canonical import canonical_sha256
from kristal.formats.channel_docs import ActivationKind, ActivationRecord, LastKnownGood, ReleaseRef
from kristal.store.s3 import ObjectStore

MAX_WALK = 64


def new_record(
    state: ptr.PointerState,
    *,
    channel_id: str,
    kind: ActivationKind,
    active: ReleaseRef,
    last_known_good: LastKnownGood | None,
    index_version: int,
    forced: bool,
    operator: str,
    reason: str,
    correlation_id: str,
    flow_run_id: str | None,
    now: datetime,
    evidence: dict[str, Any],
) -> ActivationRecord:
    live = state.record
    highest = live.highest_activated_release_id if live else 0
    if kind == "activate":
        highest = max(highest, active.release_id)
    return ActivationRecord(
        channel_id=channel_id,
        sequence=state.sequence + 1,
        activation_id=str(uuid.uuid4()),
        kind=kind,
        active=active,
        previous=live.active if live else None,
        previous_sequence=live.sequence if live else None,
        last_known_good=last_known_good,
        highest_activated_release_id=highest,
        index_version=index_version,
        rollback_mode=kind != "activate",
        forced=forced,
        operator=operator,
        reason=reason,
        correlation_id=correlation_id,
        flow_run_id=flow_run_id,
        created_at=now,
        evidence=evidence,
        prev_record_sha256=state.record_sha256,
    )


def passed(store: ObjectStore, record: ActivationRecord) -> bool:
    checks = ptr.read_checks(store, record.channel_id, record.sequence)
    return checks is not None and checks.result == "passed"


def good_records(store: ObjectStore, start: ActivationRecord | None) -> Iterator[ActivationRecord]:
    """Records that passed their checks, most recent first, following `last_known_good` links."""
    record = start
    steps = 0
    while record is not None and steps < MAX_WALK:
        steps += 1
        if passed(store, record):
            yield record
        link = record.last_known_good
        if link is None:
            return
        record = ptr.read_history(store, record.channel_id, link.sequence)


def last_known_good_for(
    store: ObjectStore, state: ptr.PointerState, new_release_id: int
) -> LastKnownGood | None:
    """For a record about to go live with `new_release_id`: where a rollback would go.

    The most recent earlier record for another release whose checks passed and whose release is
    not quarantined here.
    """
    for record in good_records(store, state.record):
        rid = record.active.release_id
        if rid == new_release_id:
            continue
        if ptr.read_quarantine(store, record.channel_id, rid) is not None:
            continue
        return LastKnownGood(sequence=record.sequence, release_id=rid)
    return None


def history(store: ObjectStore, channel_id: str) -> list[ActivationRecord]:
    """Every record, oldest first, each checked against its predecessor's hash (for
    `kristalctl history`; not on any hot path). A broken chain raises `PointerInvalid`."""
    records: list[ActivationRecord] = []
    previous_raw: dict[str, Any] | None = None
    for key in sorted(store.list_keys(layout.history_prefix(channel_id))):
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        if not name.isdigit():
            continue
        data, _etag = store.get_bytes(key, max_bytes=ptr.MAX_RECORD_BYTES)
        record, raw = ptr.parse_record(data, channel_id, what=f"history record {int(name)}")
        expected = canonical_sha256(previous_raw) if previous_raw is not None else None
        if record.sequence != len(records) + 1 or record.prev_record_sha256 != expected:
            raise PointerInvalid(
                f"history of {channel_id} breaks at record {record.sequence}: it does not follow "
                f"record {len(records)} (sequence gap or prev_record_sha256 mismatch)"
            )
        records.append(record)
        previous_raw = raw
    return records
