"""The reverify operation (DESIGN §6 invariants 4-5, §8): every live store re-verified, nightly
or on demand, without changing what is live unless the channel's policy says so.

For every channel with an index (or those asked for) the check groups of `reverify_checks` run
as steps, and each channel leaves one table (check, ok, detail, code). A failing channel emits
`kristal.reverify.failed` (payload `channel_id`, `activation_id`, `reasons`): an alert, not a
rollback trigger. It rolls back only where the channel's policy says so (`reverify_rollback:
true` in its trust-file entry, local configuration like every policy, or the channel listed in
`rollback_on_failure`): to last-known-good, under the channel's lock, conditional on the failing
activation still being live (invariant 7). Then the operation fails with a coded error:
`check_failed` when post-activation checks failed or stayed missing past the timeout, else the
first failure's own code.
"""

from __future__ import annotations

from pydantic import BaseModel

from kristal.channel import records
from kristal.context import Context
from kristal.errors import KristalError
from kristal.operations import events
from kristal.operations.bake import fail_stopped
from kristal.operations.outcome import Who
from kristal.operations.reports import publish_board
from kristal.operations.reverify_bake import BAKE, check_bake, stopped
from kristal.operations.reverify_checks import (
    CHECKS_RECORD,
    LIVE_RELEASE,
    LOCAL_INDEX,
    OBJECTS,
    POINTER_CHAIN,
    ChannelReport,
    CheckRow,
    build_report,
    check_checks_record,
    check_local_index,
    check_objects,
    check_pointer_chain,
    list_channels,
)
from kristal.operations.reverify_trust import check_trust
from kristal.operations.rollback import CHANNEL_LOCK_WAIT_S, switch_back
from kristal.operations.runner import Artifact, Runner, Step


class ReverifyResult(BaseModel):
    ok: bool
    channels: list[ChannelReport]
    failed_channels: list[str] = []
    rollbacks: dict[str, str] = {}
    message: str = ""


def _group(run: Runner, name: str, group: Step[..., list[CheckRow]], *args: object,
           **kwargs: object) -> list[CheckRow]:
    """One check group; an error that outlived its retries becomes a failed row."""
    try:
        rows: list[CheckRow] = run(group, *args, **kwargs)
        return rows
    except KristalError as exc:
        return [CheckRow(name=name, ok=False, detail=exc.message, code=exc.code)]


def reverify_channel(run: Runner, ctx: Context, channel_id: str, *,
                     checks_timeout_s: float) -> ChannelReport:
    """Every check group of one channel, in order; one row per check."""
    try:
        chain = run(check_pointer_chain, ctx, channel_id)
    except KristalError as exc:
        row = CheckRow(name=POINTER_CHAIN, ok=False, detail=exc.message, code=exc.code)
        return build_report(channel_id, None, [row])
    rows = list(chain.rows)
    live = chain.live
    if live is not None:
        rows += _group(run, LIVE_RELEASE, check_trust, ctx, live)
        rows += _group(run, OBJECTS, check_objects, ctx, live)
        rows += _group(run, LOCAL_INDEX, check_local_index, ctx, live)
        rows += _group(run, CHECKS_RECORD, check_checks_record, ctx, live,
                       checks_timeout_s=checks_timeout_s)
        rows += _group(run, BAKE, check_bake, ctx, live)
    return build_report(channel_id, live, rows)


def rollback_policy(ctx: Context, channel_id: str) -> bool:
    """The channel's own policy (trust file) on rolling back after a failed re-verification."""
    try:
        return ctx.trust(channel_id).reverify_rollback
    except KristalError:
        return False


def _roll_back(run: Runner, ctx: Context, report: ChannelReport,
               operator: str) -> tuple[bool, str]:
    """(whether the channel was rolled back, what happened)."""
    if report.activation_id is None:
        return False, "nothing live: nothing to roll back"
    reason = f"reverify failed: {'; '.join(report.reasons())[:500]}"
    who = Who.of(operator, reason, None, run.run_id)
    try:
        with run.lock([report.channel_id], wait_s=CHANNEL_LOCK_WAIT_S):
            outcome = switch_back(run, ctx, report.channel_id, "last-known-good",
                                  report.activation_id, "rollback", who, reason)
    except KristalError as exc:
        return False, f"no rollback: {exc.line()}"
    return outcome.outcome == "rolled_back", outcome.message


