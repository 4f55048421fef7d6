"""The active-pointer protocol of DESIGN §6: the only way anything goes live.

`new_record` builds (and signs) the record that follows a pointer state; `commit` switches the
pointer to it with one conditional write (`If-Match` on the ETag of the read the decision was
made on, or `If-None-Match: *` for a channel's first record) and resolves every ambiguous
outcome by re-reading. An Iceberg-style commit: written, conflict (`PointerConflict`: nothing
of ours was written, re-read and decide again) or unknown (`CommitUnknown`: clean nothing up).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from kristal.channel.records import (
    ChannelAccess,
    PointerState,
    RecordKeys,
    read_history,
    read_pointer,
    record_bytes,
    sign_record,
)
from kristal.errors import CommitUnknown, PointerConflict, PointerInvalid, StorageUnavailable
from kristal.formats import layout
from kristal.formats.bake_docs import BakePlan
from kristal.formats.channel_docs import ActivationKind, ActivationRecord, LastKnownGood, ReleaseRef
from kristal.store.s3 import WriteStatus

COMMIT_ATTEMPTS = 3


def new_record(
    keys: RecordKeys,
    state: PointerState,
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
    bake: BakePlan | None = None,
) -> ActivationRecord:
    live = state.record
    highest = live.highest_activated_release_id if live else 0
    if kind == "activate":
        highest = max(highest, active.release_id)
    return sign_record(keys, ActivationRecord(
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
        bake=bake,
    ))


def commit(src: ChannelAccess, record: ActivationRecord, expected: PointerState) -> PointerState:
    """Switch the pointer from `expected` to `record` in one conditional write.

    Returns the new state. Raises `PointerConflict` when another writer moved the pointer first
    (nothing of ours was written) and `CommitUnknown` when the outcome stays ambiguous after
    re-reading (nothing may be cleaned up then).
    """
    if record.sequence != expected.sequence + 1:
        raise PointerConflict(
            f"record sequence {record.sequence} does not follow live sequence {expected.sequence}"
        )
    store = src.store
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
            now = read_pointer(src, record.channel_id)
        except (StorageUnavailable, PointerInvalid):
            time.sleep(0.2 * (attempt + 1))
            continue
        if now.record is not None and now.record.activation_id == record.activation_id:
            return now
        if now.etag != expected.etag:
            if now.sequence > record.sequence:
                # Our write may have landed and been built upon since: history knows.
                landed = read_history(src, record.channel_id, record.sequence)
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


