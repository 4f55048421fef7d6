"""The `fleet-activate` flow: one release to many channels in waves (canary first), halting at
the first failed wave and vetoing the release for the channels not yet reached; a skew report
says which channel runs which release. Rules and the veto choice: `kristal.fleet`.

The payload is staged once before the waves (content-addressed cache, one query index per
pack); each channel then runs the steps of `activate` (verify, stage = cache hit, switch,
check). The checks of a pack are measured once per fleet run, in a fresh process, by the first
channel to switch (the canary); every channel still opens its own pinned session and writes
its own check record, which names the measurement it reused (`fleet_post_activation_checks`).
Channels of a wave run in threads bounded by `max_parallel` (not a Prefect
concurrency limit: leases have a 60 s minimum, and a sync task is never interrupted by a
timeout, so the bound lives in this process).

Locks: the wave holds every one of its channels' limits (`tasks.runtime.lock_name`, the ones
`channel_lock` takes, same lease and timeout) for its duration, acquired in ONE call. Taking
`channel_lock` per channel in parallel threads was measured at 0.1-7 s per channel (the
server's acquisitions contend and back off), which alone broke the fleet's time budget.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Literal

from prefect import flow, get_client, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from pydantic import BaseModel, Field, field_validator

from flows.params import CHANNEL_PATTERN, Operator
from flows.rollback import who_of
from kristal import activation, fleet, pipeline, staging
from kristal import pointer as ptr
from kristal.activation import ActivationPlan, Who
from kristal.checkrunner import run_checks_isolated
from kristal.checks import CheckOutcome, CheckReport
from kristal.errors import CheckFailed, KristalError, PointerConflict
from kristal.models import ActivationRecord
from kristal.reader import open_pinned
from kristal.release_io import verify_release
from kristal.staging import index_path
from tasks.followup import open_follow_up
from tasks.runtime import (
    CHANNEL_LOCK_LEASE_S,
    CHANNEL_LOCK_TIMEOUT_S,
    RETRY_DELAYS,
    domain_context,
    lock_name,
    retry_on_transient,
)

ChannelResult = Literal[
    "activated", "already_live", "resumed", "rolled_back", "refused", "error", "vetoed"
]
FAILED_RESULTS = ("rolled_back", "refused", "error")


class FleetRequest(Operator):
    channel_ids: list[str] = Field(
        min_length=1, description="Every channel of the fleet, in rollout order."
    )
    release_id: int = Field(ge=1, description="The release, published in every channel's index.")
    canary_channel_ids: list[str] | None = Field(
        None, description="Activated first, alone; default the first channel ([] for none)."
    )
    wave_size: int = Field(10, ge=1, description="Channels per wave after the canary.")
    max_parallel: int = Field(4, ge=1, le=64, description="Channels activated at once.")
    revoke_vetoed: bool = Field(
        False,
        description="On a halt, also revoke the release (reason fleet-veto) in the vetoed "
        "channels' indexes; needs the channel-authority key (KRISTAL_KEY_DIR).",
    )

    @field_validator("channel_ids", "canary_channel_ids")
    @classmethod
    def _channels(cls, value: list[str] | None) -> list[str] | None:
        import re

        for channel_id in value or []:
            if not re.fullmatch(CHANNEL_PATTERN, channel_id):
                raise ValueError(f"{channel_id!r} is not <tenant>/<environment>/<region>")
        return value


class ChannelOutcome(BaseModel):
    channel_id: str
    wave: int
    result: ChannelResult
    sequence: int | None = None
    activation_id: str | None = None
    release_id: int | None = None
    error_code: str | None = None
    message: str = ""
    downloaded: int = 0


class FleetOutcome(BaseModel):
    release_id: int
    outcome: Literal["activated", "halted"]
    halted_at_wave: int | None = None
    waves: list[list[str]]
    channels: list[ChannelOutcome]
    vetoed: list[str] = []
    veto_revocations: dict[str, str] = {}
    payload_downloads: int = 0
    staging_note: str = ""
    skew: list[dict[str, Any]] = []
    artifact_keys: list[str] = []


def fleet_key(channel_ids: list[str], release_id: int) -> str:
    """Artifact key suffix of one fleet (a release over a channel set)."""
    digest = hashlib.sha256("\n".join(channel_ids).encode()).hexdigest()[:10]
    return f"r{release_id}-{digest}"


# --- checks measured once per pack per fleet run ----------------------------------------------
class _Measurements:
    """The fleet run's check reports by pack ID; one measurement per pack, the others wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pack_locks: dict[str, threading.Lock] = {}
        self._reports: dict[str, tuple[CheckReport, str]] = {}

    def report(self, pack_id: str, source: str, measure: Any) -> tuple[CheckReport, str | None]:
        """(report, None) if measured now by `source`, or (report, who measured it)."""
        with self._lock:
            pack_lock = self._pack_locks.setdefault(pack_id, threading.Lock())
        with pack_lock:
            if pack_id in self._reports:
                return self._reports[pack_id]
            report = measure()
            self._reports[pack_id] = (report, source)
            return report, None


