"""The `fleet-activate` flow: one release to many channels in waves (canary first), halting at
the first failed wave and vetoing the release for the channels not yet reached; a skew report
says which channel runs which release. Rules and the veto choice: `kristal.fleet`.

The payload is staged once before the waves (content-addressed cache, one query index per
pack). Each wave is one task run (`activate-wave-N`, retried on storage hiccups); inside it each
channel runs the steps of `activate` as plain calls (verify against its own signed index,
switch, check) in threads bounded by `max_parallel`. A task run per channel was measured at
~40 ms of wall time plus as much Prefect-server CPU, about a channel's own cost, so it nearly
doubled a 50-channel fleet; the per-channel results are in the waves artifact instead.

What every channel would otherwise repeat is shared through the fleet run's `_FleetRun`: the
content-addressed manifests and reports are fetched once (each channel's verifier still checks
them against its own index and trust), a channel whose verified inventory is the one staged
moments ago is not re-hashed, and the checks of a pack are measured once, in a fresh process,
by the first channel to switch (the canary); every channel still opens its own pinned readers
and writes its own check record, which names the measurement it reused.

Locks: a wave holds every one of its channels' limits (`tasks.runtime.lock_name`, the ones
`channel_lock` takes) for its duration, as one lease (`tasks.leases`) held by a `WaveLock`
thread. Taking `channel_lock` per channel in parallel threads was measured at 0.1-7 s per
channel (the server's acquisitions contend and back off), and a wave's lease taken in the
flow's thread at ~1 s per wave under load. So the limits are created once for the whole fleet
(while the canary runs), the next wave's lease is acquired while the current wave runs, and a
finished wave's is released in the background. `max_parallel` is a bound in this process, not
a Prefect limit (leases have a 60 s minimum; a sync task is never interrupted by a timeout).
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, field_validator

from flows.params import CHANNEL_PATTERN, Operator
from flows.prefect_fixes import no_heartbeat_join
from flows.rollback import who_of
from kristal.channel import pointer as ptr
from kristal.context import Context
from kristal.errors import CheckFailed, KristalError, StorageUnavailable
from kristal.formats.channel_docs import ActivationRecord
from kristal.once_per_key import OncePerKey
from kristal.operations import fleet, pipeline
from kristal.operations import plan as activation
from kristal.operations.plan import ActivationPlan, Who
from kristal.runtime import staging
from kristal.runtime.checkrunner import run_checks_isolated
from kristal.runtime.checks import CheckOutcome, CheckReport
from kristal.runtime.session import PinnedSession
from kristal.runtime.sqlite_index import PinnedReader
from kristal.runtime.staging import StagedRelease, index_path
from kristal.verify.fetch import DocumentMemo, verify_release
from tasks.followup import open_follow_up
from tasks.leases import Lease, current_holder
from tasks.runtime import (
    CHANNEL_LOCK_TIMEOUT_S,
    RETRY_DELAYS,
    domain_context,
    ensure_channel_limits,
    get_run_logger_safe,
    hold_channel_limits,
    lock_name,
    retry_on_transient,
)

no_heartbeat_join()  # before any run of this module's flows: see flows.prefect_fixes

ChannelResult = Literal[
    "activated", "already_live", "resumed", "rolled_back", "refused", "error", "vetoed",
    "planned",
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
    dry_run: bool = Field(
        False,
        description="Verify the release in every channel (against its own index) and stage "
        "it once; report what each channel would do. Nothing is switched.",
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
    outcome: Literal["activated", "halted", "planned"]
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


# --- what the channels of one fleet run share ------------------------------------------------
class _Measurements:
    """The fleet run's check reports by pack ID; one measurement per pack, the others wait."""

    def __init__(self) -> None:
        self._reports: OncePerKey[str, tuple[CheckReport, str]] = OncePerKey()

    def report(self, pack_id: str, source: str, measure: Any) -> tuple[CheckReport, str | None]:
        """(report, None) if measured now by `source`, or (report, who measured it)."""
        (report, measured_by), now = self._reports.get(pack_id, lambda: (measure(), source))
        return report, None if now else measured_by


@dataclass
class _FleetRun:
    measurements: _Measurements = field(default_factory=_Measurements)
    documents: DocumentMemo = field(default_factory=DocumentMemo)
    staged: StagedRelease | None = None
    # Final outcomes by channel (a retried wave skips these) and the last storage hiccup of
    # each channel still to finish; `locks` by wave number, for the wave task to look at.
    outcomes: dict[str, ChannelOutcome] = field(default_factory=dict)
    transient: dict[str, StorageUnavailable] = field(default_factory=dict)
    locks: dict[int, WaveLock] = field(default_factory=dict)


