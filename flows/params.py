"""Flow parameters and results as pydantic models: they render as typed forms in the Prefect UI
and are validated by the server when a run is created.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CHANNEL_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}/[a-z0-9][a-z0-9-]{0,62}/[a-z0-9][a-z0-9-]{0,62}$"
ID_PATTERN = r"^sha256:[0-9a-f]{64}$"


class Operator(BaseModel):
    model_config = ConfigDict(extra="forbid")

    operator: str = Field(min_length=1, description="Who is doing this (recorded).")
    reason: str = Field(min_length=1, description="Why (recorded in the activation record).")
    correlation_id: str | None = Field(
        None, description="Ties this run to a ticket or incident; defaults to the flow run id."
    )


class ActivateRequest(Operator):
    channel_id: str = Field(pattern=CHANNEL_PATTERN, description="<tenant>/<environment>/<region>")
    release_id: int | None = Field(None, ge=1, description="Release to activate (from the index).")
    exchange_id: str | None = Field(
        None, pattern=ID_PATTERN, description="Or: the exact Exchange ID ..."
    )
    runtime_pack_ids: list[str] | None = Field(None, description="... with its exact pack IDs.")
    force: bool = Field(
        False, description="Re-activate a quarantined release or resume the live one."
    )
    dry_run: bool = Field(False, description="Verify and stage only; report the plan.")


class RollbackRequest(Operator):
    channel_id: str = Field(pattern=CHANNEL_PATTERN)
    to: Literal["last-known-good", "previous"] | int = Field(
        "last-known-good", description="last-known-good, previous, or a history sequence number."
    )
    expected_activation_id: str | None = Field(
        None, description="Only roll back if this activation is still live (no double rollback)."
    )
    failed_flow_run_id: str | None = Field(
        None,
        description="Automations: roll back only if the live record was switched by this failed "
        "activate/downgrade run (its activation becomes the expected one).",
    )
    automatic: bool = Field(
        False,
        description="A failed check reported after the fact: go to the record's previous release "
        "(even across generations) and quarantine the failed one.",
    )


class RunOutcome(BaseModel):
    """What a flow run did, for the CLI's --json and for callers."""

    channel_id: str
    outcome: Literal[
        "downgraded",
        "activated",
        "resumed",
        "already_live",
        "planned",
        "rolled_back",
        "nothing_to_do",
        "activated_then_rolled_back",
    ]
    sequence: int | None = None
    activation_id: str | None = None
    release_id: int | None = None
    check_result: str | None = None
    message: str = ""
    plan: dict | None = None


class DowngradeRequest(Operator):
    channel_id: str = Field(pattern=CHANNEL_PATTERN)
    release_id: int = Field(ge=1, description="The blessed target release.")
    authorization_id: str = Field(pattern=ID_PATTERN, description="Its rollback authorization.")
    require_approval: bool = Field(
        False, description="Pause for a human approval before switching."
    )
