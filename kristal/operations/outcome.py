"""Who asked for an operation, and what it did: the outcome every operation returns (the CLI's
`--json`, the flow's result) and the one place an outcome becomes an exit status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from kristal.channel.bakes import BakeStatus

OutcomeKind = Literal[
    "activated",
    "downgraded",
    "resumed",
    "already_live",
    "planned",
    "rolled_back",
    "nothing_to_do",
    "baked",
]


@dataclass(frozen=True)
class Who:
    """Who asked, and why: recorded on every record this run writes."""

    operator: str
    reason: str
    correlation_id: str
    flow_run_id: str | None = None
    orchestrator: str = "prefect"  # "none": a break-glass run, recorded as such

    @classmethod
    def of(cls, operator: str, reason: str, correlation_id: str | None,
           run_id: str | None, orchestrator: str = "prefect") -> Who:
        """The correlation id defaults to the run's id (or `local` without a run)."""
        return cls(operator=operator, reason=reason,
                   correlation_id=correlation_id or run_id or "local", flow_run_id=run_id,
                   orchestrator=orchestrator)


class Outcome(BaseModel):
    """What an operation did to one channel."""

    channel_id: str
    outcome: OutcomeKind
    sequence: int | None = None
    activation_id: str | None = None
    release_id: int | None = None
    check_result: str | None = None
    message: str = ""
    plan: dict[str, Any] | None = None
    orchestrator: str = "prefect"
    bake: BakeStatus | None = None  # a release that bakes: where its bake stands
