"""The bake (issue 16): a channel's bake policy (trust file), the plan an activation record
carries once resolved, and the signed records written while a release proves itself live
(one measurement per interval, then one verdict).

A policy is local configuration like every policy; a request may override its duration and
interval only within the policy's bounds. The resolved plan is part of the signed activation
record, so the bake that runs is the one the switch promised.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, field_validator

from kristal.errors import UsageInvalid
from kristal.formats.models import NonEmpty, Sha256Id, Strict
from kristal.formats.time import parse_duration

_CONDITION = re.compile(
    r"^\s*(?:(<=|>=|==|<|>)\s*(\S+)|between\s+(\S+)\s+(?:and\s+)?(\S+))\s*$")
_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
NO_BAKE = ("0", "0s", "none", "off")


def duration_s(text: str, what: str) -> float:
    """Seconds of a CLI duration (`30s`, `10m`, ISO 8601); `0`, `0s`, `none`, `off` are 0."""
    if text.strip().lower() in NO_BAKE:
        return 0.0
    try:
        return parse_duration(text).total_seconds()
    except UsageInvalid as exc:
        raise UsageInvalid(f"{what}: {exc.message}") from None


def _number(text: str) -> float:
    value = float(text)
    if math.isnan(value):
        raise ValueError("NaN")
    return value


def parse_condition(text: str) -> tuple[str, float, float | None]:
    """`< 0.01`, `<= x`, `> x`, `>= x`, `== x`, `between A B` (inclusive) as (op, a, b)."""
    match = _CONDITION.fullmatch(text)
    try:
        if match and match.group(1):
            return match.group(1), _number(match.group(2)), None
        if match:
            low, high = _number(match.group(3)), _number(match.group(4))
            if low <= high:
                return "between", low, high
    except ValueError:
        pass
    raise ValueError(f"condition {text!r} is not like '< 0.01', '>= 5' or 'between 0 0.5'")


def condition_holds(condition: str, value: float) -> bool:
    op, a, b = parse_condition(condition)
    if op == "between":
        assert b is not None
        return a <= value <= b
    return {"<": value < a, "<=": value <= a, ">": value > a, ">=": value >= a,
            "==": value == a}[op]


class MetricCheck(Strict):
    """A PromQL query (Prometheus' `/api/v1/query`) and the condition every sample it returns
    must meet. `$channel`, `$tenant`, `$environment`, `$region`, `$release`, `$activation_id`
    and `$sequence` are replaced before it is sent (PromQL's own braces stay as written)."""

    name: Annotated[str, Field(pattern=_NAME)]
    query: NonEmpty
    condition: NonEmpty

    @field_validator("condition")
    @classmethod
    def _condition_parses(cls, value: str) -> str:
        parse_condition(value)
        return value


class BakePolicy(Strict):
    """A channel's bake (trust-file entry `bake`). Without one, `dev` environments do not bake
    and every other environment bakes 10 minutes, measuring every minute."""

    duration: NonEmpty = "10m"
    interval: NonEmpty = "1m"
    # What a request may ask for instead (`--bake`, `--bake-interval`).
    min_duration: NonEmpty = "0s"
    max_duration: NonEmpty = "24h"
    min_interval: NonEmpty = "1s"
    pack_checks: bool = True  # the pack's own checks through the pinned reader, each time
    metrics: list[MetricCheck] = Field(default_factory=list)
    failure_limit: Annotated[StrictInt, Field(ge=1)] = 1
    inconclusive_limit: Annotated[StrictInt, Field(ge=1)] = 3
    # A bake with no measurement for this long has stopped (default: 3 intervals + 60 s).
    stale_after: str | None = None

    @field_validator("duration", "interval", "min_duration", "max_duration", "min_interval",
                     "stale_after")
    @classmethod
    def _durations_parse(cls, value: str | None) -> str | None:
        if value is not None:
            duration_s(value, "bake policy")
        return value


def default_policy(channel_id: str) -> BakePolicy:
    environment = channel_id.split("/")[1]
    return BakePolicy(duration="0s") if environment == "dev" else BakePolicy()


class BakePlan(Strict):
    """The bake an activation record promises: `total` measurements, `interval_s` apart."""

    duration_s: float = Field(gt=0)
    interval_s: float = Field(gt=0)
    total: int = Field(ge=1)
    pack_checks: bool
    metrics: list[MetricCheck]
    failure_limit: int = Field(ge=1)
    inconclusive_limit: int = Field(ge=1)
    stale_after_s: float = Field(gt=0)
    requested: bool  # duration or interval came from the request, not the policy


def resolve_bake(policy: BakePolicy | None, channel_id: str, *, duration: str | None = None,
                 interval: str | None = None) -> BakePlan | None:
    """The plan for one activation (None: no bake). A request's duration and interval must lie
    within the policy's bounds (`usage_invalid` otherwise, before anything is done)."""
    base = policy or default_policy(channel_id)
    total_s = duration_s(duration or base.duration, "bake duration")
    every_s = duration_s(interval or base.interval, "bake interval")
    if duration is not None:
        low, high = duration_s(base.min_duration, "min"), duration_s(base.max_duration, "max")
        if not low <= total_s <= high:
            raise UsageInvalid(f"bake {duration} is outside what {channel_id} allows "
                               f"({base.min_duration} to {base.max_duration})")
    if total_s == 0:
        return None
    if interval is not None and every_s < duration_s(base.min_interval, "min"):
        raise UsageInvalid(f"bake interval {interval} is shorter than {channel_id} allows "
                           f"({base.min_interval})")
    if every_s <= 0 or every_s > total_s:
        raise UsageInvalid(f"bake interval {interval or base.interval} must be more than 0 and "
                           f"at most the bake's duration ({duration or base.duration})")
    stale = (duration_s(base.stale_after, "stale_after") if base.stale_after
             else 3 * every_s + 60)
    return BakePlan(
        duration_s=total_s, interval_s=every_s, total=math.ceil(total_s / every_s - 1e-9),
        pack_checks=base.pack_checks, metrics=list(base.metrics),
        failure_limit=base.failure_limit, inconclusive_limit=base.inconclusive_limit,
        stale_after_s=stale, requested=duration is not None or interval is not None,
    )


MeasurementResult = Literal["passed", "failed", "inconclusive"]


class MetricResult(Strict):
    name: str
    query: str  # as sent, variables replaced
    condition: str
    values: list[float]
    result: MeasurementResult
    detail: str


class _BakeRecord(Strict):
    """What binds a bake record to its activation record, and its signature."""

    channel_id: str
    sequence: int
    activation_id: str
    release_id: int
    total: int = Field(ge=1)
    reason: str
    created_at: datetime
    record_id: Sha256Id | None = None
    signatures: list[dict[str, Any]] = Field(default_factory=list)


class BakeMeasurement(_BakeRecord):
    """Measurement `n` of `total` of one activation's bake (write-once, signed)."""

    artifact_type: Literal["kristal_bake_measurement"] = "kristal_bake_measurement"
    n: int = Field(ge=1)
    result: MeasurementResult
    figures: dict[str, Any]
    metrics: list[MetricResult]


VerdictResult = Literal["passed", "failed", "superseded"]
BakeState = Literal["none", "baking", "passed", "failed", "superseded"]


class BakeVerdict(_BakeRecord):
    """How one activation's bake ended (write-once, signed): the first verdict written stands."""

    artifact_type: Literal["kristal_bake_verdict"] = "kristal_bake_verdict"
    result: VerdictResult
    done: int = Field(ge=0)
    superseded_by: int | None = None