_RUNS: dict[str, _Measurements] = {}


@task(name="post-activation-checks", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_on_transient, cache_policy=NO_CACHE)
def fleet_post_activation_checks(
    record: ActivationRecord, plan: ActivationPlan, run_key: str
) -> list[CheckReport]:
    """Step E for one channel of a fleet: its own pinned session, the fleet's measurement.

    Every channel opens its pinned reader (the pointer must still name this activation, and the
    pack's query index must be there); the pack's checks are measured once per fleet run, in a
    fresh process, by the first channel to get there (the canary), since every channel on this
    host reads the same index file of that pack ID. A reused measurement says so in an extra
    outcome, so each channel's check record names where its figures come from.
    """
    ctx = domain_context()
    measurements = _RUNS.setdefault(run_key, _Measurements())
    source = f"{record.channel_id} sequence {record.sequence}"
    reports = []
    with open_pinned(ctx, record.channel_id) as session:
        if session.record.activation_id != record.activation_id:
            raise PointerConflict(
                f"sequence {record.sequence} is no longer live (now {session.record.sequence}); "
                "its checks are not ours to run"
            )
        for pack in plan.release.packs:
            db = index_path(ctx, pack.pack_id)
            report, measured_by = measurements.report(
                pack.pack_id, source, lambda db=db, pack=pack: run_checks_isolated(
                    db, pack.expectations))
            if measured_by is not None:
                report = report.model_copy(update={"outcomes": [*report.outcomes, CheckOutcome(
                    name="measurement", passed=True, expected="this fleet run's measurement",
                    measured=f"measured by {measured_by} on the same index of {pack.pack_id}")]})
            reports.append(report)
    return reports


# --- tasks ------------------------------------------------------------------------------------
@task(name="stage-fleet-release", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_on_transient, cache_policy=NO_CACHE)
def stage_fleet_release(channel_id: str, release_id: int) -> dict[str, Any]:
    """Verify the release in one channel and stage it: the fleet's one download."""
    ctx = domain_context()
    staged = staging.stage_release(ctx, verify_release(ctx, channel_id, release_id=release_id))
    return {"files": len(staged.files), "downloaded": staged.downloaded,
            "bytes": staged.bytes_total, "indexes": len(staged.pack_dbs)}


@task(name="activate-channel", cache_policy=NO_CACHE, task_run_name="activate-{channel_id}")
def activate_channel(
    channel_id: str, release_id: int, wave: int, who: Who, run_key: str
) -> ChannelOutcome:
    """The `activate` flow's steps for one channel; the caller holds its channel lock."""
    ctx = domain_context()
    live = ptr.read_pointer(ctx.store, channel_id).record
    force = False
    if live is not None and live.active.release_id == release_id:
        checks = ptr.read_checks(ctx.store, channel_id, live.sequence)
        if checks is not None and checks.result == "passed":
            return ChannelOutcome(
                channel_id=channel_id, wave=wave, result="already_live",
                sequence=live.sequence, activation_id=live.activation_id,
                release_id=release_id, message="already live and checked",
            )
        force = True  # live with checks pending or failed: resume and converge (§6 inv. 5)
    # One task per channel, its steps plain calls: per-step task runs cost ~50 ms each, which a
    # fleet pays per channel (the activate flow keeps them, for its UI and retries).
    plan = activation.plan_activation(ctx, channel_id, release_id=release_id, force=force)  # A,B
    downloaded = 0
    if plan.failed_checks is None:
        downloaded = staging.stage_release(ctx, plan.release).downloaded  # C: a cache hit
    try:
        done = pipeline.switch_and_check(  # D, E
            ctx, plan, who,
            measure=lambda record, plan: fleet_post_activation_checks(record, plan, run_key))
    except CheckFailed:
        live = ptr.read_pointer(ctx.store, channel_id).record
        if live is not None and live.kind == "auto_rollback":
            open_follow_up(live, ptr.read_checks(ctx.store, channel_id, live.sequence),
                           who.reason)
        raise
    record = done.record
    assert record is not None
    return ChannelOutcome(
        channel_id=channel_id, wave=wave, result="resumed" if plan.resume else "activated",
        sequence=record.sequence, activation_id=record.activation_id,
        release_id=record.active.release_id,
        message=f"release {record.active.release_id} is live (sequence {record.sequence})",
        downloaded=downloaded,
    )


