"""The `fleet-activate` flow: one release to many channels in waves, canary first, halting at
the first failed wave and vetoing the rest (`kristal.operations.fleet`); with `fan_out`, each
channel as a run of the `activate` deployment on its region's work queue (`tasks.fanout`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import State

from flows import prefect_fixes
from flows.params import FleetOutcome, FleetRequest
from kristal.operations import fleet as operation
from kristal.operations.outcome import Who
from tasks.bake_launch import start_bake_run
from tasks.run_labels import ended, fleet_tags, label_run
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="fleet-activate", log_prints=True)
def fleet_activate(request: FleetRequest) -> FleetOutcome:
    """Activate one release across many channels in waves (canary first); halt and veto."""
    label_run(f"{'dry run: ' if request.dry_run else ''}fleet-activate release "
              f"{request.release_id} → {len(request.channel_ids)} channels",
              [*fleet_tags(request.channel_ids), "kristal-fleet", f"release:{request.release_id}"])
    run = PrefectRunner()
    outcome = operation.fleet_activate(
        run, domain_context(),
        channel_ids=request.channel_ids,
        release_id=request.release_id,
        canary=request.canary_channel_ids,
        wave_size=request.wave_size,
        max_parallel=request.max_parallel,
        revoke_vetoed_channels=request.revoke_vetoed,
        dry_run=request.dry_run,
        fan_out=request.fan_out,
        who=Who.of(request.operator, request.reason, request.correlation_id, run.run_id),
    )
    baking = [(c.channel_id, c.activation_id) for c in outcome.channels
              if c.baking and c.activation_id is not None]
    if baking:  # one bake run for every channel that went live baking
        outcome.bake_note = start_bake_run(baking, request.operator)
    live = sum(c.result in ("activated", "already_live", "resumed") for c in outcome.channels)
    summary = (f"{outcome.outcome}: {live} of {len(outcome.channels)} channels live"
               + (f", halted at wave {outcome.halted_at_wave}, {len(outcome.vetoed)} vetoed"
                  if outcome.halted_at_wave is not None else ""))
    # A halted fleet, or one where a channel refused or was rolled back, did not do what it was
    # asked: the run ends Failed (its result is still the outcome). A dry run reports.
    failed = outcome.outcome != "planned" and outcome.exit_status != 0
    return ended(outcome, message=summary, failed=failed)  # type: ignore[return-value]


def run_fleet(request: FleetRequest) -> tuple[FleetOutcome, State[Any]]:
    """Run the flow here and return its outcome with its final state (a halted fleet's run is
    Failed and still has its outcome)."""
    state = fleet_activate(request, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if not isinstance(outcome, FleetOutcome):  # the flow raised: its exception
        raise outcome if isinstance(outcome, BaseException) else RuntimeError(str(outcome))
    return outcome, state
