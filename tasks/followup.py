"""The follow-up every rollback opens: an incident summary artifact and the event
`kristal.rollback.recorded`, which a notification automation carries to the team's tracker.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from kristal.formats.channel_docs import ActivationRecord, CheckRecord


def channel_resource_id(channel_id: str) -> str:
    tenant, environment, region = channel_id.split("/")
    return f"kristal.channel.{tenant}.{environment}.{region}"


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


@task(name="open-follow-up", cache_policy=NO_CACHE)
def open_follow_up(record: ActivationRecord, checks: CheckRecord | None, cause: str) -> str:
    markdown = incident_markdown(record, checks, cause)
    create_markdown_artifact(
        key="followup-" + record.channel_id.replace("/", "-"),
        markdown=markdown,
        description=f"rollback follow-up for {record.channel_id}",
    )
    emit_event(
        event="kristal.rollback.recorded",
        resource={"prefect.resource.id": channel_resource_id(record.channel_id),
                  "prefect.resource.name": record.channel_id},
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
