"""One channel of a fleet, and what the channels of one fleet run share (`fleet` runs the waves).

`activate_channel` is the `activate` operation's steps for one channel, as plain calls on an
inline runner: verify against the channel's own signed index, switch, check, and on a failed
check the same quarantine, automatic rollback and follow-up (`golive`). What every channel
would otherwise repeat is shared through the fleet's `FleetRun`: the content-addressed
manifests and reports are fetched once (each channel's verifier still checks them against its
own index and trust), a channel whose verified inventory is the one staged moments ago is not
re-hashed, and the checks of a pack are measured once, in a fresh process, by the first channel
to switch (the canary); every channel still opens its own pinned readers and writes its own
check record, which names the measurement it reused.

`activate_elsewhere` is a fanned-out fleet's channel: the whole `activate` run elsewhere (the
runner's `activate_elsewhere`: a worker of the channel's region), mapped to the same
`ChannelOutcome`, so the fleet decides on it exactly as on a channel activated here.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from kristal.channel import records
from kristal.context import Context
from kristal.errors import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_ROLLED_BACK,
    CheckFailed,
    KristalError,
    StorageUnavailable,
)
from kristal.formats.channel_docs import ActivationRecord
from kristal.once_per_key import OncePerKey
from kristal.operations.dry_run import refuse_failing
from kristal.operations.golive import go_live
from kristal.operations.outcome import Who
from kristal.operations.pictures import fleet_grid_svg, svg_markdown
from kristal.operations.plan import plan_activation
from kristal.operations.runner import HeldLock, RemoteActivation, Runner
from kristal.operations.steps import pack_checks
from kristal.runtime import staging
from kristal.runtime.checkrunner import run_checks_isolated
from kristal.runtime.checks import CheckOutcome, CheckReport
from kristal.runtime.session import PinnedSession
from kristal.runtime.sqlite_index import PinnedReader
from kristal.runtime.staging import StagedRelease, index_path
from kristal.verify.fetch import DocumentMemo
from kristal.verify.verifier import VerifiedRelease

ChannelResult = Literal[
    "activated", "already_live", "resumed", "rolled_back", "refused", "error", "vetoed",
    "planned",
]
FAILED_RESULTS = ("rolled_back", "refused", "error")
_LIVE: dict[str, ChannelResult] = {"activated": "activated", "resumed": "resumed",
                                   "already_live": "already_live"}


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
    baking: bool = False  # live, its bake to run (one bake run for the fleet's channels)


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
    bake_note: str = ""

    @property
    def exit_status(self) -> int:
        """0 done; 5 when a channel was activated and rolled back by its checks; 1 when a
        channel refused (a dry run: would refuse) and none was rolled back."""
        results = [o.result for o in self.channels]
        if "rolled_back" in results:
            return EXIT_ROLLED_BACK
        if self.outcome == "halted" or any(r in ("refused", "error") for r in results):
            return EXIT_REFUSED
        return EXIT_OK


def fleet_key(channel_ids: list[str], release_id: int) -> str:
    """The key of one fleet (a release over a channel set) in its reports' names."""
    digest = hashlib.sha256("\n".join(channel_ids).encode()).hexdigest()[:10]
    return f"r{release_id}-{digest}"


class Measurements:
    """The fleet run's check reports by pack ID; one measurement per pack, the others wait."""

    def __init__(self) -> None:
        self._reports: OncePerKey[str, tuple[CheckReport, str]] = OncePerKey()

    def report(self, pack_id: str, source: str,
               measure: Callable[[], CheckReport]) -> tuple[CheckReport, str | None]:
        """(report, None) if measured now by `source`, or (report, who measured it)."""
        (report, measured_by), now = self._reports.get(pack_id, lambda: (measure(), source))
        return report, None if now else measured_by