_RUNS: dict[str, _FleetRun] = {}


def _fleet_run(run_key: str) -> _FleetRun:
    return _RUNS.setdefault(run_key, _FleetRun())


def fleet_measure(
    ctx: Context, run: _FleetRun, record: ActivationRecord, plan: ActivationPlan
) -> list[CheckReport]:
    """Step E for one channel of a fleet: its own pinned readers, the fleet's measurement.

    Every channel opens read-only readers on its pack indexes (they must be there and be
    query indexes), pinned to the record it switched moments ago: its checks are recorded
    under that record's sequence, and a failed check rolls back only while that record is live
    (`expected_activation_id`), so the pointer is not read again. The pack's checks are
    measured once per fleet run, in a fresh process, by the first channel to get there (the
    canary), since every channel on this host reads the same index file of that pack ID. A
    reused measurement says so in an extra outcome, so each channel's check record names where
    its figures come from.
    """
    source = f"{record.channel_id} sequence {record.sequence}"
    reports = []
    readers = {p.pack_id: PinnedReader(index_path(ctx, p.pack_id)) for p in plan.release.packs}
    with PinnedSession(record, readers):
        for pack in plan.release.packs:
            db = index_path(ctx, pack.pack_id)
            report, measured_by = run.measurements.report(
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
def stage_fleet_release(channel_id: str, release_id: int, run_key: str) -> dict[str, Any]:
    """Verify the release in one channel and stage it: the fleet's one download."""
    ctx = domain_context()
    run = _fleet_run(run_key)
    release = verify_release(ctx, channel_id, release_id=release_id, memo=run.documents)
    staged = run.staged = staging.stage_release(ctx, release)
    return {"files": len(staged.files), "downloaded": staged.downloaded,
            "bytes": staged.bytes_total, "indexes": len(staged.pack_dbs)}


# --- one channel, as plain calls inside its wave's task -------------------------------------
def activate_channel(
    ctx: Context, run: _FleetRun, channel_id: str, release_id: int, wave: int, who: Who
) -> ChannelOutcome:
    """The `activate` flow's steps for one channel, as plain calls; the caller holds its lock.

    Started again after a storage hiccup, it starts over from the pointer: after a switch that
    landed it resumes at the checks, as a forced re-run of `activate` would.
    """
    state, done, force = _live_and_checked(ctx, channel_id, release_id, wave)
    if done is not None:
        return done
    plan = activation.plan_activation(ctx, channel_id, release_id=release_id, force=force,
                                      memo=run.documents, state=state)  # A, B
    downloaded = 0
    if plan.failed_checks is None and not (
            run.staged is not None and staging.staged_by(run.staged, plan.release, ctx)):
        downloaded = staging.stage_release(ctx, plan.release).downloaded  # C: not what we staged
    try:
        done = pipeline.switch_and_check(  # D, E
            ctx, plan, who, measure=lambda record, plan: fleet_measure(ctx, run, record, plan))
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


def _live_and_checked(ctx: Context, channel_id: str, release_id: int,
                      wave: int) -> tuple[ptr.PointerState, ChannelOutcome | None, bool]:
    """(pointer, an outcome if `release_id` is already live and checked, force to resume)."""
    state = ptr.read_pointer(ctx.store, channel_id)
    live = state.record
    if live is None or live.active.release_id != release_id:
        return state, None, False
    checks = ptr.read_checks(ctx.store, channel_id, live.sequence)
    if checks is not None and checks.result == "passed":
        return state, ChannelOutcome(
            channel_id=channel_id, wave=wave, result="already_live", sequence=live.sequence,
            activation_id=live.activation_id, release_id=release_id,
            message="already live and checked"), False
    return state, None, True  # live with checks pending or failed: resume (§6 inv. 5)


def plan_channel(
    ctx: Context, run: _FleetRun, channel_id: str, release_id: int, wave: int
) -> ChannelOutcome:
    """A dry run of `activate_channel`: steps A and B, and what step D would do."""
    state, done, force = _live_and_checked(ctx, channel_id, release_id, wave)
    if done is not None:
        return done
    plan = activation.plan_activation(ctx, channel_id, release_id=release_id, force=force,
                                      memo=run.documents, state=state)
    live = state.record
    if plan.failed_checks is not None:
        would = "finish the rollback of its failed checks"
    elif plan.resume:
        would = "resume its checks"
    else:
        would = (f"activate release {release_id} (live now: "
                 f"{live.active.release_id if live else 'nothing'})")
    staged = run.staged is not None and staging.staged_by(run.staged, plan.release, ctx)
    return ChannelOutcome(
        channel_id=channel_id, wave=wave, result="planned", release_id=release_id,
        sequence=live.sequence if live else None,
        activation_id=live.activation_id if live else None,
        message=f"would {would}" + (
            "" if staged else "; its index names other content than the first channel's: a "
            "real run stages that on its own"),
    )


@task(name="skew-report", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_on_transient, cache_policy=NO_CACHE)
def skew_report_task(
    channel_ids: list[str], known_checks: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    return fleet.skew_report(domain_context(), channel_ids, known_checks)


@task(name="revoke-vetoed", cache_policy=NO_CACHE)
def revoke_vetoed_task(channel_ids: list[str], release_id: int) -> dict[str, str]:
    from kristal.trust.keys import load_role_key

    ctx = domain_context()
    authority = load_role_key(ctx.settings.key_dir, "channel-authority")
    return fleet.revoke_vetoed(ctx, authority, channel_ids, release_id)


class WaveLock:
    """One wave's channel limits, held by a thread of its own from `start()` to `release()`.

    Acquiring in the background lets the next wave's acquisition overlap the running wave, and
    releasing does not hold up the next wave. A lock lost while held (its lease could not be
    renewed) shows in `held`: channels not yet started are then not started.
    """

    def __init__(self, channels: list[str]) -> None:
        self.channels = list(channels)
        self.names = [lock_name(c) for c in channels]
        self._acquired = threading.Event()
        self._release = threading.Event()
        self._error: BaseException | None = None
        self._lease: Lease | None = None
        self._holder = current_holder()  # the flow run, taken in the flow's thread
        # In a copy of the flow's context: its settings, and its API client (no new one).
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._hold,), daemon=True,
                                        name=f"kristal-wave-lock-{self.names[0]}")

    def start(self) -> WaveLock:
        self._thread.start()
        return self

    def _hold(self) -> None:
        try:
            with hold_channel_limits(self.channels, wait_s=CHANNEL_LOCK_TIMEOUT_S,
                                     holder=self._holder) as lease:
                self._lease = lease
                self._acquired.set()
                self._release.wait()
        except BaseException as exc:  # handed to the flow thread waiting in wait()
            self._error = exc
        finally:
            self._acquired.set()

    def wait(self) -> None:
        """Until the locks are held; raises what acquiring them raised."""
        self._acquired.wait()
        if self._error is not None:
            raise self._error

    @property
    def held(self) -> bool:
        return (self._lease is not None and self._lease.held
                and not self._release.is_set())

    def release(self) -> None:
        self._release.set()

    def join(self, timeout_s: float = 30.0) -> None:
        self._release.set()
        self._thread.join(timeout_s)


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


