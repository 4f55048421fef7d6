"""The text an operation leaves for people: the verification report of a run, the table of what
changed, and the follow-up opened by every rollback. Plain strings and rows; the runner decides
where they are shown (Prefect artifacts, or the CLI).
"""

from __future__ import annotations

from typing import Any

from kristal.channel.directory import channel_rows
from kristal.channel.history_rows import history_rows
from kristal.context import Context
from kristal.formats.channel_docs import ActivationRecord, CheckRecord
from kristal.operations import events
from kristal.operations.pictures import svg_markdown, timeline_svg
from kristal.operations.plan import ActivationPlan
from kristal.operations.runner import Artifact, Runner


def verification_markdown(
    plan: ActivationPlan, record: ActivationRecord | None, checks: CheckRecord | None, outcome: str
) -> str:
    release = plan.release
    lines = [
        f"# {plan.kind} `{plan.channel_id}` → release {release.entry.release_id}",
        "",
        f"**Outcome:** {outcome}",
        "",
        "## Verified",
        f"- channel index v{release.index.index_version} "
        f"(`{release.evidence['index']['index_id']}`), signed by channel-authority",
        f"- exchange `{release.entry.exchange_id}` (generation {release.entry.generation})",
    ]
    lines += [f"- runtime pack `{p.pack_id}`" for p in release.packs]
    if release.entry.federation_id:
        lines.append(
            f"- federation root `{release.entry.federation_id}` with "
            f"{len(release.shard_exchanges)} shards"
        )
    lines += [f"- validation report `{rid}`" for rid in release.report_ids]
    if plan.notes:
        lines += ["", "## Notes", *[f"- {n}" for n in plan.notes]]
    if record is not None:
        lines += [
            "",
            "## Record",
            f"- sequence {record.sequence}, activation `{record.activation_id}`",
            f"- operator {record.operator}; reason: {record.reason}",
            f"- correlation id `{record.correlation_id}`",
        ]
    if checks is not None:
        lines += [
            "",
            f"## Post-activation checks: {checks.result}",
            "",
            "| check | expected | measured | passed |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {o['name']} | {o['expected']} | {o['measured']} | {_tick(o['passed'])} |"
            for o in checks.figures.get("outcomes", [])
        ]
        prev = checks.previous_figures or {}
        lines += ["", "| figure | this release | previous release | delta |",
                  "|---|---:|---:|---:|"]
        for name in ("row_count", "latency_p95_ms", "peak_rss_mb"):
            now, before = checks.figures.get(name), prev.get(name)
            lines.append(f"| {name} | {_figure(now)} | {_figure(before)} | "
                         f"{_delta(now, before)} |")
    return "\n".join(lines)


def _tick(value: object) -> str:
    return "✓" if value in (True, "True", "true") else "✗"


def _figure(value: object) -> str:
    """Rounded for reading: integers as they are, other numbers to 3 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _delta(now: object, before: object) -> str:
    if not isinstance(now, int | float) or not isinstance(before, int | float):
        return "-"
    change = now - before
    sign = "+" if change > 0 else ""
    share = f" ({sign}{change / before:.0%})" if before else ""
    return f"{sign}{_figure(change)}{share}" if change else "0"


def change_rows(plan: ActivationPlan, record: ActivationRecord | None) -> list[dict[str, Any]]:
    live = plan.state.record
    new = record.active if record else None
    rows = []
    for field in ("release_id", "generation", "exchange_id", "runtime_pack_ids", "federation_id"):
        before = getattr(live.active, field) if live else None
        after = getattr(new, field) if new else before
        rows.append(
            {
                "field": field,
                "before": str(before),
                "after": str(after),
                "changed": _tick(before != after),
            }
        )
    return rows


def incident_markdown(record: ActivationRecord, checks: CheckRecord | None, cause: str) -> str:
    previous = record.previous
    lines = [
        f"# Follow-up: {record.kind} in `{record.channel_id}`",
        "",
        f"- **what failed:** release {previous.release_id if previous else '?'} — {cause}",
        f"- **live now:** release {record.active.release_id} (generation "
        f"{record.active.generation}), sequence {record.sequence}, activation "
        f"`{record.activation_id}`",
        f"- **post-rollback checks:** {checks.result if checks else 'pending'}",
        f"- **operator:** {record.operator}; **reason:** {record.reason}",
        f"- **correlation id:** `{record.correlation_id}`",
        "",
        "## Evidence",
        f"- exchange `{record.active.exchange_id}`",
        *[f"- pack `{p}`" for p in record.active.runtime_pack_ids],
        f"- channel index v{record.index_version}",
        f"- record chain: previous record `{record.prev_record_sha256}`",
        "",
        "## To do",
        "- [ ] find the cause of the failure",
        "- [ ] decide: fix forward with a new release, or revoke the failed one",
    ]
    return "\n".join(lines)


def report_run(run: Runner, plan: ActivationPlan, record: ActivationRecord | None,
               checks: CheckRecord | None, outcome: str) -> None:
    """The run's verification report and its table of what changed."""
    run.publish(Artifact(
        "verification", plan.channel_id, f"{plan.kind} of {plan.channel_id}: {outcome}",
        markdown=verification_markdown(plan, record, checks, outcome)))
    run.publish(Artifact("changes", plan.channel_id, f"what changed in {plan.channel_id}",
                         table=change_rows(plan, record)))


