"""The fleet-activate operation: one release to many channels in waves (canary first), halting
at the first failed wave and vetoing the release for the channels not yet reached; a skew
report says which channel runs which release. Rules and the veto choice: `fleet_rules`.

The payload is staged once before the waves (content-addressed cache, one query index per
pack). Each wave is one step (`activate-wave-N`, retried on storage hiccups); inside it each
channel runs `fleet_channel.activate_channel`: the steps of `activate` as plain calls, in
threads bounded by `max_parallel`. A task run per channel was measured at ~40 ms of wall time
plus as much Prefect-server CPU, about a channel's own cost, so it nearly doubled a 50-channel
fleet; the per-channel results are in the waves report instead.

Locks: a wave holds every one of its channels' locks for its duration (`Runner.lock_ahead`), so
the next wave's can be acquired while the current wave runs; the locks of every channel after
the canary are created while the canary runs.

Fanned out (`fan_out`): each channel's whole activation runs elsewhere
(`fleet_channel.activate_elsewhere`: with Prefect, a run of the `activate` deployment on the
work queue of the channel's region), `max_parallel` at a time, in the same waves and under the
same halt and veto decision (`activate_wave`). The fleet then stages nothing and holds no lock
(each run takes its own channel's lock: holding it here would block the run); whether every
channel can run elsewhere is checked before the first one starts (`Runner.check_fan_out`). A
dry run stays here, read-only, after that check.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from kristal.context import Context
from kristal.errors import KristalError, StorageUnavailable
from kristal.operations import events
from kristal.operations.fleet_channel import (
    FAILED_RESULTS,
    ChannelOutcome,
    FleetOutcome,
    FleetRun,
    activate_channel,
    activate_elsewhere,
    failed_outcome,
    fleet_key,
    plan_channel,
    vetoed,
    waves_markdown,
)
from kristal.operations.fleet_rules import plan_waves, revoke_vetoed, skew_report
from kristal.operations.outcome import Who
from kristal.operations.runner import Artifact, HeldLock, Progress, Runner, Unlocked, step
from kristal.progress import metered
from kristal.runtime import staging
from kristal.trust.keys import load_role_key
from kristal.verify.fetch import verify_release

LIVE_RESULTS = ("activated", "resumed", "already_live")


@step("stage-fleet-release")
def stage_fleet_release(ctx: Context, fleet: FleetRun, channel_id: str,
                        release_id: int) -> str:
    """Verify the release in one channel and stage it: the fleet's one download."""
    release = verify_release(ctx, channel_id, release_id=release_id, memo=fleet.documents)
    staged = fleet.staged = staging.stage_release(ctx, release)
    fleet.downloads += staged.downloaded
    return (f"{len(staged.files)} files ({staged.bytes_total} bytes) staged from {channel_id}, "
            f"{staged.downloaded} downloaded")


@step("activate-wave", run_name="activate-wave-{wave}")
def activate_wave(inline: Runner, ctx: Context, fleet: FleetRun, channels: list[str],
                  wave: int, release_id: int, who: Who,
                  max_parallel: int) -> list[ChannelOutcome]:
    """Bring one wave's channels live, `max_parallel` at a time, under the wave's held locks
    (fanned out: each activated elsewhere, under its own lock).

    After a channel fails (refused, rolled back), channels not started are vetoed. A channel
    that hit only a storage hiccup is not final: if no channel failed otherwise, the step
    raises `StorageUnavailable` and its retry runs just those channels again (final outcomes
    are kept in the fleet run).
    """
    lock = fleet.locks[wave]

    def one(channel_id: str) -> ChannelOutcome:
        if fleet.fan_out:
            return activate_elsewhere(inline, ctx, fleet, channel_id, release_id, wave, who)
        if not lock.held:
            raise RuntimeError("the wave's channel locks were lost (lease not renewed); "
                               f"{channel_id} was not started")
        return activate_channel(inline, ctx, fleet, channel_id, release_id, wave, who)

    todo = [c for c in channels if c not in fleet.outcomes]
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
                    fleet.transient[channel_id] = exc
                    continue
                fleet.transient.pop(channel_id, None)
                outcome = future.result() if exc is None else failed_outcome(channel_id, wave,
                                                                             exc)
                fleet.outcomes[channel_id] = outcome
                if outcome.result in FAILED_RESULTS and not halted:
                    halted = True
                    for other, name in list(pending.items()):
                        if other.cancel():
                            pending.pop(other)
                            fleet.outcomes[name] = vetoed(name, wave, channel_id)
    hiccups = [c for c in channels if c in fleet.transient]
    if hiccups and not halted:
        raise StorageUnavailable(
            f"wave {wave}: {len(hiccups)} channel(s) hit a storage error and will be tried "
            f"again ({hiccups[0]}: {fleet.transient[hiccups[0]].message})")
    return [fleet.outcomes.get(c) or failed_outcome(c, wave, fleet.transient[c])
            for c in channels]


