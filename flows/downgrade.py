"""The `downgrade` flow: to an older generation only through a signed rollback authorization,
with the full verification, staging and post-activation gates, and an optional human approval
(a typed Prefect input form showing the plan) before the switch.
"""

from __future__ import annotations

from prefect import flow, pause_flow_run
from prefect.input import RunInput

from flows.activate import go_live
from flows.params import DowngradeRequest, RunOutcome
from flows.prefect_fixes import no_heartbeat_join
from flows.rollback import who_of
from kristal.errors import ActivationAborted
from kristal.operations.plan import ActivationPlan
from tasks.activation import plan_downgrade_task, stage_release
from tasks.runtime import channel_lock

no_heartbeat_join()  # before any run of this module's flows: see flows.prefect_fixes

APPROVAL_TIMEOUT_S = 3600


class Approval(RunInput):
    """What an approver fills in on the paused run's form."""

    approver: str
    approve: bool = False
    comment: str = ""


def plan_markdown(plan: ActivationPlan) -> str:
    summary = plan.summary()
    live, target = summary["live"] or {}, summary["target"]
    auth = plan.release.evidence.get("authorization", {})
    return "\n".join([
        f"## Downgrade `{plan.channel_id}`",
        f"- live now: release {live.get('release_id')} (generation {live.get('generation')})",
        f"- will be: release {target['release_id']} (generation {target['generation']})",
        f"- exchange: `{target['exchange_id']}`",
        *[f"- pack: `{p}`" for p in target["runtime_pack_ids"]],
        f"- authorization: `{auth.get('authorization_id')}` by {auth.get('issuer')}, "
        f"expires {auth.get('expires_at')}",
        *[f"- {note}" for note in plan.notes],
    ])


@flow(name="downgrade", log_prints=True)
def downgrade(request: DowngradeRequest) -> RunOutcome:
    who = who_of(request.operator, request.reason, request.correlation_id)
    with channel_lock(request.channel_id):
        plan = plan_downgrade_task(request.channel_id, request.release_id,
                                   request.authorization_id)
        stage_release(plan)
        if request.require_approval:
            answer = pause_flow_run(
                wait_for_input=Approval.with_initial_data(
                    description=plan_markdown(plan), approver="", approve=False),
                timeout=APPROVAL_TIMEOUT_S,
            )
            if not answer.approve:
                raise ActivationAborted(
                    f"downgrade of {request.channel_id} to release {request.release_id} was not "
                    f"approved by {answer.approver or 'anyone'}; nothing changed"
                )
            plan.release.evidence["approved_by"] = answer.approver
            plan.notes.append(f"approved by {answer.approver}: {answer.comment}")
        return go_live(plan, who)
