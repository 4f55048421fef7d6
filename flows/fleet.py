"""The `fleet-activate` flow: one release to many channels in waves, canary first, halting at
the first failed wave and vetoing the rest (`kristal.operations.fleet`); with `fan_out`, each
channel as a run of the `activate` deployment on its region's work queue (`tasks.fanout`).
"""

from __future__ import annotations

from prefect import flow

from flows import prefect_fixes
from flows.params import FleetOutcome, FleetRequest
from kristal.operations import fleet as operation
from kristal.operations.outcome import Who
from tasks.bake_launch import start_bake_run
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="fleet-activate", log_prints=True)
def fleet_activate(request: FleetRequest) -> FleetOutcome:
    """Activate one release across many channels in waves (canary first); halt and veto."""
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
    return outcome
