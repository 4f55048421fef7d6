"""Every channel of the bucket at a glance (`kristalctl channels`, the fleet's skew report):
the channels found by walking `channels/<tenant>/<environment>/<region>/`, one row per channel
read from its signed pointer and checks record; and a channel's releases with their state here
(`kristalctl releases`)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from kristal.channel import records
from kristal.channel.bakes import bake_status
from kristal.errors import KristalError
from kristal.formats.channel_docs import ActivationRecord, ChannelIndex
from kristal.formats.models import CHANNEL_PATTERN
from kristal.formats.time import rfc3339
from kristal.store.listing import child_prefixes

READERS = 16  # small GETs: the round trip, not the bandwidth, is what they wait on


def list_channels(src: records.ChannelAccess, *, tenant: str | None = None,
                  environment: str | None = None, region: str | None = None) -> list[str]:
    """Channel ids in the bucket (a channel is a `channels/t/e/r/` with any object), sorted;
    each level is filtered by the given part."""
    found: list[str] = []
    for t in child_prefixes(src.store, "channels/"):
        if tenant not in (None, t):
            continue
        for e in child_prefixes(src.store, f"channels/{t}/"):
            if environment not in (None, e):
                continue
            for r in child_prefixes(src.store, f"channels/{t}/{e}/"):
                channel = f"{t}/{e}/{r}"
                if region in (None, r) and re.fullmatch(CHANNEL_PATTERN, channel):
                    found.append(channel)
    return sorted(found)


def channel_row(src: records.ChannelAccess, channel_id: str,
                known: dict[str, str] | None = None) -> dict[str, Any]:
    """What is live in one channel: release, generation, sequence, kind, since when, by whom,
    checks, rollback mode. An unreadable record is shown by its code, never skipped."""
    row: dict[str, Any] = {"channel": channel_id, "release_id": None, "generation": None,
                           "sequence": None, "kind": None, "since": None, "operator": None,
                           "checks": None, "rollback_mode": None, "bake": None,
                           "bake_figures": None}
    try:
        record = records.read_pointer(src, channel_id).record
    except KristalError as exc:
        row["checks"] = f"pointer unreadable: {exc.code}"
        return row
    if record is None:
        row["checks"] = "nothing live"
        return row
    row.update(release_id=record.active.release_id, generation=record.active.generation,
               sequence=record.sequence, kind=record.kind, since=rfc3339(record.created_at),
               operator=record.operator, rollback_mode=record.rollback_mode)
    if known and record.activation_id in known:  # write-once per sequence: already known
        row["checks"] = known[record.activation_id]
        return row
    try:
        checks = records.read_checks(src, record)
    except KristalError as exc:
        row["checks"] = f"unreadable: {exc.code}"
        return row
    row["checks"] = checks.result if checks is not None else "pending"
    row["bake"], row["bake_figures"] = bake_label(src, record)
    return row


def bake_label(src: records.ChannelAccess, record: ActivationRecord) -> tuple[str, str]:
    """(`none`, `baking 4/10`, `passed`, `failed`, `superseded` or why it is unreadable; the
    latest measurement's figures, e.g. `error-rate 0.001, p95 0.41 ms, 60 rows`)."""
    if record.bake is None:
        return "none", ""
    try:
        status = bake_status(src, record, live=True)
    except KristalError as exc:
        return f"unreadable: {exc.code}", ""
    label = f"baking {status.done}/{status.total}" if status.state == "baking" else status.state
    last = status.last or {}
    metrics = last.get("metrics") or {}
    parts = [f"{name} {', '.join(f'{v:.4g}' for v in values) or '-'}"
             for name, values in (metrics.items() if isinstance(metrics, dict) else [])]
    if "latency_p95_ms" in last:
        parts.append(f"p95 {last['latency_p95_ms']} ms")
    if "row_count" in last:
        parts.append(f"{last['row_count']} rows")
    return label, ", ".join(parts)


def channel_rows(src: records.ChannelAccess, channel_ids: list[str],
                 known: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """`channel_row` of each channel, in the given order, read in parallel."""
    if not channel_ids:
        return []
    with ThreadPoolExecutor(max_workers=min(READERS, len(channel_ids))) as pool:
        return list(pool.map(lambda c: channel_row(src, c, known), channel_ids))


def release_rows(src: records.ChannelAccess, channel_id: str, index: ChannelIndex,
                 now: datetime) -> list[dict[str, Any]]:
    """Each release of the channel's (verified) index with its state here, first match of:
    live, revoked, quarantined, below the floor, needs an authorization (an older generation
    than the live one: a downgrade), activatable."""
    live = records.read_pointer(src, channel_id).record
    entries = sorted(index.releases, key=lambda e: e.release_id)
    with ThreadPoolExecutor(max_workers=min(READERS, max(1, len(entries)))) as pool:
        quarantined = list(pool.map(
            lambda e: records.read_quarantine(src, channel_id, e.release_id), entries))
    rows = []
    for entry, quarantine in zip(entries, quarantined, strict=True):
        rid = entry.release_id
        state = (
            "live" if live is not None and live.active.release_id == rid
            else "revoked" if index.revocation_for(entry, now) is not None
            else "quarantined" if quarantine is not None
            else "below the floor" if rid < index.minimum_allowed_release_id
            else "needs an authorization" if live is not None
            and entry.generation < live.active.generation
            else "activatable")
        rows.append({"release_id": rid, "generation": entry.generation, "state": state,
                     "published_at": rfc3339(entry.published_at),
                     "exchange_id": entry.exchange_id, "runtime_pack_ids": entry.runtime_pack_ids,
                     "quarantine_reason": quarantine.reason if quarantine else None})
    return rows
