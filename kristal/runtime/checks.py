"""Post-activation checks (DESIGN §7): a pinned reader is held to the expectations the pack
carries (row count, smoke queries with counts and digests, p95 latency, peak RSS).
A failed check is a result (`CheckReport.passed == False`), never an exception.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from kristal.formats.expectations import Expectations, SmokeQuery, TriplePattern
from kristal.runtime.measure import MIN_RUNS, measure
from kristal.runtime.sqlite_index import PinnedReader, result_digest


class CheckOutcome(BaseModel):
    name: str
    passed: bool
    expected: str
    measured: str


class CheckReport(BaseModel):
    passed: bool
    outcomes: list[CheckOutcome]
    row_count: int
    latency_p95_ms: float
    peak_rss_mb: float
    runs: int


def derive_expectations(
    db_path: Path, *, latency_p95_ms: float = 50, max_rss_mb: float = 512
) -> Expectations:
    """What the publisher signs when given no expectations file: the row count and lookups of
    the subjects of the first, middle and last rows (canonical order), with counts and digests.
    Picked by position, so the choice is deterministic and costs three index probes. (The
    publisher derives the same from its writing pass, `publish.release_data`.)"""
    with PinnedReader(db_path) as reader:
        total = reader.count()
        subjects: list[str] = []
        for position in sorted({1, (total + 1) // 2, total}):
            row = reader.row_at(position) if total else None
            if row is not None and row["subject"] not in subjects:
                subjects.append(row["subject"])
        found = []
        for subject in subjects:
            rows = reader.query(subject, None, None)
            found.append((subject, len(rows), result_digest(rows)))
    return expectations_of(total, found, latency_p95_ms=latency_p95_ms, max_rss_mb=max_rss_mb)


def expectations_of(
    total: int, subjects: list[tuple[str, int, str]], *, latency_p95_ms: float = 50,
    max_rss_mb: float = 512
) -> Expectations:
    """The derived expectations: `total` rows and, per (subject, count, digest), its lookup."""
    return Expectations(
        row_count=total,
        smoke_queries=[
            SmokeQuery(pattern=TriplePattern(s=subject), expect_count=count,
                       expect_sha256=digest)
            for subject, count, digest in subjects
        ],
        latency_p95_ms=latency_p95_ms,
        max_rss_mb=max_rss_mb,
    )


def run_checks(reader: PinnedReader, expectations: Expectations, *, runs: int = MIN_RUNS,
               warmup: int = 5) -> CheckReport:
    """`measure.measure` in this process, validated (tests and benchmarks; activations measure
    in a process of their own: `checkrunner.run_checks_isolated`)."""
    return CheckReport.model_validate(
        measure(reader, expectations.model_dump(mode="json"), runs=runs, warmup=warmup))
