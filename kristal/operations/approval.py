"""A downgrade's human approval: the rules an answer must meet (an explicit decision, a named
approver, four eyes where the channel's policy asks for them, a timeout that rejects), and the
record of a decision that did not approve (a log line, an event and a report) before the run
fails with `activation_aborted`.
"""

from __future__ import annotations

from datetime import timedelta

from kristal.errors import ActivationAborted
from kristal.formats.time import parse_duration
from kristal.operations import events
from kristal.operations.outcome import Who
from kristal.operations.runner import Approval, Artifact, Runner
from kristal.trust.roots import ApprovalPolicy


def timeout_s(policy: ApprovalPolicy) -> float:
    return parse_duration(policy.timeout, at_least=timedelta(seconds=1)).total_seconds()


def rules_markdown(policy: ApprovalPolicy, who: Who) -> list[str]:
    """What the approver is told of the rules, beside the plan."""
    return [
        f"- asked for by **{who.operator}**: {who.reason}",
        "- decide **approve** or **reject** and give your name (recorded)"
        + (f"; four eyes: someone other than {who.operator}" if policy.four_eyes else ""),
        f"- no decision within {policy.timeout} rejects it",
    ]


def judge(run: Runner, channel_id: str, release_id: int, answer: Approval | None,
          policy: ApprovalPolicy, who: Who) -> Approval:
    """The answer if it approves under the channel's rules; else record why not and raise."""
    if answer is None:
        why, by = f"no decision within {policy.timeout}: rejected", None
    elif not answer.approve:
        why, by = f"rejected by {answer.approver}", answer.approver
        why += f" ({answer.comment})" if answer.comment else ""
    elif policy.four_eyes and answer.approver.strip().casefold() == who.operator.casefold():
        why, by = (f"{answer.approver} asked for it and may not approve it too: this channel "
                   "wants four eyes"), answer.approver
    else:
        return answer
    message = f"downgrade of {channel_id} to release {release_id} not approved: {why}"
    run.log(message, warning=True)
    run.emit(events.DOWNGRADE_NOT_APPROVED, channel_id=channel_id, payload={
        "channel_id": channel_id, "release_id": release_id, "operator": who.operator,
        "approver": by, "reason": why, "correlation_id": who.correlation_id})
    run.publish(Artifact("approval", channel_id, f"downgrade of {channel_id}: not approved",
                         markdown=f"# Downgrade `{channel_id}` → release {release_id}: "
                         f"not approved\n\n- {why}\n- asked for by {who.operator}: "
                         f"{who.reason}\n- nothing changed"))
    raise ActivationAborted(f"{message}; nothing changed")
