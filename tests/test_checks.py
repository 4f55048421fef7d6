"""Post-activation checks: pass on the right expectations, fail (never raise) each wrong way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from kristal.errors import UsageInvalid
from kristal.formats.expectations import Expectations, SmokeQuery, TriplePattern
from kristal.publish.datagen import generate_triples
from kristal.runtime.checks import derive_expectations, run_checks
from kristal.runtime.measure import reset_peak_rss
from kristal.runtime.sqlite_index import PinnedReader, build_index, result_digest


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("checks")
    src = work / "t.jsonl"
    digest = generate_triples(src, 20_000, seed=4)
    path = work / "t.db"
    build_index(src, path, source_sha256=digest)
    return path


@pytest.fixture()
def reader(db: Path):
    with PinnedReader(db) as r:
        yield r


def test_derive_expectations_is_deterministic_and_picks_first_middle_last(db: Path) -> None:
    first = derive_expectations(db)
    assert first == derive_expectations(db)
    assert first.row_count == 20_000
    assert first.latency_p95_ms == 50 and first.max_rss_mb == 512
    subjects = [q.pattern.s for q in first.smoke_queries]
    with PinnedReader(db) as r:
        ends = [r.row_at(1), r.row_at(10_000), r.row_at(20_000)]
        assert subjects == [row["subject"] for row in ends if row]
        for q in first.smoke_queries:
            rows = r.query(q.pattern.s, None, None)
            assert q.expect_count == len(rows) > 0
            assert q.expect_sha256 == result_digest(rows)


def test_checks_pass_on_the_right_expectations(reader: PinnedReader, db: Path) -> None:
    report = run_checks(reader, derive_expectations(db, latency_p95_ms=1000, max_rss_mb=100_000))
    assert report.passed, report.outcomes
    assert report.row_count == 20_000 and report.runs == 50
    assert 0 < report.latency_p95_ms < 1000 and report.peak_rss_mb > 0
    names = [o.name for o in report.outcomes]
    assert names[0] == "row_count" and names[-2:] == ["latency_p95_ms", "max_rss_mb"]
    assert sum(name.endswith("sha256") for name in names) == 3


def _failing(reader: PinnedReader, expectations: Expectations) -> set[str]:
    report = run_checks(reader, expectations)
    assert not report.passed
    return {o.name for o in report.outcomes if not o.passed}


def test_wrong_row_count_fails(reader: PinnedReader, db: Path) -> None:
    good = derive_expectations(db, latency_p95_ms=1000, max_rss_mb=100_000)
    assert _failing(reader, good.model_copy(update={"row_count": 19_999})) == {"row_count"}


def test_wrong_smoke_count_fails(reader: PinnedReader, db: Path) -> None:
    good = derive_expectations(db, latency_p95_ms=1000, max_rss_mb=100_000)
    smoke = good.smoke_queries[1].model_copy(update={"expect_count": 999})
    bad = good.model_copy(update={"smoke_queries": [good.smoke_queries[0], smoke]})
    (failed,) = _failing(reader, bad)
    assert failed.startswith("smoke_query[1]") and failed.endswith("count")


def test_wrong_smoke_digest_fails(reader: PinnedReader, db: Path) -> None:
    good = derive_expectations(db, latency_p95_ms=1000, max_rss_mb=100_000)
    smoke = good.smoke_queries[0].model_copy(update={"expect_sha256": "0" * 64})
    bad = good.model_copy(update={"smoke_queries": [smoke]})
    (failed,) = _failing(reader, bad)
    assert failed.startswith("smoke_query[0]") and failed.endswith("sha256")


def test_tiny_latency_budget_fails(reader: PinnedReader, db: Path) -> None:
    bad = derive_expectations(db, latency_p95_ms=1e-6, max_rss_mb=100_000)
    assert _failing(reader, bad) == {"latency_p95_ms"}


def test_tiny_rss_budget_fails(reader: PinnedReader, db: Path) -> None:
    bad = derive_expectations(db, latency_p95_ms=1000, max_rss_mb=0.5)
    assert _failing(reader, bad) == {"max_rss_mb"}


def test_smoke_query_with_no_match_and_no_digest(reader: PinnedReader) -> None:
    expectations = Expectations(
        row_count=20_000,
        smoke_queries=[SmokeQuery(pattern=TriplePattern(p="kg:nothing"), expect_count=0)],
        latency_p95_ms=1000,
        max_rss_mb=100_000,
    )
    report = run_checks(reader, expectations, runs=60, warmup=0)
    assert report.passed and report.runs == 60


def test_no_smoke_queries_still_measures_latency(reader: PinnedReader) -> None:
    expectations = Expectations(
        row_count=20_000, smoke_queries=[], latency_p95_ms=1000, max_rss_mb=100_000
    )
    report = run_checks(reader, expectations)
    assert report.passed and report.latency_p95_ms > 0


def test_unreadable_index_is_a_failed_check_not_a_crash(tmp_path: Path, db: Path) -> None:
    copy = tmp_path / "copy.db"
    data = bytearray(db.read_bytes())
    copy.write_bytes(data)
    broken = PinnedReader(copy)
    # Damage the table pages after opening (immutable=1 means SQLite trusts the file as is).
    with open(copy, "r+b") as f:
        f.seek(8 * 4096)
        f.write(b"\xff" * (len(data) - 8 * 4096))
    expectations = derive_expectations(db, latency_p95_ms=1000, max_rss_mb=100_000)
    report = run_checks(broken, expectations)
    broken.close()
    assert not report.passed
    assert "query_error" in {o.name for o in report.outcomes if not o.passed}


def test_fewer_than_50_runs_is_a_usage_error(reader: PinnedReader, db: Path) -> None:
    with pytest.raises(UsageInvalid):
        run_checks(reader, derive_expectations(db), runs=10)


def test_expectations_json_shape_is_strict() -> None:
    doc = {
        "row_count": 3,
        "smoke_queries": [
            {"pattern": {"s": "a", "p": None, "o": None}, "expect_count": 1, "expect_sha256": None},
            {"pattern": {"s": None, "p": "b", "o": "c"}, "expect_count": 0},
        ],
        "latency_p95_ms": 50,
        "max_rss_mb": 512,
    }
    parsed = Expectations.model_validate_json(json.dumps(doc))
    assert parsed.smoke_queries[1].pattern.p == "b"
    for broken in (
        {**doc, "extra": 1},
        {**doc, "row_count": -1},
        {**doc, "latency_p95_ms": 0},
        {**doc, "max_rss_mb": -5},
        {**doc, "smoke_queries": [{"pattern": {"x": "a"}, "expect_count": 1}]},
        {**doc, "smoke_queries": [{"pattern": {}, "expect_count": -1}]},
        {**doc, "smoke_queries": [{"pattern": {}, "expect_count": 1, "expect_sha256": "AB"}]},
        {**doc, "smoke_queries": [{"pattern": {"s": ""}, "expect_count": 1}]},
    ):
        with pytest.raises(ValidationError):
            Expectations.model_validate(broken)


def test_reset_peak_rss_lowers_the_reading_after_a_spike() -> None:
    from kristal.runtime.measure import _peak_rss_mb

    spike = bytearray(200 * 1024 * 1024)
    spike[::4096] = b"\x01" * len(spike[::4096])
    high = _peak_rss_mb()
    del spike
    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here")
    assert _peak_rss_mb() < high - 100


def test_isolated_checks_report_their_own_peak_rss_not_the_parents(db: Path) -> None:
    """Linux carries the parent's RSS at fork time in ru_maxrss across execve: a checks process
    spawned by a large orchestrator must still report its own peak (VmHWM)."""
    from kristal.runtime.checkrunner import run_checks_isolated

    ballast = bytearray(400 * 1024 * 1024)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # resident, not just reserved
    with PinnedReader(db) as reader:
        source = reader.meta["source_sha256"]
    report = run_checks_isolated(db, derive_expectations(db), source)
    del ballast
    assert report.passed, report.outcomes
    assert report.peak_rss_mb < 200, report.peak_rss_mb
