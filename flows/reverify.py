"""The nightly `reverify` flow (DESIGN §6 invariants 4-5, §8).

For every channel with an index (or those asked for) it runs the check groups of
`kristal.reverify` as tasks and leaves one table artifact per channel
(`reverify-<tenant>-<env>-<region>`: check, ok, detail, code). A failing channel emits
`kristal.reverify.failed` (resource `kristal.channel.<tenant>.<env>.<region>`, payload
`channel_id`, `activation_id`, `reasons`): an alert, not a rollback trigger. It rolls back only
where the channel's policy says so: `reverify_rollback: true` in its trust-file entry (local
configuration, like every policy), or the channel listed in the request's
`rollback_on_failure`. The rollback goes to `last-known-good` under the channel's concurrency
limit, conditional on the failing activation still being live (invariant 7). Then the run fails with
a coded error: `check_failed` when post-activation checks failed or stayed missing past the
timeout, else the first failure's own code.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flows.params import CHANNEL_PATTERN
from flows.prefect_fixes import no_heartbeat_join
from flows.rollback import rollback_steps, who_of
from kristal.errors import KristalError
from kristal.operations.reverify import (
    CHECKS_RECORD,
    DEFAULT_CHECKS_TIMEOUT_S,
    LIVE_RELEASE,
    LOCAL_INDEX,
    OBJECTS,
    POINTER_CHAIN,
    ChannelReport,
    CheckRow,
    build_report,
)
from tasks import reverify as t
from tasks.runtime import channel_lock

no_heartbeat_join()  # before any run of this module's flows: see flows.prefect_fixes

EVENT_FAILED = "kristal.reverify.failed"
CHECKS_TIMEOUT_ENV = "KRISTAL_CHECKS_TIMEOUT_S"


def default_checks_timeout() -> float:
    value = os.environ.get(CHECKS_TIMEOUT_ENV, "").strip()
    try:
        return float(value) if value else DEFAULT_CHECKS_TIMEOUT_S
    except ValueError:
        return DEFAULT_CHECKS_TIMEOUT_S


class ReverifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel_ids: list[str] | None = Field(
        None, description="Channels to re-verify (<tenant>/<environment>/<region>); empty: all."
    )
    checks_timeout_s: float | None = Field(
        None,
        ge=0,
        description=(
            "A live record whose post-activation checks are missing for longer than this is "
            f"treated as failed; empty: ${CHECKS_TIMEOUT_ENV}, else "
            f"{DEFAULT_CHECKS_TIMEOUT_S:.0f}."
        ),
    )
    rollback_on_failure: list[str] = Field(
        [],
        description=(
            "Channels whose policy is to roll back (to last-known-good) when re-verification "
            "fails; every other channel is only alerted (kristal.reverify.failed)."
        ),
    )
    operator: str = Field("reverify", min_length=1, description="Recorded on a rollback.")

    @model_validator(mode="after")
    def _resolve(self) -> ReverifyRequest:
        pattern = re.compile(CHANNEL_PATTERN)
        for channel in [*(self.channel_ids or []), *self.rollback_on_failure]:
            if not pattern.fullmatch(channel):
                raise ValueError(f"{channel!r} is not <tenant>/<environment>/<region>")
        if self.checks_timeout_s is None:
            self.checks_timeout_s = default_checks_timeout()
        return self


class ReverifyResult(BaseModel):
    ok: bool
    channels: list[ChannelReport]
    failed_channels: list[str] = []
    rollbacks: dict[str, str] = {}
    message: str = ""


def rollback_policy(channel_id: str) -> bool:
    """The channel's own policy (trust file) on rolling back after a failed re-verification."""
    from tasks.runtime import domain_context

    try:
        return domain_context().trust(channel_id).reverify_rollback
    except KristalError:
        return False


def artifact_key(channel_id: str) -> str:
    return "reverify-" + channel_id.replace("/", "-")