@task(name="activate-wave", cache_policy=NO_CACHE, task_run_name="activate-wave-{wave}",
      retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_on_transient)
def activate_wave(
    channels: list[str], wave: int, release_id: int, who: Who, max_parallel: int, run_key: str
) -> list[ChannelOutcome]:
    """Bring one wave's channels live, `max_parallel` at a time, under the wave's held locks.

    After a channel fails (refused, rolled back), channels not started are vetoed. A channel
    that hit only a storage hiccup is not final: if no channel failed otherwise, the task
    raises `StorageUnavailable` and its retry runs just those channels again (final outcomes
    are kept in the fleet run).
    """
    ctx = domain_context()
    run = _fleet_run(run_key)
    lock = run.locks[wave]

    def one(channel_id: str) -> ChannelOutcome:
        if not lock.held:
            raise RuntimeError("the wave's channel locks were lost (lease not renewed); "
                               f"{channel_id} was not started")
        return activate_channel(ctx, run, channel_id, release_id, wave, who)

    todo = [c for c in channels if c not in run.outcomes]
    halted = False
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(todo) or 1))) as pool:
        pending: dict[Future[ChannelOutcome], str] = {
            pool.submit(contextvars.copy_context().run, one, c): c for c in todo
        }
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                channel_id = pending.pop(future)
                exc = future.exception()
                if isinstance(exc, StorageUnavailable):
                    run.transient[channel_id] = exc
                    continue
                run.transient.pop(channel_id, None)
                outcome = future.result() if exc is None else _failed(channel_id, wave, exc)
                run.outcomes[channel_id] = outcome
                if outcome.result in FAILED_RESULTS and not halted:
                    halted = True
                    for other, name in list(pending.items()):
                        if other.cancel():
                            pending.pop(other)
                            run.outcomes[name] = _vetoed(name, wave, channel_id)
    hiccups = [c for c in channels if c in run.transient]
    if hiccups and not halted:
        raise StorageUnavailable(
            f"wave {wave}: {len(hiccups)} channel(s) hit a storage error and will be tried "
            f"again ({hiccups[0]}: {run.transient[hiccups[0]].message})")
    return [run.outcomes.get(c) or _failed(c, wave, run.transient[c]) for c in channels]


