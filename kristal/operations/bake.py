"""The bake operation (issue 16): a release that passed its first checks proves itself live for
a while before it counts as known-good, measured every interval, without holding any lock.

1. `bake-start`: the live record must be the activation asked about and promise a bake; its
   first checks passed (they start the clock); the release is re-verified and its packs staged
   here (idempotent: a bake may run on another host than the activation).
2. `bake-measure` (one step per measurement, due at clock + n x interval): the pack's own
   checks through the pinned reader and each metric check; the signed, write-once record says
   passed, failed or inconclusive. A pointer that moved ends the bake as `superseded`.
3. Verdict: `failure_limit` failed or `inconclusive_limit` inconclusive measurements fail the
   bake: the verdict is recorded, the release quarantined and the channel rolled back exactly
   as a failed check does (guarded by the activation id, follow-up, `kristal.bake.failed`), and
   the run fails with `check_failed`. All measurements done: `passed`, the release is
   known-good from now on (`history.passed`).

Why one run per bake and not one run per measurement: a measurement must land within an
interval of seconds, and a run per measurement pays a process start each time; one run also
reads as one bake in the UI, with each measurement a task. It holds no lock: a later
activation or rollback simply supersedes it (its switch writes the verdict).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kristal.channel import bakes, records
from kristal.config import PrometheusSettings, prometheus_settings
from kristal.context import Context
from kristal.errors import CheckFailed, KristalError, PointerConflict, ReleaseIdSubstitutionBlocked
from kristal.formats.bake_docs import BakeMeasurement, BakeVerdict, MetricResult
from kristal.formats.channel_docs import ActivationRecord, ReleaseRef
from kristal.operations import events
from kristal.operations.outcome import Outcome, Who
from kristal.operations.reports import publish_board
from kristal.operations.rollback import GUARDED_LOCK_WAIT_S, switch_back
from kristal.operations.runner import Artifact, Runner, step
from kristal.operations.steps import measure_pinned, quarantine_release
from kristal.runtime import prometheus, staging
from kristal.verify.fetch import verify_release
from kristal.verify.verifier import VerifiedRelease


@dataclass
class BakeRun:
    """What `bake-start` found: the record to bake (None: nothing to do, `reason` says why)."""

    record: ActivationRecord | None
    reason: str = ""
    release: VerifiedRelease | None = None
    started_at: datetime | None = None
    done: list[BakeMeasurement] = field(default_factory=list)
    verdict: BakeVerdict | None = None


@step("bake-start")
def start_bake(ctx: Context, channel_id: str, activation_id: str | None) -> BakeRun:
    """Step 1 (see the module docstring)."""
    live = records.read_pointer(ctx, channel_id).record
    if live is None or (activation_id is not None and live.activation_id != activation_id):
        now = f"sequence {live.sequence}" if live else "nothing"
        return BakeRun(None, f"activation {activation_id} is no longer live in {channel_id} "
                             f"(now {now}): nothing to bake")
    if live.bake is None:
        return BakeRun(None, f"sequence {live.sequence} of {channel_id} has no bake")
    checks = records.read_checks(ctx, live)
    if checks is None or checks.result != "passed":
        return BakeRun(None, f"sequence {live.sequence} of {channel_id}: first checks "
                             f"{'not recorded yet' if checks is None else 'failed'}; no bake")
    verdict = bakes.read_verdict(ctx, live)
    if verdict is not None:
        return BakeRun(live, f"the bake already ended: {verdict.result}", verdict=verdict)
    release = verify_release(ctx, channel_id, release_id=live.active.release_id,
                             min_index_version=live.index_version)
    if ReleaseRef.of(release.entry) != live.active:
        raise ReleaseIdSubstitutionBlocked(
            f"the index entry of release {live.active.release_id} no longer binds the "
            "artifacts the live record names")
    staging.stage_release(ctx, release)
    return BakeRun(live, release=release, started_at=checks.created_at,
                   done=bakes.measurements(ctx, live))


@step("bake-measure", run_name="bake-measurement-{n}")
def measure(ctx: Context, record: ActivationRecord, release: VerifiedRelease, n: int,
            settings: PrometheusSettings | None) -> BakeMeasurement | None:
    """Step 2: measurement `n`; None when the activation is no longer live."""
    plan = record.bake
    assert plan is not None
    figures: dict[str, object] = {}
    reasons: list[str] = []
    failed = False
    if plan.pack_checks:
        try:
            reports = measure_pinned(ctx, record, release)
        except PointerConflict:
            return None
        figures = {"row_count": sum(r.row_count for r in reports),
                   "latency_p95_ms": round(max(r.latency_p95_ms for r in reports), 3),
                   "peak_rss_mb": round(max(r.peak_rss_mb for r in reports), 1)}
        failing = [o for r in reports for o in r.outcomes if not o.passed]
        failed = bool(failing)
        reasons += [f"{o.name}: expected {o.expected}, measured {o.measured}"
                    for o in failing[:4]]
    elif records.read_pointer(ctx, record.channel_id).record != record:
        return None
    metrics: list[MetricResult] = [prometheus.evaluate(settings, check, record)
                                   for check in plan.metrics]
    failed = failed or any(m.result == "failed" for m in metrics)
    inconclusive = any(m.result == "inconclusive" for m in metrics)
    reasons += [f"{m.name}: {m.detail}" for m in metrics if m.result != "passed"]
    taken = BakeMeasurement(
        channel_id=record.channel_id, sequence=record.sequence,
        activation_id=record.activation_id, release_id=record.active.release_id, n=n,
        total=plan.total, result="failed" if failed else "inconclusive" if inconclusive
        else "passed", reason="; ".join(reasons) or "all checks passed", figures=figures,
        metrics=metrics, created_at=ctx.now(),
    )
    if bakes.write_measurement(ctx, record, taken) is not None:
        raise PointerConflict(f"another bake run of activation {record.activation_id} wrote "
                              f"measurement {n} first; this one stops")
    return taken


@step("bake-verdict")
def conclude(ctx: Context, record: ActivationRecord, result: str, done: int,
             reason: str, superseded_by: int | None = None) -> BakeVerdict:
    """Step 3: the write-once verdict; the first written stands (returned)."""
    return bakes.write_verdict(ctx, record, result, done=done,  # type: ignore[arg-type]
                               reason=reason, now=ctx.now(), superseded_by=superseded_by)


def _tally(done: list[BakeMeasurement], record: ActivationRecord) -> str | None:
    """Why the bake failed so far (None: it has not)."""
    plan = record.bake
    assert plan is not None
    failed = [m for m in done if m.result == "failed"]
    inconclusive = [m for m in done if m.result == "inconclusive"]
    if len(failed) >= plan.failure_limit:
        return (f"measurement {failed[-1].n}/{plan.total} failed "
                f"({len(failed)} of {plan.failure_limit} allowed to fail): {failed[-1].reason}")
    if len(inconclusive) >= plan.inconclusive_limit:
        return (f"{len(inconclusive)} inconclusive measurements (limit "
                f"{plan.inconclusive_limit}), last: {inconclusive[-1].reason}")
    return None


def bake(run: Runner, ctx: Context, *, channel_id: str, activation_id: str | None, who: Who,
         sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Bake the live activation (`activation_id`, or whatever is live) to its verdict; a
    failed bake raises `CheckFailed` after its rollback."""
    return bake_channels(run, ctx, [(channel_id, activation_id)], who=who, sleep=sleep)[0]