@step("plan-wave", run_name="plan-wave-{wave}")
def plan_wave(ctx: Context, fleet: FleetRun, channels: list[str], wave: int, release_id: int,
              max_parallel: int) -> list[ChannelOutcome]:
    """The dry run of a wave: every channel verified and planned; read-only, so a storage
    hiccup anywhere retries the whole wave."""
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(channels)))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, plan_channel, ctx, fleet, c,
                               release_id, wave) for c in channels]
    hiccup = next((f.exception() for f in futures
                   if isinstance(f.exception(), StorageUnavailable)), None)
    if hiccup is not None:
        raise hiccup
    return [f.result() if (exc := f.exception()) is None else failed_outcome(c, wave, exc)
            for f, c in zip(futures, channels, strict=True)]


@step("skew-report")
def skew_report_step(ctx: Context, channel_ids: list[str],
                     known_checks: dict[str, str]) -> list[dict[str, object]]:
    return skew_report(ctx, channel_ids, known_checks)


@step("revoke-vetoed", retries=False)
def revoke_vetoed_step(ctx: Context, channel_ids: list[str], release_id: int) -> dict[str, str]:
    authority = load_role_key(ctx.settings.key_dir, "channel-authority")
    return revoke_vetoed(ctx, authority, channel_ids, release_id)


def _run_wave(run: Runner, ctx: Context, fleet: FleetRun, channels: list[str], wave: int,
              release_id: int, who: Who, max_parallel: int,
              lock: HeldLock) -> list[ChannelOutcome]:
    fleet.locks[wave] = lock
    try:
        return run(activate_wave, run.inline(), ctx, fleet, channels, wave, release_id, who,
                   max_parallel)
    except StorageUnavailable:  # retries exhausted: the channels still failing are refused
        return [fleet.outcomes.get(c) or failed_outcome(c, wave, fleet.transient[c])
                for c in channels]
    finally:
        fleet.locks.pop(wave, None)


def _prepare_locks(run: Runner, fleet: FleetRun, channel_ids: list[str]) -> None:
    if not fleet.fan_out:
        run.prepare_locks(channel_ids)


def _lock_ahead(run: Runner, fleet: FleetRun, channel_ids: list[str]) -> HeldLock:
    """The wave's locks, taken ahead; fanned out, none (each channel's run takes its own)."""
    return Unlocked() if fleet.fan_out else run.lock_ahead(channel_ids)


def _waves(run: Runner, ctx: Context, fleet: FleetRun, waves: list[list[str]], release_id: int,
           who: Who, max_parallel: int, progress: Progress) -> tuple[list[ChannelOutcome],
                                                                     int | None]:
    """Wave after wave until one fails; the channels of later waves are vetoed.

    Wave k+1's locks are acquired while wave k runs; wave k's are released as it ends. The
    locks of every channel after the canary are created while the canary runs."""
    total = sum(len(w) for w in waves)
    rest = [c for wave in waves[1:] for c in wave]
    _prepare_locks(run, fleet, waves[0])
    outcomes: list[ChannelOutcome] = []
    halted_at: int | None = None
    locks = [_lock_ahead(run, fleet, waves[0])]
    with ThreadPoolExecutor(max_workers=1) as aside, metered(
            f"fleet release {release_id}: waves", total, "channels") as shown:
        rest_ready = aside.submit(contextvars.copy_context().run, _prepare_locks, run, fleet,
                                  rest)
        try:
            for number, channels in enumerate(waves, start=1):
                if halted_at is not None:  # only the wave after the halt had its lock taken
                    outcomes += [vetoed(c, number, f"wave {halted_at}") for c in channels]
                    continue
                lock = locks[number - 1]
                lock.wait()
                if number < len(waves):
                    rest_ready.result()
                    locks.append(_lock_ahead(run, fleet, waves[number]))
                try:
                    done = _run_wave(run, ctx, fleet, channels, number, release_id, who,
                                     max_parallel, lock)
                finally:
                    lock.release()
                outcomes += done
                shown.advance(len(done))
                live = sum(o.result in LIVE_RESULTS for o in outcomes)
                if any(o.result in FAILED_RESULTS for o in done):
                    halted_at = number
                    run.log(f"wave {number} failed: halting, vetoing release {release_id} for "
                            "the channels not reached", warning=True)
                    vetoed_now = total - len(outcomes) + sum(o.result == "vetoed" for o in done)
                    progress.update(live / total, f"halted at wave {number}: {live} of {total} "
                                    f"channels live, {vetoed_now} vetoed")
                else:
                    progress.update(live / total, f"wave {number} of {len(waves)} done: "
                                    f"{live} of {total} channels live")
        finally:
            for lock in locks:
                lock.join()
    return outcomes, halted_at


