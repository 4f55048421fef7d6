"""Prefect artifacts every run leaves: a markdown verification report and a table of changes."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from kristal.formats.channel_docs import ActivationRecord, CheckRecord
from kristal.operations.plan import ActivationPlan


def _artifact_key(channel_id: str, what: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return f"{what}-" + channel_id.replace("/", "-")


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
            f"| {o['name']} | {o['expected']} | {o['measured']} | {o['passed']} |"
            for o in checks.figures.get("outcomes", [])
        ]
        if checks.previous_figures:
            prev = checks.previous_figures
            lines += ["", "| figure | this release | previous release |", "|---|---|---|"]
            for name in ("row_count", "latency_p95_ms", "peak_rss_mb"):
                lines.append(f"| {name} | {checks.figures.get(name)} | {prev.get(name)} |")
    return "\n".join(lines)


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
                "changed": str(before != after),
            }
        )
    return rows


@task(name="report-run", cache_policy=NO_CACHE)
def report_run(
    plan: ActivationPlan, record: ActivationRecord | None, checks: CheckRecord | None, outcome: str
) -> None:
    create_markdown_artifact(
        key=_artifact_key(plan.channel_id, "verification"),
        markdown=verification_markdown(plan, record, checks, outcome),
        description=f"{plan.kind} of {plan.channel_id}: {outcome}",
    )
    create_table_artifact(
        key=_artifact_key(plan.channel_id, "changes"),
        table=change_rows(plan, record),
        description=f"what changed in {plan.channel_id}",
    )