@dataclass
class _Baking:
    record: ActivationRecord
    release: VerifiedRelease
    started_at: datetime
    done: list[BakeMeasurement]

    def due(self) -> datetime:
        assert self.record.bake is not None
        return self.started_at + timedelta(seconds=(len(self.done) + 1)
                                           * self.record.bake.interval_s)


def bake_channels(run: Runner, ctx: Context, targets: list[tuple[str, str | None]], *,
                  who: Who, sleep: Callable[[float], None] = time.sleep) -> list[Outcome]:
    """Bake several channels' activations in one run (a fleet's channels), each on its own
    clock: whichever measurement is due next is taken next. A failed bake is rolled back at
    once and the others go on; then `CheckFailed` names every failed one."""
    outcomes: dict[str, Outcome] = {}
    baking: list[_Baking] = []
    for channel_id, activation_id in targets:
        started = run(start_bake, ctx, channel_id, activation_id)
        record = started.record
        if record is None or started.verdict is not None or started.release is None:
            run.log(started.reason)
            outcomes[channel_id] = Outcome(
                channel_id=channel_id, outcome="nothing_to_do", message=started.reason,
                orchestrator=run.orchestrator, bake=_status(ctx, record))
            continue
        assert record.bake is not None and started.started_at is not None
        run.log(f"baking release {record.active.release_id} in {channel_id}: "
                f"{record.bake.total} measurement(s) every {record.bake.interval_s:g}s "
                f"({len(started.done)} done)")
        baking.append(_Baking(record, started.release, started.started_at, list(started.done)))
    settings = prometheus_settings()
    failures: list[CheckFailed] = []
    while baking:
        item = min(baking, key=_Baking.due)
        wait = (item.due() - ctx.now()).total_seconds()
        if wait > 0:
            sleep(wait)
        record, plan = item.record, item.record.bake
        assert plan is not None
        n = len(item.done) + 1
        try:
            taken = run(measure, ctx, record, item.release, n, settings)
        except PointerConflict as exc:  # another bake run of this activation measures it
            run.log(exc.message, warning=True)
            baking.remove(item)
            outcomes[record.channel_id] = Outcome(
                channel_id=record.channel_id, outcome="nothing_to_do", message=exc.message,
                orchestrator=run.orchestrator, bake=_status(ctx, record))
            continue
        if taken is None:
            baking.remove(item)
            outcomes[record.channel_id] = _superseded(run, ctx, record, len(item.done))
            continue
        item.done.append(taken)
        publish_board(run, ctx, [record.channel_id])
        run.log(f"bake {n}/{plan.total} of release {record.active.release_id} in "
                f"{record.channel_id}: {taken.result} ({taken.reason})",
                warning=taken.result != "passed")
        if (why := _tally(item.done, record)) is not None:
            baking.remove(item)
            failures.append(fail_bake(run, ctx, record, len(item.done), why, who))
        elif n == plan.total:
            baking.remove(item)
            outcomes[record.channel_id] = _passed(run, ctx, record, item.done)
    if failures:
        raise CheckFailed("; ".join(f.message for f in failures))
    return [outcomes[channel_id] for channel_id, _ in targets]


