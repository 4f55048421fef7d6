"""Post-activation checks (DESIGN §7): a pinned reader is held to the expectations the pack
carries (row count, smoke queries with counts and digests, p95 latency, peak RSS).
A failed check is a result (`CheckReport.passed == False`), never an exception.
"""

from __future__ import annotations

import math
import resource
import sqlite3
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from kristal.errors import UsageInvalid
from kristal.formats.expectations import Expectations, SmokeQuery, TriplePattern
from kristal.runtime.sqlite_index import PinnedReader, result_digest

MIN_RUNS = 50
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
    Picked by position, so the choice is deterministic and costs three index probes."""
    with PinnedReader(db_path) as reader:
        total = reader.count()
        subjects: list[str] = []
        for position in sorted({1, (total + 1) // 2, total}):
            row = reader.row_at(position) if total else None
            if row is not None and row["subject"] not in subjects:
                subjects.append(row["subject"])
        smoke = []
        for subject in subjects:
            rows = reader.query(subject, None, None)
            smoke.append(
                SmokeQuery(
                    pattern=TriplePattern(s=subject),
                    expect_count=len(rows),
                    expect_sha256=result_digest(rows),
                )
            )
    return Expectations(
        row_count=total,
        smoke_queries=smoke,
        latency_p95_ms=latency_p95_ms,
        max_rss_mb=max_rss_mb,
    )


def _p95(samples: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _peak_rss_mb() -> float:
    """This process's own peak RSS. On Linux that is VmHWM: `ru_maxrss` also carries the RSS of
    the parent at fork time across `execve` (measured: a checks process spawned by a 535 MB
    test runner reported 535 MB)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Restart the process's peak-RSS count (Linux >= 4.0), so a later reading covers only what
    follows, e.g. the checks and not an index build earlier in the same process. Returns
    whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def _measure(
    reader: PinnedReader,
    expectations: Expectations,
    outcomes: list[CheckOutcome],
    *,
    runs: int,
    warmup: int,
) -> tuple[int, float]:
    """Row count, smoke results and latency; appends outcomes, returns (row_count, p95)."""
    row_count = reader.count()
    outcomes.append(
        CheckOutcome(
            name="row_count",
            passed=row_count == expectations.row_count,
            expected=str(expectations.row_count),
            measured=str(row_count),
        )
    )

    for i, smoke in enumerate(expectations.smoke_queries):
        pattern = smoke.pattern
        rows = reader.query(pattern.s, pattern.p, pattern.o)
        name = f"smoke_query[{i}] {pattern.label()}"
        outcomes.append(
            CheckOutcome(
                name=f"{name} count",
                passed=len(rows) == smoke.expect_count,
                expected=str(smoke.expect_count),
                measured=str(len(rows)),
            )
        )
        if smoke.expect_sha256 is not None:
            digest = result_digest(rows)
            outcomes.append(
                CheckOutcome(
                    name=f"{name} sha256",
                    passed=digest == smoke.expect_sha256,
                    expected=smoke.expect_sha256,
                    measured=digest,
                )
            )

    # Without smoke queries the latency is still measured, on a one-row probe.
    patterns = [(q.pattern.s, q.pattern.p, q.pattern.o, None) for q in expectations.smoke_queries]
    if not patterns:
        patterns = [(None, None, None, 1)]
    for _ in range(warmup):
        for s, p, o, limit in patterns:
            reader.query(s, p, o, limit)
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(runs):
        for s, p, o, limit in patterns:
            start = clock()
            reader.query(s, p, o, limit)
            samples.append((clock() - start) * 1000.0)
    p95 = _p95(samples)
    outcomes.append(
        CheckOutcome(
            name="latency_p95_ms",
            passed=p95 <= expectations.latency_p95_ms,
            expected=f"<= {expectations.latency_p95_ms:g}",
            measured=f"{p95:.3f}",
        )
    )
    return row_count, p95


def run_checks(
    reader: PinnedReader,
    expectations: Expectations,
    *,
    runs: int = MIN_RUNS,
    warmup: int = 5,
) -> CheckReport:
    """Hold `reader` to `expectations`. Each smoke query is timed once per run, after `warmup`
    untimed runs; the p95 is over all timed executions. Peak RSS is this process's maximum
    resident set (`ru_maxrss`), as the process that serves the queries is the one judged
    (call `reset_peak_rss()` first to leave out an earlier index build in the same process)."""
    if runs < MIN_RUNS:
        raise UsageInvalid(f"latency needs at least {MIN_RUNS} timed runs, got {runs}")
    if warmup < 0:
        raise UsageInvalid("warmup must be >= 0")
    outcomes: list[CheckOutcome] = []
    # -1 marks a figure that could not be measured (the failing query is in the outcomes).
    row_count = -1
    p95 = -1.0
    try:
        row_count, p95 = _measure(reader, expectations, outcomes, runs=runs, warmup=warmup)
    except sqlite3.Error as exc:
        # A damaged or unreadable index is a failed check, not a crash of the checker.
        outcomes.append(
            CheckOutcome(
                name="query_error", passed=False, expected="queries succeed", measured=str(exc)
            )
        )

    peak = _peak_rss_mb()
    outcomes.append(
        CheckOutcome(
            name="max_rss_mb",
            passed=peak <= expectations.max_rss_mb,
            expected=f"<= {expectations.max_rss_mb:g}",
            measured=f"{peak:.1f}",
        )
    )

    return CheckReport(
        passed=all(outcome.passed for outcome in outcomes),
        outcomes=outcomes,
        row_count=row_count,
        latency_p95_ms=p95,
        peak_rss_mb=peak,
        runs=runs,
    )
