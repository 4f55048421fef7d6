"""Flow parameters and results as pydantic models: they render as typed forms in the Prefect UI
and are validated by the server when a run is created.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict

from kristal.config import DEFAULT_CHECKS_TIMEOUT_S, checks_timeout_s
from kristal.formats.models import CHANNEL_PATTERN
from kristal.operations.fleet_channel import ChannelOutcome, FleetOutcome
from kristal.operations.outcome import Outcome as RunOutcome
from kristal.operations.reverify import ReverifyResult

__all__ = ["ActivateRequest", "BakeRequest", "BakeTarget", "ChannelOutcome",
           "DowngradeRequest", "FleetOutcome", "FleetRequest", "Operator", "ReverifyRequest",
           "ReverifyResult", "RollbackRequest", "RunOutcome"]

ID_PATTERN = r"^sha256:[0-9a-f]{64}$"


_WHO = ("operator", "reason", "correlation_id")


def _target_first(schema: JsonDict) -> None:
    """The run form asks what to act on first (channel, release), who and why after: the UI
    lays a request's fields out in the schema's order, which pydantic starts with the base
    class's (these three)."""
    properties = schema.get("properties")
    if isinstance(properties, dict):
        ordered = {k: v for k, v in properties.items() if k not in _WHO}
        ordered.update({k: properties[k] for k in _WHO if k in properties})
        schema["properties"] = ordered


class Operator(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_target_first)

    operator: str = Field(min_length=1, description="Who is doing this (recorded).")
    reason: str = Field(min_length=1, description="Why (recorded in the activation record).")
    correlation_id: str | None = Field(
        None, description="Ties this run to a ticket or incident; defaults to the flow run id."
    )


def _activate_schema(schema: JsonDict) -> None:
    _target_first(schema)
    # A release id or an exact Exchange ID: refused when the run is created (the server and
    # the UI validate parameters against this schema), not by a run that starts and fails.
    schema["anyOf"] = [
        {"required": ["release_id"], "properties": {"release_id": {"type": "integer"}}},
        {"required": ["exchange_id"], "properties": {"exchange_id": {"type": "string"}}},
    ]


class ActivateRequest(Operator):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_activate_schema)

    channel_id: str = Field(pattern=CHANNEL_PATTERN,
                            description="tenant/environment/region, e.g. acme/prod/eu-west-1.")
    release_id: int | None = Field(None, ge=1, description="Release to activate (from the index).")
    exchange_id: str | None = Field(
        None, pattern=ID_PATTERN, description="Or: the exact Exchange ID ..."
    )
    runtime_pack_ids: list[str] | None = Field(None, description="... with its exact pack IDs.")
    force: bool = Field(
        False, description="Re-activate a quarantined release or resume the live one."
    )
    dry_run: bool = Field(False, description="Verify and stage only; report the plan.")
    bake: str | None = Field(
        None, description="How long the release must hold up live before it counts as "
        "known-good (30s, 10m, 1h; 0 for none); empty: the channel's bake policy."
    )
    bake_interval: str | None = Field(
        None, description="How often it is measured while baking; empty: the policy's."
    )

    @model_validator(mode="after")
    def _a_target(self) -> ActivateRequest:
        if self.release_id is None and self.exchange_id is None:
            raise ValueError("give a release id, or an exact Exchange ID with its pack IDs")
        return self


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


class BakeTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel_id: str = Field(pattern=CHANNEL_PATTERN,
                            description="tenant/environment/region, e.g. acme/prod/eu-west-1.")
    activation_id: str | None = Field(
        None, description="The activation to bake; empty: the live one. A bake whose "
        "activation is no longer live ends at once (superseded)."
    )


class BakeRequest(BakeTarget):
    more: list[BakeTarget] = Field(
        [], description="More channels baked in the same run (a fleet's), each on its clock."
    )
    operator: str = Field("bake", min_length=1, description="Recorded on a rollback.")
    reason: str = Field("bake", min_length=1, description="Recorded on a rollback.")


class DowngradeRequest(Operator):
    channel_id: str = Field(pattern=CHANNEL_PATTERN)
    release_id: int = Field(ge=1, description="The blessed target release.")
    authorization_id: str = Field(pattern=ID_PATTERN, description="Its rollback authorization.")
    require_approval: bool = Field(
        False, description="Pause for a human approval before switching."
    )


def _channels(value: list[str] | None) -> list[str] | None:
    for channel_id in value or []:
        if not re.fullmatch(CHANNEL_PATTERN, channel_id):
            raise ValueError(f"{channel_id!r} is not <tenant>/<environment>/<region>")
    return value


class ReverifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel_ids: list[str] | None = Field(
        None, description="Channels to re-verify (tenant/environment/region); empty: all."
    )
    checks_timeout_s: float | None = Field(
        None,
        ge=0,
        description=(
            "A live record whose post-activation checks are missing for longer than this is "
            "treated as failed; empty: $KRISTAL_CHECKS_TIMEOUT_S, else "
            f"{DEFAULT_CHECKS_TIMEOUT_S:.0f}."
        ),
    )
    rollback_on_failure: list[str] = Field(
        [],
        description=(
            "Channels whose policy is to roll back (to last-known-good) when re-verification "
            "fails; every other channel is only alerted (kristal.reverify.failed)."
        ),
    )
    operator: str = Field("reverify", min_length=1, description="Recorded on a rollback.")

    @model_validator(mode="after")
    def _resolve(self) -> ReverifyRequest:
        _channels([*(self.channel_ids or []), *self.rollback_on_failure])
        if self.checks_timeout_s is None:
            self.checks_timeout_s = checks_timeout_s()
        return self


class FleetRequest(Operator):
    channel_ids: list[str] = Field(
        min_length=1, description="Every channel of the fleet, in rollout order."
    )
    release_id: int = Field(ge=1, description="The release, published in every channel's index.")
    canary_channel_ids: list[str] | None = Field(
        None, description="Activated first, alone; default the first channel ([] for none)."
    )
    wave_size: int = Field(10, ge=1, description="Channels per wave after the canary.")
    max_parallel: int = Field(4, ge=1, le=64, description="Channels activated at once.")
    revoke_vetoed: bool = Field(
        False,
        description="On a halt, also revoke the release (reason fleet-veto) in the vetoed "
        "channels' indexes; needs the channel-authority key (KRISTAL_KEY_DIR).",
    )
    dry_run: bool = Field(
        False,
        description="Verify the release in every channel (against its own index) and stage "
        "it once; report what each channel would do. Nothing is switched.",
    )
    fan_out: bool = Field(
        False,
        description="Run each channel's activation as a run of the activate deployment on the "
        "work queue of its region (kristal-REGION), so that region's workers stage it from "
        "their own store; waves, halt and veto as without. Every region needs its queue "
        "(kristalctl deploy --pool NAME --region R). A dry run still runs here, after "
        "checking the queues.",
    )

    @field_validator("channel_ids", "canary_channel_ids")
    @classmethod
    def _valid_channels(cls, value: list[str] | None) -> list[str] | None:
        return _channels(value)
