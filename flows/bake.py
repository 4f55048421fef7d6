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
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="bake", log_prints=True,
      flow_run_name="bake {request.channel_id}")
def bake(request: BakeRequest) -> list[RunOutcome]:
    """Measure live releases until their bakes pass, or roll back the ones that fail."""
    run = PrefectRunner()
    targets = [(t.channel_id, t.activation_id) for t in (request, *request.more)]
    return operation.bake_channels(
        run, domain_context(), targets,
        who=Who.of(request.operator, request.reason, None, run.run_id),
    )