@dataclass(eq=False)
class FleetRun:
    """What the channels of one fleet run share, for the run's duration."""

    measurements: Measurements = field(default_factory=Measurements)
    documents: DocumentMemo = field(default_factory=DocumentMemo)
    staged: StagedRelease | None = None
    downloads: int = 0
    # Final outcomes by channel (a retried wave skips these) and the last storage hiccup of
    # each channel still to finish; `locks` by wave number, for the wave step to look at.
    outcomes: dict[str, ChannelOutcome] = field(default_factory=dict)
    transient: dict[str, StorageUnavailable] = field(default_factory=dict)
    locks: dict[int, HeldLock] = field(default_factory=dict)
    # Fanned out: each channel's activation runs elsewhere, tagged with the fleet's `key`.
    fan_out: bool = False
    key: str = ""


def fleet_measure(ctx: Context, fleet: FleetRun, record: ActivationRecord,
                  release: VerifiedRelease) -> list[CheckReport]:
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
    sources = {p.pack_id: p.manifest.triples().sha256 for p in release.packs}
    readers = {p.pack_id: PinnedReader(index_path(ctx, p.pack_id), source_sha256=sources[p.pack_id])
               for p in release.packs}
    with PinnedSession(record, readers):
        for pack in release.packs:
            report, measured_by = fleet.measurements.report(
                pack.pack_id, source,
                functools.partial(run_checks_isolated, index_path(ctx, pack.pack_id),
                                  pack.expectations, sources[pack.pack_id]))
            if measured_by is not None:
                report = report.model_copy(update={"outcomes": [*report.outcomes, CheckOutcome(
                    name="measurement", passed=True, expected="this fleet run's measurement",
                    measured=f"measured by {measured_by} on the same index of {pack.pack_id}")]})
            reports.append(report)
    return reports


def _live_and_checked(ctx: Context, channel_id: str, release_id: int,
                      wave: int) -> tuple[records.PointerState, ChannelOutcome | None, bool]:
    """(pointer, an outcome if `release_id` is already live and checked, force to resume)."""
    state = records.read_pointer(ctx, channel_id)
    live = state.record
    if live is None or live.active.release_id != release_id:
        return state, None, False
    checks = records.read_checks(ctx, live)
    if checks is not None and checks.result == "passed":
        return state, ChannelOutcome(
            channel_id=channel_id, wave=wave, result="already_live", sequence=live.sequence,
            activation_id=live.activation_id, release_id=release_id,
            message="already live and checked"), False
    return state, None, True  # live with checks pending or failed: resume (§6 inv. 5)


def activate_channel(inline: Runner, ctx: Context, fleet: FleetRun, channel_id: str,
                     release_id: int, wave: int, who: Who) -> ChannelOutcome:
    """The `activate` operation's steps for one channel, as plain calls; the caller holds its
    lock. Started again after a storage hiccup, it starts over from the pointer: after a switch
    that landed it resumes at the checks, as a forced re-run of `activate` would."""
    state, done, force = _live_and_checked(ctx, channel_id, release_id, wave)
    if done is not None:
        return done
    plan = inline(plan_activation, ctx, channel_id, release_id=release_id, force=force,
                  memo=fleet.documents, state=state)  # A, B
    downloaded = 0
    if plan.failed_checks is None and not (
            fleet.staged is not None and staging.staged_by(fleet.staged, plan.release, ctx)):
        downloaded = staging.stage_release(ctx, plan.release).downloaded  # C: not what we staged
    outcome = go_live(inline, ctx, plan, who, report=False,  # D, E
                      measure=lambda record: fleet_measure(ctx, fleet, record, plan.release))
    return ChannelOutcome(
        channel_id=channel_id, wave=wave, result="resumed" if plan.resume else "activated",
        sequence=outcome.sequence, activation_id=outcome.activation_id,
        release_id=outcome.release_id, message=outcome.message, downloaded=downloaded,
        baking=outcome.bake is not None and outcome.bake.state == "baking",
    )


