"""The nightly `reverify` flow: every live store re-verified; an alert on a failure, a rollback
only where the channel's policy says so (`kristal.operations.reverify`).
"""

from __future__ import annotations

from prefect import flow

from flows import prefect_fixes
from flows.params import ReverifyRequest, ReverifyResult
from kristal.operations import reverify as operation
from tasks.run_labels import fleet_tags, label_run
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="reverify", log_prints=True)
def reverify(request: ReverifyRequest | None = None) -> ReverifyResult:
    """Re-verify live stores: chain, signatures, expiry, objects, local index, checks."""
    request = request or ReverifyRequest()
    assert request.checks_timeout_s is not None
    chosen = request.channel_ids
    label_run("reverify " + ("every channel" if not chosen else ", ".join(chosen[:3])
                             + (f" and {len(chosen) - 3} more" if len(chosen) > 3 else "")),
              [*fleet_tags(chosen or []), "kristal-reverify"])
    return operation.reverify(
        PrefectRunner(), domain_context(),
        channel_ids=request.channel_ids,
        checks_timeout_s=request.checks_timeout_s,
        rollback_on_failure=request.rollback_on_failure,
        operator=request.operator,
    )