def run_wave(
    channels: list[str], wave: int, release_id: int, who: Who, max_parallel: int, run_key: str,
    lock: WaveLock,
) -> list[ChannelOutcome]:
    """The wave as one task run (its channels' steps are plain calls in threads: a task run
    per channel was measured at ~40 ms of wall time and as much Prefect-server CPU, about as
    much as a channel's own work, so it nearly doubled a 50-channel fleet)."""
    run = _fleet_run(run_key)
    run.locks[wave] = lock
    try:
        return activate_wave(channels, wave, release_id, who, max_parallel, run_key)
    except StorageUnavailable:  # retries exhausted: the channels still failing are refused
        return [run.outcomes.get(c) or _failed(c, wave, run.transient[c]) for c in channels]
    finally:
        run.locks.pop(wave, None)


def _vetoed(channel_id: str, wave: int, failed_channel: str) -> ChannelOutcome:
    return ChannelOutcome(channel_id=channel_id, wave=wave, result="vetoed",
                          message=f"not attempted: the fleet halted after {failed_channel} failed")


def waves_markdown(result: FleetOutcome) -> str:
    lines = [
        f"# fleet-activate release {result.release_id}: {result.outcome}"
        + (" (dry run: nothing switched)" if result.outcome == "planned" else ""),
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


class _Progress:
    """The fleet's progress artifact in the UI: the share of channels done, after each wave.

    Written by a thread of its own, in order, so the waves never wait on the artifact API
    (in line, its seven calls added 0.2-0.4 s to a 50-channel fleet); `close()` waits for the
    last write. A failed write is logged, never a reason to fail the fleet."""

    def __init__(self, key: str, total: int, release_id: int) -> None:
        self.total = total
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kristal-progress")
        self._writes: list[Future[Any]] = []
        self._id = self._submit(create_progress_artifact, 0.0, key=key,
                                description=f"fleet-activate release {release_id}: "
                                f"0/{total} channels")

    def _submit(self, fn: Any, *args: Any, **kwargs: Any) -> Future[Any]:
        write = self._pool.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        self._writes.append(write)
        return write

    def update(self, done: int, description: str) -> None:
        percent = round(100.0 * done / self.total, 1)
        self._submit(lambda: update_progress_artifact(self._id.result(), percent,
                                                      description=description))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        failed = next((f for f in self._writes if f.exception() is not None), None)
        if failed is not None:
            get_run_logger_safe().warning(f"fleet progress artifact not written: "
                                          f"{failed.exception()}")


def _waves(
    waves: list[list[str]], request: FleetRequest, who: Who, run_key: str, downloads: int,
    progress: _Progress,
) -> tuple[list[ChannelOutcome], int | None, int]:
    """Wave after wave until one fails; the channels of later waves are vetoed.

    Wave k+1's locks are acquired while wave k runs; wave k's are released as it ends. The
    limits of every channel after the canary are created while the canary runs."""
    rest = [c for wave in waves[1:] for c in wave]
    ensure_channel_limits(waves[0])
    outcomes: list[ChannelOutcome] = []
    halted_at: int | None = None
    locks = [WaveLock(waves[0]).start()]
    with ThreadPoolExecutor(max_workers=1) as aside:
        rest_ready = aside.submit(contextvars.copy_context().run, ensure_channel_limits, rest)
        try:
            for number, channels in enumerate(waves, start=1):
                if halted_at is not None:  # only the wave after the halt had its lock taken
                    outcomes += [_vetoed(c, number, f"wave {halted_at}") for c in channels]
                    continue
                lock = locks[number - 1]
                lock.wait()
                if number < len(waves):
                    rest_ready.result()
                    locks.append(WaveLock(waves[number]).start())
                try:
                    done = run_wave(channels, number, request.release_id, who,
                                    request.max_parallel, run_key, lock)
                finally:
                    lock.release()
                outcomes += done
                downloads += sum(o.downloaded for o in done)
                live = sum(o.result in ("activated", "resumed", "already_live") for o in outcomes)
                progress.update(len(outcomes), f"wave {number} of {len(waves)} done: {live} of "
                                f"{progress.total} channels live")
                if any(o.result in FAILED_RESULTS for o in done):
                    halted_at = number
                    print(f"wave {number} failed: halting, vetoing release {request.release_id} "
                          "for the channels not reached")
            if halted_at is not None:
                progress.update(progress.total, f"halted at wave {halted_at}: "
                                f"{sum(o.result == 'vetoed' for o in outcomes)} channels vetoed")
        finally:
            for lock in locks:
                lock.join()
    return outcomes, halted_at, downloads


@task(name="plan-wave", cache_policy=NO_CACHE, task_run_name="plan-wave-{wave}",
      retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_on_transient)
def plan_wave(channels: list[str], wave: int, release_id: int, max_parallel: int,
              run_key: str) -> list[ChannelOutcome]:
    """The dry run of a wave: every channel verified and planned; read-only, so a storage
    hiccup anywhere retries the whole wave."""
    ctx = domain_context()
    run = _fleet_run(run_key)
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(channels)))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, plan_channel, ctx, run, c,
                               release_id, wave) for c in channels]
    hiccup = next((f.exception() for f in futures
                   if isinstance(f.exception(), StorageUnavailable)), None)
    if hiccup is not None:
        raise hiccup
    return [f.result() if f.exception() is None else _failed(c, wave, f.exception())
            for f, c in zip(futures, channels, strict=True)]