def _fail_stopped_bake(run: Runner, ctx: Context, report: ChannelReport, why: str,
                      operator: str) -> str:
    live = records.read_pointer(ctx, report.channel_id).record
    if live is None or live.activation_id != report.activation_id:
        return "the channel moved on meanwhile: nothing to fail"
    who = Who.of(operator, f"reverify: {why}", None, run.run_id)
    return fail_stopped(run, ctx, live, why, who).message


def _table(report: ChannelReport) -> Artifact:
    return Artifact(
        "reverify", report.channel_id,
        f"re-verification of {report.channel_id} (sequence {report.sequence}, release "
        f"{report.release_id}): {'ok' if report.ok else 'FAILED'}",
        table=[{"check": r.name, "ok": r.ok, "detail": r.detail, "code": r.code or ""}
               for r in report.rows],
    )


def summary_markdown(result: ReverifyResult) -> str:
    lines = ["# Nightly re-verification", "", "| channel | release | sequence | result |",
             "|---|---|---|---|"]
    for report in result.channels:
        state = "ok" if report.ok else "**FAILED**: " + "; ".join(
            f"{r.name} ({r.code})" for r in report.failures
        )
        lines.append(f"| {report.channel_id} | {report.release_id} | {report.sequence} | "
                     f"{state} |")
    if result.rollbacks:
        lines += ["", "## Rollbacks", *[f"- {c}: {m}" for c, m in result.rollbacks.items()]]
    return "\n".join(lines)


def _error(failed: list[ChannelReport], rollbacks: dict[str, str],
           rolled_back: set[str]) -> KristalError:
    error = failed[0].error(rolled_back=failed[0].channel_id in rolled_back)
    if len(failed) > 1:
        others = "; ".join(f"{r.channel_id}: {', '.join(r.reasons())}" for r in failed[1:])
        error = type(error)(f"{error.message}; also {others}")
    if rollbacks:
        error = type(error)(
            f"{error.message}; rollbacks: " + "; ".join(f"{c}: {m}" for c, m in rollbacks.items())
        )
    return error


def reverify(
    run: Runner,
    ctx: Context,
    *,
    channel_ids: list[str] | None,
    checks_timeout_s: float,
    rollback_on_failure: list[str] | None = None,
    operator: str = "reverify",
) -> ReverifyResult:
    """Re-verify the channels (all with an index when none are named); raises the coded error
    of the first failing channel after every channel was looked at."""
    channels = channel_ids or run(list_channels, ctx)
    reports: list[ChannelReport] = []
    rollbacks: dict[str, str] = {}
    rolled_back: set[str] = set()
    for channel_id in channels:
        report = reverify_channel(run, ctx, channel_id, checks_timeout_s=checks_timeout_s)
        reports.append(report)
        run.publish(_table(report))
        if report.ok:
            run.log(f"{channel_id}: ok ({len(report.rows)} checks)")
            continue
        run.log(f"{channel_id}: FAILED: {'; '.join(report.reasons())}", warning=True)
        run.emit(events.REVERIFY_FAILED, channel_id=channel_id, payload={
            "channel_id": channel_id, "activation_id": report.activation_id,
            "reasons": report.reasons()})
        if (why := stopped(report.rows)) is not None:
            # A stopped bake fails as a failed measurement does, whatever the reverify policy.
            rollbacks[channel_id] = _fail_stopped_bake(run, ctx, report, why, operator)
            now = records.read_pointer(ctx, channel_id).record
            if now is not None and now.activation_id != report.activation_id:
                rolled_back.add(channel_id)
            run.log(f"{channel_id}: {rollbacks[channel_id]}")
        elif channel_id in (rollback_on_failure or []) or rollback_policy(ctx, channel_id):
            done, rollbacks[channel_id] = _roll_back(run, ctx, report, operator)
            if done:
                rolled_back.add(channel_id)
            run.log(f"{channel_id}: {rollbacks[channel_id]}")
    failed = [r for r in reports if not r.ok]
    result = ReverifyResult(
        ok=not failed,
        channels=reports,
        failed_channels=[r.channel_id for r in failed],
        rollbacks=rollbacks,
        message=(
            f"{len(reports)} channel(s) re-verified, all ok" if not failed
            else f"{len(failed)} of {len(reports)} channel(s) failed re-verification"
        ),
    )
    run.publish(Artifact("reverify", "summary", result.message,
                         markdown=summary_markdown(result)))
    publish_board(run, ctx, [r.channel_id for r in reports])
    if failed:
        raise _error(failed, rollbacks, rolled_back)
    return result
