"""Expectations a Runtime Pack carries for its post-activation checks (DESIGN §7): the row
count, smoke queries with counts and digests, a p95 latency and a peak-RSS budget. The same JSON
is the publisher's `--expect-file` and the pack's `extensions["kristal.activate/expectations"]`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

_Value = Annotated[str, Field(min_length=1)]


class TriplePattern(BaseModel):
    model_config = ConfigDict(extra="forbid")

    s: _Value | None = None
    p: _Value | None = None
    o: _Value | None = None

    def label(self) -> str:
        return " ".join("?" if v is None else repr(v) for v in (self.s, self.p, self.o))


class SmokeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pattern: TriplePattern
    expect_count: Annotated[int, Field(ge=0)]
    expect_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class Expectations(BaseModel):
    """The `--expect-file` JSON and the pack's `extensions["kristal.activate/expectations"]`."""

    model_config = ConfigDict(extra="forbid")

    row_count: Annotated[int, Field(ge=0)]
    smoke_queries: list[SmokeQuery]
    latency_p95_ms: Annotated[float, Field(gt=0)]
    max_rss_mb: Annotated[float, Field(gt=0)]


class ExpectationsGiven(BaseModel):
    """An `--expect-file`: any of the fields of `Expectations`; the ones left out are derived
    from the data as without the file (`Expectations.with_given`)."""

    model_config = ConfigDict(extra="forbid")

    row_count: Annotated[int, Field(ge=0)] | None = None
    smoke_queries: list[SmokeQuery] | None = None
    latency_p95_ms: Annotated[float, Field(gt=0)] | None = None
    max_rss_mb: Annotated[float, Field(gt=0)] | None = None

    def over(self, derived: Expectations) -> Expectations:
        """`derived` with every field this file names replaced by the file's (null: derived)."""
        return Expectations.model_validate(
            {**derived.model_dump(), **self.model_dump(exclude_unset=True, exclude_none=True)})