@task(name="skew-report", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_on_transient, cache_policy=NO_CACHE)
def skew_report_task(channel_ids: list[str]) -> list[dict[str, Any]]:
    return fleet.skew_report(domain_context(), channel_ids)


@task(name="revoke-vetoed", cache_policy=NO_CACHE)
def revoke_vetoed_task(channel_ids: list[str], release_id: int) -> dict[str, str]:
    from kristal.keys import load_role_key

    ctx = domain_context()
    authority = load_role_key(ctx.settings.key_dir, "channel-authority")
    return fleet.revoke_vetoed(ctx, authority, channel_ids, release_id)


@contextmanager
def wave_lock(channels: list[str]) -> Iterator[None]:
    """Hold the channel limit of every channel of a wave (upserted first; strict), one call."""
    names = [lock_name(c) for c in channels]
    with get_client(sync_client=True) as client:
        for name in names:
            client.upsert_global_concurrency_limit_by_name(name, 1)
    with concurrency(names, occupy=1, timeout_seconds=CHANNEL_LOCK_TIMEOUT_S, strict=True,
                     lease_duration=CHANNEL_LOCK_LEASE_S):
        yield


# --- the waves --------------------------------------------------------------------------------
def _failed(channel_id: str, wave: int, exc: BaseException) -> ChannelOutcome:
    if isinstance(exc, CheckFailed):
        return ChannelOutcome(channel_id=channel_id, wave=wave, result="rolled_back",
                              error_code=exc.code, message=exc.message)
    if isinstance(exc, KristalError):
        return ChannelOutcome(channel_id=channel_id, wave=wave, result="refused",
                              error_code=exc.code, message=exc.message)
    return ChannelOutcome(channel_id=channel_id, wave=wave, result="error",
                          message=f"{type(exc).__name__}: {exc}"[:500])


def run_wave(
    channels: list[str], wave: int, release_id: int, who: Who, max_parallel: int, run_key: str
) -> list[ChannelOutcome]:
    """Activate a wave's channels in parallel; after a failure, channels not started are vetoed.

    Each thread runs the task in a copy of the flow's context (as Prefect's own thread pool
    task runner does), so every channel is a task run of this flow run.
    """
    outcomes: dict[str, ChannelOutcome] = {}
    with wave_lock(channels), \
            ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(channels)))) as pool:
        pending: dict[Future[ChannelOutcome], str] = {
            pool.submit(contextvars.copy_context().run, activate_channel, c, release_id, wave,
                        who, run_key): c
            for c in channels
        }
        halted = False
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                channel_id = pending.pop(future)
                if future.cancelled():
                    continue
                exc = future.exception()
                outcomes[channel_id] = (
                    future.result() if exc is None else _failed(channel_id, wave, exc)
                )
                if outcomes[channel_id].result in FAILED_RESULTS and not halted:
                    halted = True
                    for other, name in list(pending.items()):
                        if other.cancel():
                            pending.pop(other)
                            outcomes[name] = _vetoed(name, wave, channel_id)
    return [outcomes[c] for c in channels]


def _vetoed(channel_id: str, wave: int, failed_channel: str) -> ChannelOutcome:
    return ChannelOutcome(channel_id=channel_id, wave=wave, result="vetoed",
                          message=f"not attempted: the fleet halted after {failed_channel} failed")