def open_follow_up(run: Runner, record: ActivationRecord, checks: CheckRecord | None,
                   cause: str) -> str:
    """Every rollback (and downgrade) opens one: an incident summary, and the event
    `kristal.rollback.recorded` that a notification automation carries to the tracker."""
    markdown = incident_markdown(record, checks, cause)
    run.publish(Artifact("followup", record.channel_id,
                         f"rollback follow-up for {record.channel_id}", markdown=markdown))
    run.emit(
        events.ROLLBACK_RECORDED,
        channel_id=record.channel_id,
        payload={
            "channel_id": record.channel_id,
            "kind": record.kind,
            "sequence": record.sequence,
            "activation_id": record.activation_id,
            "release_id": record.active.release_id,
            "failed_release_id": record.previous.release_id if record.previous else None,
            "cause": cause,
            "correlation_id": record.correlation_id,
            "summary": markdown,
        },
    )
    return markdown


def publish_board(run: Runner, ctx: Context, channel_ids: list[str]) -> None:
    """The board's rows of these channels as they are now (the runner merges them into the
    board: one row per channel)."""
    rows = channel_rows(ctx, channel_ids)
    run.publish(Artifact("board", "channels", f"board rows of {len(rows)} channel(s)",
                         table=rows))
    if len(channel_ids) <= HISTORY_ARTIFACTS_UP_TO:
        for channel in channel_ids:
            run.publish(Artifact("history", channel, f"history of {channel}",
                                 render=lambda c=channel: history_markdown(ctx, c)))  # type: ignore[misc]


# A fleet's channels are shown by its grid; their histories are one `history` away.
HISTORY_ARTIFACTS_UP_TO = 5
HISTORY_SHOWN = 20


def _mark(value: str) -> str:
    return {"passed": "✓", "failed": "✗"}.get(value, value)


def history_markdown(ctx: Context, channel_id: str) -> str:
    """The channel's history page: its timeline and its last records, newest first."""
    rows = history_rows(ctx, channel_id, last=HISTORY_SHOWN)
    lines = [f"# History of `{channel_id}`", "",
             svg_markdown(timeline_svg(channel_id, rows, ctx.now()), f"timeline of {channel_id}"),
             "", "| time (UTC) | seq | status | kind | release | checks | bake | by | why |",
             "|---|---:|---|---|---:|:---:|---|---|---|"]
    for r in reversed(rows):
        status = f"**{r['status']}**" if r["status"] == "live" else r["status"]
        by = r["operator"] + (f" (approved by {r['approver']})" if r.get("approver") else "")
        why = f"cause: {r['cause']}" if r.get("cause") else r["reason"]
        lines.append(" | ".join([
            f"| {r['created_at'][:19].replace('T', ' ')}", str(r["sequence"]), status,
            r["kind"], str(r["release_id"]), _mark(r["checks"]), r["bake"],
            by.replace("|", "/"), why.replace("|", "/").replace("\n", " ")[:120]]) + " |")
    return "\n".join(lines)