def fleet_activate(
    run: Runner,
    ctx: Context,
    *,
    channel_ids: list[str],
    release_id: int,
    who: Who,
    canary: list[str] | None = None,
    wave_size: int = 10,
    max_parallel: int = 4,
    revoke_vetoed_channels: bool = False,
    dry_run: bool = False,
    fan_out: bool = False,
) -> FleetOutcome:
    """Activate one release across many channels in waves, canary first; halt and veto on the
    first failed wave; report which channel runs which release. `fan_out`: each channel's
    activation runs elsewhere (see the module docstring)."""
    waves = plan_waves(channel_ids, canary, wave_size)
    suffix = fleet_key(channel_ids, release_id)
    fleet = FleetRun(fan_out=fan_out and not dry_run, key=suffix)
    # Before anything is started: every channel can run elsewhere (a dry run checks it too).
    where = run.check_fan_out(channel_ids) if fan_out else ""
    if fan_out:
        run.log(f"fan-out: {len(channel_ids)} channels through {where}")
    if fleet.fan_out:
        note = f"fanned out: each channel's run stages from its own store ({where})"
    else:
        try:
            note = run(stage_fleet_release, ctx, fleet, waves[0][0], release_id)
        except KristalError as exc:  # the first channel's own activation refuses with the code
            note = f"could not stage from {waves[0][0]}: {exc.line()}"
    halted_at: int | None = None
    if dry_run:
        outcomes: list[ChannelOutcome] = []
        for number, channels in enumerate(waves, start=1):
            try:
                planned: list[ChannelOutcome] = run(plan_wave, ctx, fleet, channels, number,
                                                    release_id, max_parallel)
                outcomes += planned
            except StorageUnavailable as exc:
                outcomes += [failed_outcome(c, number, exc) for c in channels]
    else:
        progress = run.progress("fleet-progress", suffix, f"fleet-activate release "
                                f"{release_id}: 0/{len(channel_ids)} channels")
        try:
            outcomes, halted_at = _waves(run, ctx, fleet, waves, release_id, who, max_parallel,
                                         progress)
        finally:
            progress.close()
    gone = [o.channel_id for o in outcomes if o.result == "vetoed"]
    revocations = (run(revoke_vetoed_step, ctx, gone, release_id)
                   if gone and revoke_vetoed_channels else {})
    result = FleetOutcome(
        release_id=release_id,
        outcome=("planned" if dry_run else "halted" if halted_at is not None else "activated"),
        halted_at_wave=halted_at, waves=waves, channels=outcomes, vetoed=gone,
        veto_revocations=revocations,
        payload_downloads=fleet.downloads + sum(o.downloaded for o in outcomes),
        staging_note=note,
        skew=run(skew_report_step, ctx, channel_ids, {
            o.activation_id: "passed" for o in outcomes
            if o.activation_id and o.result in LIVE_RESULTS}),
        artifact_keys=[f"fleet-waves-{suffix}", f"fleet-skew-{suffix}"]
        + ([] if dry_run else [f"fleet-progress-{suffix}"]),
    )
    run.publish(Artifact("fleet-waves", suffix, f"fleet activation of release {release_id}",
                         markdown=waves_markdown(result)))
    run.publish(Artifact("fleet-skew", suffix, "which channel runs which release",
                         table=[{k: str(v) for k, v in row.items()} for row in result.skew]))
    if not dry_run:  # the skew rows are the board's rows of these channels
        run.publish(Artifact("board", "channels", "board rows of the fleet",
                             table=list(result.skew)))
    if halted_at is not None:
        run.emit(events.FLEET_HALTED, fleet=suffix, payload={
            "release_id": release_id, "halted_at_wave": halted_at, "vetoed": gone})
    return result
