"""Reading and writing a bake's records (`channels/<id>/bakes/<sequence>/`): one measurement
per interval (`<n>.json`) and one verdict (`verdict.json`), write-once and signed like every
channel record, each bound to the activation record it belongs to (same sequence, activation
and release), and the bake's state as `status` shows it.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from kristal.channel.record_keys import sign_record
from kristal.channel.records import ChannelAccess, get_record, parse_signed, write_once
from kristal.errors import PointerInvalid
from kristal.formats import layout
from kristal.formats.bake_docs import BakeMeasurement, BakeState, BakeVerdict, VerdictResult
from kristal.formats.canonical import canonical_bytes
from kristal.formats.channel_docs import ActivationRecord


def _bound(record: ActivationRecord, doc: BakeMeasurement | BakeVerdict, what: str) -> None:
    if (doc.sequence, doc.activation_id, doc.release_id) != (
            record.sequence, record.activation_id, record.active.release_id):
        raise PointerInvalid(
            f"{what} of {record.channel_id} is for activation {doc.activation_id} (sequence "
            f"{doc.sequence}, release {doc.release_id}), not for the record it belongs to "
            f"({record.activation_id}, release {record.active.release_id})")


def read_measurement(src: ChannelAccess, record: ActivationRecord,
                     n: int) -> BakeMeasurement | None:
    what = f"bake measurement {n} of sequence {record.sequence}"
    key = layout.bake_measurement(record.channel_id, record.sequence, n)
    got = get_record(src.store, key, what)
    if got is None:
        return None
    doc, _raw = parse_signed(src.keys, got[0], BakeMeasurement, record.channel_id, what=what)
    _bound(record, doc, what)
    if doc.n != n:
        raise PointerInvalid(f"{what} of {record.channel_id} holds measurement {doc.n}")
    return doc


def write_measurement(src: ChannelAccess, record: ActivationRecord,
                      measurement: BakeMeasurement) -> BakeMeasurement | None:
    """Write-once; returns None when ours was written, else the one that stands (another
    bake run of the same activation measured this slot first)."""
    signed = sign_record(src.keys, measurement)
    return write_once(
        src.store, layout.bake_measurement(record.channel_id, record.sequence, measurement.n),
        canonical_bytes(signed.model_dump(mode="json")),
        lambda: read_measurement(src, record, measurement.n),
        f"bake measurement {measurement.n} of {record.channel_id}",
    )


def _numbers(src: ChannelAccess, record: ActivationRecord) -> list[int]:
    """The measurement numbers written so far, from one listing; a gap is `pointer_invalid`
    (measurements are written one after the other)."""
    prefix = layout.bake_prefix(record.channel_id, record.sequence)
    numbers = sorted(int(key[len(prefix):-5]) for key in src.store.list_keys(prefix)
                     if key[len(prefix):-5].isdigit() and key.endswith(".json"))
    for expected, n in enumerate(numbers, start=1):
        if n != expected:
            raise PointerInvalid(f"bake of sequence {record.sequence} of {record.channel_id} "
                                 f"has measurement {n} without measurement {expected}")
    return numbers


def _read(src: ChannelAccess, record: ActivationRecord, n: int) -> BakeMeasurement:
    doc = read_measurement(src, record, n)
    if doc is None:  # listed a moment ago, and measurements are never deleted
        raise PointerInvalid(f"bake measurement {n} of sequence {record.sequence} of "
                             f"{record.channel_id} was listed but cannot be read")
    return doc


def measurements(src: ChannelAccess, record: ActivationRecord) -> list[BakeMeasurement]:
    """Every measurement written so far, in order, each verified (the bake run and reverify
    judge by all of them)."""
    return [_read(src, record, n) for n in _numbers(src, record)]


def latest_measurement(src: ChannelAccess,
                       record: ActivationRecord) -> tuple[int, BakeMeasurement | None]:
    """How many measurements are written, and the latest one, verified: what `status`, the
    channel listing and the board show (one listing and one read, however long the bake)."""
    numbers = _numbers(src, record)
    return len(numbers), (_read(src, record, numbers[-1]) if numbers else None)


def read_verdict(src: ChannelAccess, record: ActivationRecord) -> BakeVerdict | None:
    what = f"bake verdict of sequence {record.sequence}"
    got = get_record(src.store, layout.bake_verdict(record.channel_id, record.sequence), what)
    if got is None:
        return None
    doc, _raw = parse_signed(src.keys, got[0], BakeVerdict, record.channel_id, what=what)
    _bound(record, doc, what)
    return doc


def write_verdict(src: ChannelAccess, record: ActivationRecord, result: VerdictResult, *,
                  done: int, reason: str, now: datetime,
                  superseded_by: int | None = None) -> BakeVerdict:
    """The bake's end; the first verdict written stands and is returned."""
    assert record.bake is not None
    verdict = sign_record(src.keys, BakeVerdict(
        channel_id=record.channel_id, sequence=record.sequence,
        activation_id=record.activation_id, release_id=record.active.release_id,
        result=result, done=done, total=record.bake.total, reason=reason,
        superseded_by=superseded_by, created_at=now,
    ))
    existing = write_once(
        src.store, layout.bake_verdict(record.channel_id, record.sequence),
        canonical_bytes(verdict.model_dump(mode="json")),
        lambda: read_verdict(src, record),
        f"bake verdict of sequence {record.sequence} of {record.channel_id}",
    )
    return existing or verdict


class BakeStatus(BaseModel):
    """`status --json`'s `bake`: where the live release's bake stands."""

    state: BakeState
    done: int = 0
    total: int = 0
    interval_s: float | None = None
    reason: str = ""
    last: dict[str, object] | None = None  # the latest measurement's figures


def bake_status(src: ChannelAccess, record: ActivationRecord, *, live: bool) -> BakeStatus:
    """The bake of `record`: none, baking (live, no verdict yet), passed, failed, superseded
    (recorded, or the pointer moved on before a verdict was written)."""
    plan = record.bake
    if plan is None:
        return BakeStatus(state="none")
    verdict = read_verdict(src, record)
    done, last = latest_measurement(src, record)
    figures: dict[str, object] | None = None
    if last is not None:
        figures = {"n": last.n, "result": last.result, "reason": last.reason,
                   "at": last.created_at.isoformat(),
                   "metrics": {m.name: m.values for m in last.metrics},
                   **{k: v for k, v in last.figures.items() if k != "outcomes"}}
    state: BakeState
    if verdict is not None:
        state, reason = verdict.result, verdict.reason
    else:
        state = "baking" if live else "superseded"
        reason = "" if live else "the pointer moved on before the bake ended"
    return BakeStatus(state=state, done=done, total=plan.total,
                      interval_s=plan.interval_s, reason=reason, last=figures)


def bake_state(src: ChannelAccess, record: ActivationRecord, *, live: bool) -> BakeState:
    """`bake_status`'s state alone, from the verdict (one read; for listings)."""
    if record.bake is None:
        return "none"
    verdict = read_verdict(src, record)
    if verdict is not None:
        return verdict.result
    return "baking" if live else "superseded"
