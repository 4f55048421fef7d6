"""What the failure responder (`tasks.responder`, `kristalctl respond`) does with a report: the
guarded `rollback` flow, called in the responder's own process (it shows as a `rollback` flow
run, operator `responder`, correlation id the report's event id, as the automation's run has).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from flows.params import RollbackRequest, RunOutcome
from flows.rollback import rollback
from kristal.errors import KristalError
from tasks.locks import ensure_channel_limits
from tasks.responder import Handled, Report, Result
from tasks.runtime import domain_context

OPERATOR = "responder"


def warm_up(channel_ids: Sequence[str] = ()) -> None:
    """Build the domain context and the named channels' locks now (this module's imports
    already loaded the rollback flow, its runner and tasks), so the first report pays none of
    it. The first flow run of the process still pays Prefect's own first-run set-up. An
    unreachable Prefect API is not an error here: the responder waits for it like the stream."""
    domain_context()
    with contextlib.suppress(Exception):
        ensure_channel_limits(channel_ids)


def roll_back(report: Report) -> Handled:
    """Roll the report's channel back if, and only if, the reported activation is still live
    (DESIGN §6 invariant 7); otherwise nothing changes and the outcome says why."""
    request = RollbackRequest(
        channel_id=report.channel_id, expected_activation_id=report.activation_id,
        automatic=True, operator=OPERATOR, reason=f"monitor: {report.reason}",
        correlation_id=report.event_id)
    run_id: str | None = None

    def handled(result: Result, message: str, *, error_code: str | None = None,
                outcome: RunOutcome | None = None) -> Handled:
        return Handled(event_id=report.event_id, result=result, message=message,
                       channel_id=report.channel_id, activation_id=report.activation_id,
                       release_id=outcome.release_id if outcome else None,
                       sequence=outcome.sequence if outcome else None,
                       flow_run_id=run_id, error_code=error_code,
                       seconds=report.seconds_since(), delivery_s=report.delivery_s)

    try:
        state = rollback(request, return_state=True)
        run_id = str(state.state_details.flow_run_id)
        outcome = state.result()
    except KristalError as exc:
        return handled("failed", exc.message, error_code=exc.code)
    except Exception as exc:  # one bad report must not stop the responder
        return handled("failed", f"{type(exc).__name__}: {exc}", error_code="internal_error")
    if outcome.outcome == "rolled_back":
        return handled("rolled_back", outcome.message, outcome=outcome)
    return handled("nothing_to_do", outcome.message)
