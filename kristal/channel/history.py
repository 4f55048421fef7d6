"""Walking a channel's history: the one hash-chain walker (`walk_chain`), the full listing
for `kristalctl history`, and the short walks down from the pointer that `status`, `rollback`
and new records use instead of reading the whole history: every record they use is proven by
the chain from the signed pointer down (`proven_back`).

Each record links to its predecessor by `prev_record_sha256` (the JCS SHA-256 of the previous
record exactly as stored) and carries `previous`/`previous_sequence` and `last_known_good`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kristal.channel.bakes import read_verdict
from kristal.channel.records import (
    ChannelAccess,
    PointerState,
    read_checks,
    read_history_raw,
    read_pointer,
    read_quarantine,
)
from kristal.errors import PointerConflict, PointerInvalid
from kristal.formats import layout
from kristal.formats.canonical import canonical_bytes, canonical_sha256
from kristal.formats.channel_docs import ActivationRecord, LastKnownGood

MAX_WALK = 64
HISTORY_WORKERS = 8


def passed(src: ChannelAccess, record: ActivationRecord) -> bool:
    """Known-good: its checks passed and, if it promised a bake, the bake passed."""
    checks = read_checks(src, record)
    if checks is None or checks.result != "passed":
        return False
    if record.bake is None:
        return True
    verdict = read_verdict(src, record)
    return verdict is not None and verdict.result == "passed"


def proven_back(src: ChannelAccess, state: PointerState, *,
                down_to: int = 1) -> Iterator[ActivationRecord]:
    """History records N-1, N-2, ... `down_to` (N the pointer's sequence), newest first, each
    proven by the chain: it hashes to the `prev_record_sha256` of the one after it (the
    pointer first). A record that is missing or does not match is `pointer_invalid`, raised
    when the walk reaches it. Read ahead in parallel batches of 1, 2, 4, ... (the first record
is usually the one wanted); stop early by breaking."""
    live = state.record
    if live is None:
        return
    channel = live.channel_id
    expected = live.prev_record_sha256
    sequence = live.sequence - 1
    size = 1
    with ThreadPoolExecutor(max_workers=HISTORY_WORKERS) as pool:
        while sequence >= down_to:
            batch = list(range(sequence, max(down_to, sequence - size + 1) - 1, -1))
            size = min(size * 2, HISTORY_WORKERS)
            loaded = list(pool.map(lambda s: read_history_raw(src, channel, s), batch))
            for seq, found in zip(batch, loaded, strict=True):
                if found is None or canonical_sha256(found[1]) != expected:
                    raise PointerInvalid(
                        f"history record {seq} of {channel} is missing or is not the one the "
                        f"chain links to from sequence {seq + 1}: it is not trusted")
                record = found[0]
                expected = record.prev_record_sha256
                yield record
            sequence = batch[-1] - 1


def good_records(src: ChannelAccess, state: PointerState) -> Iterator[ActivationRecord]:
    """The live record and the chain-proven ones before it whose own checks passed, newest
    first."""
    if state.record is None:
        return
    if passed(src, state.record):
        yield state.record
    for record in proven_back(src, state):
        if passed(src, record):
            yield record


def last_known_good_for(
    src: ChannelAccess, state: PointerState, new_release_id: int
) -> LastKnownGood | None:
    """For a record about to go live with `new_release_id`: where a rollback would go.

    The most recent record (the live one included) for another release whose checks passed
    and whose release is not quarantined here.
    """
    for record in good_records(src, state):
        rid = record.active.release_id
        if rid == new_release_id:
            continue
        if read_quarantine(src, record.channel_id, rid) is not None:
            continue
        return LastKnownGood(sequence=record.sequence, release_id=rid)
    return None


def walk_chain(
    src: ChannelAccess,
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
    state = pointer if pointer is not None else read_pointer(src, channel_id)
    if state.record is None or state.raw is None:
        return []
    upto = state.record.sequence
    sequences = range(1, upto + 1)
    with ThreadPoolExecutor(max_workers=HISTORY_WORKERS) as pool:
        loaded = list(pool.map(lambda s: read_history_raw(src, channel_id, s), sequences))
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
    if src.store.head(layout.history(channel_id, upto + 1)) is not None:
        # History is written after the pointer: a record beyond it was not written by a switch,
        # unless the pointer moved since it was read (then walk again from where it is now).
        now = read_pointer(src, channel_id)
        if now.sequence > upto:
            if pointer is None:
                return walk_chain(src, channel_id, allow_pending=allow_pending)
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


def history(src: ChannelAccess, channel_id: str) -> list[ActivationRecord]:
    """Every record, oldest first, the chain checked (for `kristalctl history`; not on any hot
    path). A broken chain raises `PointerInvalid`."""
    return walk_chain(src, channel_id, allow_pending=True)