def resource_id(channel_id: str) -> str:
    tenant, environment, region = channel_id.split("/")
    return f"kristal.channel.{tenant}.{environment}.{region}"


def _group(name: str, call: Any, *args: Any) -> list[CheckRow]:
    """One check-group task; an error that outlived its retries becomes a failed row."""
    try:
        return list(call(*args))
    except KristalError as exc:
        return [CheckRow(name=name, ok=False, detail=exc.message, code=exc.code)]


def reverify_one(channel_id: str, checks_timeout_s: float) -> ChannelReport:
    try:
        chain = t.pointer_chain(channel_id)
    except KristalError as exc:
        row = CheckRow(name=POINTER_CHAIN, ok=False, detail=exc.message, code=exc.code)
        return build_report(channel_id, None, [row])
    rows = list(chain.rows)
    live = chain.live
    if live is not None:
        rows += _group(LIVE_RELEASE, t.trust, live)
        rows += _group(OBJECTS, t.objects, live)
        rows += _group(LOCAL_INDEX, t.local_index, live)
        rows += _group(CHECKS_RECORD, t.checks_record, live, checks_timeout_s)
    return build_report(channel_id, live, rows)


def publish_report(report: ChannelReport) -> None:
    create_table_artifact(
        key=artifact_key(report.channel_id),
        table=[
            {"check": r.name, "ok": r.ok, "detail": r.detail, "code": r.code or ""}
            for r in report.rows
        ],
        description=(
            f"re-verification of {report.channel_id} (sequence {report.sequence}, release "
            f"{report.release_id}): {'ok' if report.ok else 'FAILED'}"
        ),
    )


def alert(report: ChannelReport) -> None:
    emit_event(
        event=EVENT_FAILED,
        resource={"prefect.resource.id": resource_id(report.channel_id)},
        payload={
            "channel_id": report.channel_id,
            "activation_id": report.activation_id,
            "reasons": report.reasons(),
        },
    )


def roll_back(report: ChannelReport, operator: str) -> str:
    if report.activation_id is None:
        return "nothing live: nothing to roll back"
    who = who_of(operator, f"reverify failed: {'; '.join(report.reasons())[:500]}", None)
    try:
        with channel_lock(report.channel_id):
            outcome = rollback_steps(
                report.channel_id, "last-known-good", report.activation_id, "rollback", who
            )
    except KristalError as exc:
        return f"no rollback: {exc.line()}"
    return outcome.message


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


@flow(name="reverify", log_prints=True)
def reverify(request: ReverifyRequest | None = None) -> ReverifyResult:
    request = request or ReverifyRequest()
    timeout = request.checks_timeout_s
    assert timeout is not None
    channels = request.channel_ids or t.list_channels()
    reports: list[ChannelReport] = []
    rollbacks: dict[str, str] = {}
    for channel_id in channels:
        report = reverify_one(channel_id, timeout)
        reports.append(report)
        publish_report(report)
        if report.ok:
            print(f"{channel_id}: ok ({len(report.rows)} checks)")
            continue
        print(f"{channel_id}: FAILED: {'; '.join(report.reasons())}")
        alert(report)
        if channel_id in request.rollback_on_failure or rollback_policy(channel_id):
            rollbacks[channel_id] = roll_back(report, request.operator)
            print(f"{channel_id}: {rollbacks[channel_id]}")
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
    create_markdown_artifact(
        key="reverify-summary", markdown=summary_markdown(result), description=result.message
    )
    if failed:
        error = failed[0].error()
        if len(failed) > 1:
            others = "; ".join(f"{r.channel_id}: {', '.join(r.reasons())}" for r in failed[1:])
            error = type(error)(f"{error.message}; also {others}")
        if rollbacks:
            error = type(error)(
                f"{error.message}; rollbacks: "
                + "; ".join(f"{c}: {m}" for c, m in rollbacks.items())
            )
        raise error
    return result