def activate_elsewhere(inline: Runner, ctx: Context, fleet: FleetRun, channel_id: str,
                       release_id: int, wave: int, who: Who) -> ChannelOutcome:
    """A fanned-out fleet's channel: `activate` run elsewhere, which takes the channel's lock,
    verifies against its own index, stages from its own store, switches and checks (and
    starts its own bake). As `activate_channel`, a channel already live and checked is not
    sent, and one live with its checks pending is sent to resume them."""
    _, done, force = _live_and_checked(ctx, channel_id, release_id, wave)
    if done is not None:
        return done
    ran = inline.activate_elsewhere(RemoteActivation(
        channel_id=channel_id, release_id=release_id, force=force, operator=who.operator,
        reason=who.reason, correlation_id=who.correlation_id, fleet=fleet.key, wave=wave))
    outcome = ran.outcome
    result = _LIVE.get(outcome.outcome)
    if result is None:
        return ChannelOutcome(channel_id=channel_id, wave=wave, result="error",
                              message=f"unexpected outcome {outcome.outcome} [{ran.where}]")
    return ChannelOutcome(
        channel_id=channel_id, wave=wave, result=result, sequence=outcome.sequence,
        activation_id=outcome.activation_id, release_id=outcome.release_id,
        message=f"{outcome.message} [{ran.where}]".lstrip())


def plan_channel(ctx: Context, fleet: FleetRun, channel_id: str, release_id: int,
                 wave: int) -> ChannelOutcome:
    """A dry run of `activate_channel`: steps A and B, and what step D would do."""
    state, done, force = _live_and_checked(ctx, channel_id, release_id, wave)
    if done is not None:
        return done
    plan = plan_activation(ctx, channel_id, release_id=release_id, force=force,
                           memo=fleet.documents, state=state)
    live = state.record
    if plan.failed_checks is not None:
        would = "finish the rollback of its failed checks"
    elif plan.resume:
        would = "resume its checks"
    else:
        would = (f"activate release {release_id} (live now: "
                 f"{live.active.release_id if live else 'nothing'})")
    staged = fleet.staged is not None and staging.staged_by(fleet.staged, plan.release, ctx)
    if staged and not plan.resume and plan.failed_checks is None:
        # The expectations against the staged index, once per pack for the whole fleet: a
        # canary's failing expectation shows here, before any switch.
        refuse_failing(channel_id, release_id, [fleet.measurements.report(
            p.pack_id, channel_id, lambda p=p: pack_checks(ctx, p))[0]  # type: ignore[misc]
            for p in plan.release.packs])
        would += "; its checks pass against the staged index"
    return ChannelOutcome(
        channel_id=channel_id, wave=wave, result="planned", release_id=release_id,
        sequence=live.sequence if live else None,
        activation_id=live.activation_id if live else None,
        message=f"would {would}" + (
            "" if staged else "; its index names other content than the first channel's: a "
            "real run stages that on its own"),
    )


def failed_outcome(channel_id: str, wave: int, exc: BaseException) -> ChannelOutcome:
    if isinstance(exc, CheckFailed):
        return ChannelOutcome(channel_id=channel_id, wave=wave, result="rolled_back",
                              error_code=exc.code, message=exc.message)
    if isinstance(exc, KristalError):
        return ChannelOutcome(channel_id=channel_id, wave=wave, result="refused",
                              error_code=exc.code, message=exc.message)
    return ChannelOutcome(channel_id=channel_id, wave=wave, result="error",
                          message=f"{type(exc).__name__}: {exc}"[:500])


def vetoed(channel_id: str, wave: int, failed_channel: str) -> ChannelOutcome:
    return ChannelOutcome(channel_id=channel_id, wave=wave, result="vetoed",
                          message=f"not attempted: the fleet halted after {failed_channel} failed")


def fleet_grid(result: FleetOutcome) -> str:
    """The fleet's grid picture (SVG): channel by wave, coloured by outcome."""
    return fleet_grid_svg(result.release_id, result.waves,
                          {o.channel_id: o.result for o in result.channels})


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
    lines += ["", svg_markdown(fleet_grid(result), "fleet grid: channel by wave")]
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