def _plan_all(waves: list[list[str]], request: FleetRequest,
              run_key: str) -> list[ChannelOutcome]:
    """The dry run: every wave planned (no locks, no halting)."""
    outcomes: list[ChannelOutcome] = []
    for number, channels in enumerate(waves, start=1):
        try:
            outcomes += plan_wave(channels, number, request.release_id, request.max_parallel,
                                  run_key)
        except StorageUnavailable as exc:
            outcomes += [_failed(c, number, exc) for c in channels]
    return outcomes


@flow(name="fleet-activate", log_prints=True)
def fleet_activate(request: FleetRequest) -> FleetOutcome:
    """Activate one release across many channels in waves, canary first; halt and veto on the
    first failed wave; report which channel runs which release."""
    who = who_of(request.operator, request.reason, request.correlation_id)
    waves = fleet.plan_waves(request.channel_ids, request.canary_channel_ids, request.wave_size)
    downloads, note = 0, ""
    run_key = who.flow_run_id or who.correlation_id
    suffix = fleet_key(request.channel_ids, request.release_id)
    try:
        try:
            staged = stage_fleet_release(waves[0][0], request.release_id, run_key)
            downloads = staged["downloaded"]
            note = (f"{staged['files']} files ({staged['bytes']} bytes) staged from "
                    f"{waves[0][0]}, {staged['downloaded']} downloaded")
        except KristalError as exc:  # the first channel's own activation refuses with the code
            note = f"could not stage from {waves[0][0]}: {exc.line()}"
        if request.dry_run:
            outcomes, halted_at = _plan_all(waves, request, run_key), None
        else:
            progress = _Progress(f"fleet-progress-{suffix}", len(request.channel_ids),
                                 request.release_id)
            try:
                outcomes, halted_at, downloads = _waves(waves, request, who, run_key,
                                                        downloads, progress)
            finally:
                progress.close()
    finally:
        _RUNS.pop(run_key, None)
    vetoed = [o.channel_id for o in outcomes if o.result == "vetoed"]
    revocations = (revoke_vetoed_task(vetoed, request.release_id)
                   if vetoed and request.revoke_vetoed else {})
    result = FleetOutcome(
        release_id=request.release_id,
        outcome=("planned" if request.dry_run
                 else "halted" if halted_at is not None else "activated"),
        halted_at_wave=halted_at, waves=waves, channels=outcomes, vetoed=vetoed,
        veto_revocations=revocations, payload_downloads=downloads, staging_note=note,
        skew=skew_report_task(request.channel_ids, {
            o.activation_id: "passed" for o in outcomes
            if o.activation_id and o.result in ("activated", "resumed", "already_live")}),
        artifact_keys=[f"fleet-waves-{suffix}", f"fleet-skew-{suffix}"]
        + ([] if request.dry_run else [f"fleet-progress-{suffix}"]),
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
