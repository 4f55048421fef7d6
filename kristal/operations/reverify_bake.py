"""The bake row of a channel's re-verification (issue 16, like DESIGN §6 invariant 5 for
checks): a bake nobody has measured for longer than its plan's `stale_after_s` has stopped (its
run crashed, its worker is gone); `reverify` then fails it as a failed measurement would.
"""

from __future__ import annotations

from kristal.channel import bakes, records
from kristal.context import Context
from kristal.errors import CheckFailed, KristalError, StorageUnavailable
from kristal.formats.channel_docs import ActivationRecord
from kristal.operations.reverify_checks import CheckRow, failed_row
from kristal.operations.runner import step

BAKE = "bake"
STOPPED = "bake stopped"


@step("reverify-bake")
def check_bake(ctx: Context, live: ActivationRecord) -> list[CheckRow]:
    plan = live.bake
    if plan is None:
        return [CheckRow(name=BAKE, ok=True, detail="no bake")]
    try:
        status = bakes.bake_status(ctx, live, live=True)
        done = bakes.measurements(ctx, live)  # every one verified, not just the latest
        checks = records.read_checks(ctx, live)
    except StorageUnavailable:
        raise
    except KristalError as exc:
        return [failed_row(BAKE, exc, "bake records unreadable: ")]
    progress = f"{status.done}/{status.total}"
    if status.state == "failed":
        return [CheckRow(name=BAKE, ok=False, code=CheckFailed.code,
                         detail=f"bake failed ({progress}) and the release is still live: "
                                f"{status.reason}")]
    if status.state != "baking":
        return [CheckRow(name=BAKE, ok=True, detail=f"bake {status.state} ({progress})")]
    last = (done[-1].created_at if done else checks.created_at if checks is not None
            else live.created_at)
    age = (ctx.now() - last).total_seconds()
    if age > plan.stale_after_s:
        return [CheckRow(name=BAKE, ok=False, code=CheckFailed.code,
                         detail=f"{STOPPED}: no measurement for {age:.0f}s ({progress}, "
                                f"stale after {plan.stale_after_s:.0f}s)")]
    return [CheckRow(name=BAKE, ok=True,
                     detail=f"baking {progress}, last measured {age:.0f}s ago")]


def stopped(rows: list[CheckRow]) -> str | None:
    """Why the bake stopped, if the bake row says so."""
    return next((r.detail for r in rows if r.name == BAKE and not r.ok
                 and r.detail.startswith(STOPPED)), None)