def _passed(run: Runner, ctx: Context, record: ActivationRecord,
            done: list[BakeMeasurement]) -> Outcome:
    assert record.bake is not None
    verdict = run(conclude, ctx, record, "passed", len(done),
                  f"{len(done)} measurement(s) over {record.bake.duration_s:g}s held up")
    _report(run, record, done, verdict)
    publish_board(run, ctx, [record.channel_id])
    message = (f"release {record.active.release_id} baked in {record.channel_id}: "
               f"{verdict.result} ({verdict.reason}); it is known-good from now on")
    run.log(message)
    return Outcome(channel_id=record.channel_id, outcome="baked", sequence=record.sequence,
                   activation_id=record.activation_id, release_id=record.active.release_id,
                   check_result=verdict.result, message=message,
                   orchestrator=run.orchestrator, bake=_status(ctx, record))


def _superseded(run: Runner, ctx: Context, record: ActivationRecord, done: int) -> Outcome:
    now = records.read_pointer(ctx, record.channel_id).record
    later = now.sequence if now is not None else None
    verdict = run(conclude, ctx, record, "superseded", done,
                  f"the channel moved on to sequence {later} during the bake", later)
    message = (f"bake of release {record.active.release_id} in {record.channel_id} ended: "
               f"{verdict.result} ({verdict.reason})")
    run.log(message)
    return Outcome(channel_id=record.channel_id, outcome="nothing_to_do",
                   sequence=record.sequence, activation_id=record.activation_id,
                   release_id=record.active.release_id, check_result=verdict.result,
                   message=message, orchestrator=run.orchestrator,
                   bake=_status(ctx, record))


def fail_bake(run: Runner, ctx: Context, record: ActivationRecord, done: int, why: str,
              who: Who) -> CheckFailed:
    """Record the failed verdict, quarantine, roll back as a failed check does (guarded by
    the activation id, under the channel's lock when it can be had soon), report; returns the
    error the run fails with."""
    verdict = run(conclude, ctx, record, "failed", done, why)
    if verdict.result != "failed":  # another verdict stood first (a switch superseded it)
        return CheckFailed(f"bake of release {record.active.release_id} ended "
                           f"{verdict.result} before it could fail: {verdict.reason}")
    run.log(f"bake of release {record.active.release_id} failed: {why}", warning=True)
    run(quarantine_release, ctx, record, f"bake failed: {why}")
    try:
        with run.lock([record.channel_id], wait_s=GUARDED_LOCK_WAIT_S, proceed_without=True):
            back = switch_back(run, ctx, record.channel_id, "previous", record.activation_id,
                               "auto_rollback", who, f"failed bake: {why}").message
    except KristalError as exc:
        back = f"no automatic rollback: {exc.line()}"
    run.emit(events.BAKE_FAILED, channel_id=record.channel_id, payload={
        "channel_id": record.channel_id, "activation_id": record.activation_id,
        "release_id": record.active.release_id, "reason": why, "rollback": back})
    _report(run, record, bakes.measurements(ctx, record), verdict)
    return CheckFailed(f"release {record.active.release_id} failed its bake ({why}); {back}")


def fail_stopped(run: Runner, ctx: Context, record: ActivationRecord, why: str,
                 who: Who) -> CheckFailed:
    """A bake nobody is measuring any more (its run crashed, its worker is gone) fails like a
    failed measurement (the nightly reverify finds it)."""
    return fail_bake(run, ctx, record, len(bakes.measurements(ctx, record)), why, who)


def _status(ctx: Context, record: ActivationRecord | None) -> bakes.BakeStatus | None:
    if record is None:
        return None
    live = records.read_pointer(ctx, record.channel_id).record
    return bakes.bake_status(ctx, record, live=live is not None and live == record)


def _report(run: Runner, record: ActivationRecord, done: list[BakeMeasurement],
            verdict: BakeVerdict) -> None:
    rows = [{"n": m.n, "result": "✓" if m.result == "passed" else m.result,
             "at": m.created_at.strftime("%H:%M:%S"), "reason": m.reason[:200],
             **m.figures,
             **{mr.name: ", ".join(f"{v:.4g}" for v in mr.values) or "-" for mr in m.metrics}}
            for m in done]
    run.publish(Artifact(
        "bake", record.channel_id,
        f"bake of release {record.active.release_id} in {record.channel_id} (sequence "
        f"{record.sequence}): {verdict.result}, {verdict.done}/{verdict.total}",
        table=rows))
