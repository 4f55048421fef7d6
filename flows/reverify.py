"""The nightly `reverify` flow: every live store re-verified; an alert on a failure, a rollback
only where the channel's policy says so (`kristal.operations.reverify`).
"""

from __future__ import annotations

from prefect import flow

from flows import prefect_fixes
from flows.params import ReverifyRequest, ReverifyResult
from kristal.operations import reverify as operation
from tasks.runner import PrefectRunner
from tasks.runtime import domain_context

prefect_fixes.apply()  # before any run of this module's flows: see flows.prefect_fixes


@flow(name="reverify", log_prints=True)
def reverify(request: ReverifyRequest | None = None) -> ReverifyResult:
    """Re-verify live stores: chain, signatures, expiry, objects, local index, checks."""
    request = request or ReverifyRequest()
    assert request.checks_timeout_s is not None
    return operation.reverify(
        PrefectRunner(), domain_context(),
        channel_ids=request.channel_ids,
        checks_timeout_s=request.checks_timeout_s,
        rollback_on_failure=request.rollback_on_failure,
        operator=request.operator,
    )
