"""Walking a channel's history: the one hash-chain walker (`walk_chain`), the full listing
for `kristalctl history`, and the short walks along `last_known_good` links that `status`,
`rollback` and new records use instead of reading the whole history.

Each record links to its predecessor by `prev_record_sha256` (the JCS SHA-256 of the previous
record exactly as stored) and carries `previous`/`previous_sequence` and `last_known_good`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kristal.channel.records import (
    PointerState,
    read_checks,
    read_history,
    read_history_raw,
    read_pointer,
    read_quarantine,
)
from kristal.errors import PointerConflict, PointerInvalid
from kristal.formats import layout
from kristal.formats.canonical import canonical_bytes, canonical_sha256
from kristal.formats.channel_docs import ActivationRecord, LastKnownGood
from kristal.store.s3 import ObjectStore

MAX_WALK = 64
HISTORY_WORKERS = 8


def passed(store: ObjectStore, record: ActivationRecord) -> bool:
    checks = read_checks(store, record.channel_id, record.sequence)
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
        record = read_history(store, record.channel_id, link.sequence)


def last_known_good_for(
    store: ObjectStore, state: PointerState, new_release_id: int
) -> LastKnownGood | None:
    """For a record about to go live with `new_release_id`: where a rollback would go.

    The most recent earlier record for another release whose checks passed and whose release is
    not quarantined here.
    """
    for record in good_records(store, state.record):
        rid = record.active.release_id
        if rid == new_release_id:
            continue
        if read_quarantine(store, record.channel_id, rid) is not None:
            continue
        return LastKnownGood(sequence=record.sequence, release_id=rid)
    return None


def walk_chain(
    store: ObjectStore,
    channel_id: str,
    *,
    pointer: PointerState | None = None,
    allow_pending: bool = False,
) -> list[ActivationRecord]:
    """Walk history 1..N, N the pointer's sequence (the pointer is read here unless given):
    dense, each record hash-linked to its predecessor, the pointer equal to history[N], and
    nothing beyond it.
    With `allow_pending` a missing history[N] is the pointer itself, not yet repaired
    (invariant 4). Returns the walked, oldest first; any break raises `PointerInvalid`
    naming the first bad sequence.

    The link is `canonical_sha256` of the previous record exactly as stored (its JSON, which is
    its `model_dump(mode="json")` when written by this code).
    """
    state = pointer if pointer is not None else read_pointer(store, channel_id)
    if state.record is None or state.raw is None:
        return []
    upto = state.record.sequence
    sequences = range(1, upto + 1)
    with ThreadPoolExecutor(max_workers=HISTORY_WORKERS) as pool:
        loaded = list(pool.map(lambda s: read_history_raw(store, channel_id, s), sequences))
    if allow_pending and loaded[-1] is None:
        loaded[-1] = (state.record, state.raw)
    missing = [s for s, item in zip(sequences, loaded, strict=True) if item is None]
    if missing:
        shown = ", ".join(str(s) for s in missing[:10])
        raise PointerInvalid(
            f"history of {channel_id} is not dense: record(s) {shown} of 1..{upto} are missing"
        )
    walked: list[ActivationRecord] = []
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
        walked.append(record)
    assert prev is not None
    if store.head(layout.history(channel_id, upto + 1)) is not None:
        # History is written after the pointer: a record beyond it was not written by a switch,
        # unless the pointer moved since it was read (then walk again from where it is now).
        now = read_pointer(store, channel_id)
        if now.sequence > upto:
            if pointer is None:
                return walk_chain(store, channel_id, allow_pending=allow_pending)
            raise PointerConflict(f"the pointer of {channel_id} moved from sequence {upto} to "
                                  f"{now.sequence} while its history was walked")
        raise PointerInvalid(
            f"history record {upto + 1} of {channel_id} exists beyond the pointer (sequence "
            f"{upto}): it was not written by a switch")
    if canonical_bytes(state.raw) != canonical_bytes(prev[1]):
        raise PointerInvalid(
            f"pointer of {channel_id} (activation {state.record.activation_id}) differs from "
            f"history record {upto} (activation {prev[0].activation_id})"
        )
    return walked


def history(store: ObjectStore, channel_id: str) -> list[ActivationRecord]:
    """Every record, oldest first, the chain checked (for `kristalctl history`; not on any hot
    path). A broken chain raises `PointerInvalid`."""
    return walk_chain(store, channel_id, allow_pending=True)
