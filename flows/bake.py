"""The `bake` flow: a live release measured every interval until its bake passes (it becomes
known-good) or fails (quarantined and rolled back, the run fails); one run per bake, holding
no lock (`kristal.operations.bake`).
"""

from __future__ import annotations

from prefect import flow

from flows import prefect_fixes
from flows.params import BakeRequest, RunOutcome
from kristal.operations import bake as operation
from kristal.operations.outcome import Who
from tasks.run_labels import fleet_tags, label_run
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="bake", log_prints=True,
      flow_run_name="bake {request.channel_id}")
def bake(request: BakeRequest) -> list[RunOutcome]:
    """Measure live releases until their bakes pass, or roll back the ones that fail."""
    targets = [(t.channel_id, t.activation_id) for t in (request, *request.more)]
    more = f" and {len(targets) - 1} more" if len(targets) > 1 else ""
    label_run(f"bake {request.channel_id}{more}",
              [*fleet_tags([c for c, _ in targets]), "kristal-bake"])
    run = PrefectRunner()
    return operation.bake_channels(
        run, domain_context(), targets,
        who=Who.of(request.operator, request.reason, None, run.run_id),
    )