def waves_markdown(result: FleetOutcome) -> str:
    lines = [
        f"# fleet-activate release {result.release_id}: {result.outcome}",
        "",
        f"- channels: {sum(len(w) for w in result.waves)} in {len(result.waves)} waves",
        f"- payload downloads: {result.payload_downloads}",
    ]
    if result.staging_note:
        lines.append(f"- staging: {result.staging_note}")
    if result.halted_at_wave is not None:
        lines.append(f"- **halted at wave {result.halted_at_wave}**; vetoed: "
                     f"{', '.join(result.vetoed) or 'none'}")
    by_channel = {o.channel_id: o for o in result.channels}
    for number, wave in enumerate(result.waves, start=1):
        lines += ["", f"## Wave {number}" + (" (canary)" if number == 1 else ""), "",
                  "| channel | result | sequence | message |", "|---|---|---|---|"]
        for channel_id in wave:
            o = by_channel[channel_id]
            message = (f"{o.error_code}: " if o.error_code else "") + o.message
            lines.append(f"| {channel_id} | {o.result} | {o.sequence or ''} | "
                         f"{message.replace('|', '/')[:200]} |")
    if result.veto_revocations:
        lines += ["", "## Veto revocations", ""]
        lines += [f"- {c}: {r}" for c, r in result.veto_revocations.items()]
    return "\n".join(lines)


def _waves(
    waves: list[list[str]], request: FleetRequest, who: Who, run_key: str, downloads: int
) -> tuple[list[ChannelOutcome], int | None, int]:
    """Wave after wave until one fails; the channels of later waves are vetoed."""
    outcomes: list[ChannelOutcome] = []
    halted_at: int | None = None
    for number, channels in enumerate(waves, start=1):
        if halted_at is not None:
            outcomes += [_vetoed(c, number, f"wave {halted_at}") for c in channels]
            continue
        done = run_wave(channels, number, request.release_id, who, request.max_parallel,
                        run_key)
        outcomes += done
        downloads += sum(o.downloaded for o in done)
        if any(o.result in FAILED_RESULTS for o in done):
            halted_at = number
            print(f"wave {number} failed: halting, vetoing release {request.release_id} "
                  "for the channels not reached")
    return outcomes, halted_at, downloads


@flow(name="fleet-activate", log_prints=True)
def fleet_activate(request: FleetRequest) -> FleetOutcome:
    """Activate one release across many channels in waves, canary first; halt and veto on the
    first failed wave; report which channel runs which release."""
    who = who_of(request.operator, request.reason, request.correlation_id)
    waves = fleet.plan_waves(request.channel_ids, request.canary_channel_ids, request.wave_size)
    downloads, note = 0, ""
    try:
        staged = stage_fleet_release(waves[0][0], request.release_id)
        downloads = staged["downloaded"]
        note = (f"{staged['files']} files ({staged['bytes']} bytes) staged from {waves[0][0]}, "
                f"{staged['downloaded']} downloaded")
    except KristalError as exc:  # the first channel's own activation will refuse with the code
        note = f"could not stage from {waves[0][0]}: {exc.line()}"

    run_key = who.flow_run_id or who.correlation_id
    try:
        outcomes, halted_at, downloads = _waves(waves, request, who, run_key, downloads)
    finally:
        _RUNS.pop(run_key, None)
    vetoed = [o.channel_id for o in outcomes if o.result == "vetoed"]
    revocations = (revoke_vetoed_task(vetoed, request.release_id)
                   if vetoed and request.revoke_vetoed else {})
    suffix = fleet_key(request.channel_ids, request.release_id)
    result = FleetOutcome(
        release_id=request.release_id,
        outcome="halted" if halted_at is not None else "activated",
        halted_at_wave=halted_at, waves=waves, channels=outcomes, vetoed=vetoed,
        veto_revocations=revocations, payload_downloads=downloads, staging_note=note,
        skew=skew_report_task(request.channel_ids),
        artifact_keys=[f"fleet-waves-{suffix}", f"fleet-skew-{suffix}"],
    )
    create_markdown_artifact(key=result.artifact_keys[0], markdown=waves_markdown(result),
                             description=f"fleet activation of release {request.release_id}")
    create_table_artifact(key=result.artifact_keys[1],
                          table=[{k: str(v) for k, v in row.items()} for row in result.skew],
                          description="which channel runs which release")
    if halted_at is not None:
        from prefect.events import emit_event

        emit_event(event="kristal.fleet.halted",
                   resource={"prefect.resource.id": f"kristal.fleet.{suffix}"},
                   payload={"release_id": request.release_id, "halted_at_wave": halted_at,
                            "vetoed": vetoed})
    return result
