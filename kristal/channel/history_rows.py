"""A channel's history as rows, like `helm history`: each record with its status (live,
superseded, rolled back, failed), checks, bake, approver and, for an automatic rollback, its
cause (the failed check, bake or report) rather than the failed activation's reason.
Shared by `kristalctl history`, the run's history artifact and the timeline picture.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kristal.channel import records
from kristal.channel.bakes import bake_state, read_verdict
from kristal.channel.history import HISTORY_WORKERS, history, proven_back
from kristal.formats.channel_docs import ActivationRecord

ROLLBACK_KINDS = ("rollback", "auto_rollback")


def _records(src: records.ChannelAccess, channel_id: str,
             last: int | None) -> list[ActivationRecord]:
    """Oldest first: all of them (the whole chain checked), or the last `last` proven down
    from the pointer (an operation's artifact need not read a long history)."""
    if last is None:
        return history(src, channel_id)
    state = records.read_pointer(src, channel_id)
    if state.record is None:
        return []
    down_to = max(1, state.record.sequence - last + 1)
    return [*reversed(list(proven_back(src, state, down_to=down_to))), state.record]


def _cause(src: records.ChannelAccess, failed: ActivationRecord,
           checks: Any) -> str | None:
    """Why `failed` was rolled back automatically: its failed checks, its failed bake, or the
    quarantine written for it (a crashed run, a monitor's report)."""
    if checks is not None and checks.result == "failed":
        return f"failed checks: {checks.reason}"
    verdict = read_verdict(src, failed) if failed.bake is not None else None
    if verdict is not None and verdict.result == "failed":
        return f"failed bake: {verdict.reason}"
    quarantine = records.read_quarantine(src, failed.channel_id, failed.active.release_id)
    if quarantine is not None and quarantine.sequence == failed.sequence:
        return quarantine.reason
    return None


def history_rows(src: records.ChannelAccess, channel_id: str, *,
                 last: int | None = None) -> list[dict[str, Any]]:
    """One row per record, oldest first (see the module docstring)."""
    listed = _records(src, channel_id, last)
    n = len(listed)

    def facts(i: int) -> tuple[Any, str]:
        record = listed[i]
        return records.read_checks(src, record), bake_state(src, record, live=i == n - 1)

    with ThreadPoolExecutor(max_workers=min(HISTORY_WORKERS, max(1, n))) as pool:
        known = list(pool.map(facts, range(n)))
    rows = []
    for i, record in enumerate(listed):
        checks, bake = known[i]
        later = listed[i + 1] if i + 1 < n else None
        status = (
            "failed" if (checks is not None and checks.result == "failed") or bake == "failed"
            else "live" if later is None
            else "rolled back" if later.kind in ROLLBACK_KINDS
            else "superseded")
        cause = None
        if record.kind == "auto_rollback" and i > 0:
            cause = _cause(src, listed[i - 1], known[i - 1][0])
        rows.append({
            "sequence": record.sequence, "status": status, "kind": record.kind,
            "release_id": record.active.release_id, "generation": record.active.generation,
            "operator": record.operator,
            "approver": record.evidence.get("approved_by"),
            "reason": record.reason, "cause": cause,
            "created_at": record.created_at.isoformat(), "forced": record.forced,
            "activation_id": record.activation_id, "flow_run_id": record.flow_run_id,
            "checks": checks.result if checks else "pending",
            "checks_reason": checks.reason if checks and checks.result == "failed" else None,
            "bake": bake,
        })
    return rows
