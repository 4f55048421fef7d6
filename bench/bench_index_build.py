"""Benchmark `kristal.runtime.sqlite_index.build_index` against plain sqlite3
(same pragmas, same table and indexes, no validation), then the p95 latency of indexed
triple-pattern queries that return at most 100 rows.

`--ids hashed` gives every row a content-style id (a keyed hash of the generated one), so the
ids no longer ascend with the canonical order and the statement_id uniqueness check really
runs; the build is then also timed with that check done the old way (one sort of every id
after the load) beside the folded one (a filter during the load, then only its candidates).
Usage: python bench/bench_index_build.py [--rows N] [--ids ascending|hashed] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kristal.publish.datagen import generate_triples
from kristal.runtime.sqlite_index import (
    BUILD_PRAGMAS,
    INDEX_DDL,
    INSERT_SQL,
    TABLE_DDL,
    PinnedReader,
    build_index,
)
from kristal.runtime.unique_ids import SeenIds as _SeenIds

_ROW = re.compile(r'\{"object":"([^"]*)","predicate":"([^"]*)","statement_id":"([^"]*)",'
                  r'"subject":"([^"]*)"\}')


def hashed_ids(ascending: Path, out_path: Path) -> str:
    """`ascending` (generated) with each id replaced by `st:` + 24 hex digits of its BLAKE2b,
    rows re-sorted within each subject (canonical order again); returns the sha256 hex."""
    digest = hashlib.sha256()
    group: list[tuple[str, str, str, str]] = []

    def flush(out: Any) -> None:
        group.sort()
        chunk = "".join(f'{{"object":"{o}","predicate":"{p}","statement_id":"{sid}",'
                        f'"subject":"{s}"}}\n' for s, p, o, sid in group).encode()
        digest.update(chunk)
        out.write(chunk)
        group.clear()

    with open(ascending, encoding="ascii") as lines, open(out_path, "wb") as out:
        subject = None
        for line in lines:
            m = _ROW.fullmatch(line.rstrip("\n"))
            assert m is not None, line
            o, p, sid, s = m.groups()
            if s != subject and len(group) >= 8192:
                flush(out)  # only between subjects: a subject's rows sort together
            subject = s
            group.append((s, p, o, "st:" + hashlib.blake2b(sid.encode(), digest_size=12)
                          .hexdigest()))
        flush(out)
    return digest.hexdigest()


@contextlib.contextmanager
def full_sort_check() -> Iterator[None]:
    """build_index as before the fold: no candidate fits, so every id is sorted after the load."""
    saved = _SeenIds.CANDIDATE_CAP
    _SeenIds.CANDIDATE_CAP = 0  # type: ignore[misc]
    try:
        yield
    finally:
        _SeenIds.CANDIDATE_CAP = saved  # type: ignore[misc]


def baseline_build(src: Path, db_path: Path) -> int:
    """The reference: json.loads per line straight into executemany, nothing checked."""
    db = sqlite3.connect(db_path, isolation_level=None)
    for pragma in BUILD_PRAGMAS:
        db.execute(pragma)
    db.execute("BEGIN")
    db.execute(TABLE_DDL)
    with open(src, "rb") as lines:
        rows = (
            (r["statement_id"], r["subject"], r["predicate"], r["object"])
            for r in map(json.loads, lines)
        )
        db.executemany(INSERT_SQL, rows)
    for ddl in INDEX_DDL:
        db.execute(ddl)
    db.execute("COMMIT")
    (count,) = db.execute("SELECT count(*) FROM triples").fetchone()
    db.close()
    return int(count)


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, -(-len(ordered) * q // 100) - 1)]


def query_latency(db_path: Path, rows: int, n_queries: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    samples: list[float] = []
    per_kind: dict[str, list[float]] = {}
    sizes: list[int] = []
    with PinnedReader(db_path) as reader:
        probes = [reader.row_at(rng.randrange(1, rows + 1)) for _ in range(n_queries)]
        patterns: list[tuple[str, tuple[str | None, str | None, str | None]]] = []
        for probe in probes:
            assert probe is not None
            s, p, o = probe["subject"], probe["predicate"], probe["object"]
            patterns += [
                ("s??", (s, None, None)),
                ("sp?", (s, p, None)),
                ("spo", (s, p, o)),
                ("s?o", (s, None, o)),
                ("?po", (None, p, o)),
                ("??o", (None, None, o)),
            ]
        for _, (s, p, o) in patterns[:200]:  # warm-up
            reader.query(s, p, o, limit=101)
        for kind, (s, p, o) in patterns:
            start = time.perf_counter()
            found = reader.query(s, p, o, limit=101)
            elapsed = (time.perf_counter() - start) * 1000
            if len(found) > 100:
                continue  # e.g. (?, kg:type, kg:City): not a <= 100-row query
            samples.append(elapsed)
            per_kind.setdefault(kind, []).append(elapsed)
            sizes.append(len(found))
    out = {
        "queries": float(len(samples)),
        "mean_rows": sum(sizes) / len(sizes),
        "p50_ms": _p(samples, 50),
        "p95_ms": _p(samples, 95),
        "max_ms": max(samples),
    }
    for kind, values in sorted(per_kind.items()):
        out[f"p95_ms[{kind}]"] = _p(values, 95)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000, help="probe rows (x6 patterns)")
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs, best kept")
    parser.add_argument("--ids", choices=("ascending", "hashed"), default="ascending",
                        help="hashed: ids that do not ascend (the uniqueness check runs)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kristal-bench-", dir=args.workdir))
    try:
        src = work / "triples.jsonl"
        start = time.perf_counter()
        digest = generate_triples(src, args.rows, seed=0)
        if args.ids == "hashed":
            generated = src.with_suffix(".ascending")
            src.rename(generated)
            digest = hashed_ids(generated, src)
            generated.unlink()
        gen_s = time.perf_counter() - start
        size_mb = src.stat().st_size / 1e6
        print(f"rows {args.rows:,}  ids {args.ids}  file {size_mb:,.1f} MB  "
              f"generated in {gen_s:.2f} s")

        # Alternate the two builds and keep each one's best time: the machine may be shared,
        # and the best of several runs is the least disturbed measurement of each.
        base_times: list[float] = []
        ours_times: list[float] = []
        full_times: list[float] = []
        for attempt in range(args.repeat):
            for db in (work / "baseline.db", work / "index.db", work / "full.db"):
                db.unlink(missing_ok=True)
            start = time.perf_counter()
            base_rows = baseline_build(src, work / "baseline.db")
            base_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            ours_rows = build_index(src, work / "index.db", source_sha256=digest)
            ours_times.append(time.perf_counter() - start)
            assert base_rows == ours_rows == args.rows
            full = ""
            if args.ids == "hashed":
                start = time.perf_counter()
                with full_sort_check():
                    build_index(src, work / "full.db", source_sha256=digest)
                full_times.append(time.perf_counter() - start)
                full = f", build_index with the old full-sort id check {full_times[-1]:.2f} s"
            print(
                f"  run {attempt + 1}: baseline {base_times[-1]:.2f} s, "
                f"build_index {ours_times[-1]:.2f} s{full}", flush=True
            )
        base_s, ours_s = min(base_times), min(ours_times)

        print(f"best of {args.repeat}:")
        print(f"baseline executemany   {base_s:7.2f} s  {args.rows / base_s:12,.0f} rows/s")
        print(f"build_index (checked)  {ours_s:7.2f} s  {args.rows / ours_s:12,.0f} rows/s")
        if full_times:
            full_s = min(full_times)
            print(f"build_index, old check    {full_s:7.2f} s  {args.rows / full_s:12,.0f} rows/s"
                  f"  (the fold saves {full_s - ours_s:.2f} s)")
        print(f"speed ratio build_index/baseline = {base_s / ours_s:.2f} (target >= 0.80)")
        db_mb = (work / "index.db").stat().st_size / 1e6
        print(f"index size {db_mb:,.1f} MB")

        lat = query_latency(work / "index.db", args.rows, args.queries, seed=1)
        print(
            f"queries <= 100 rows: n={lat['queries']:.0f} mean rows {lat['mean_rows']:.1f}  "
            f"p50 {lat['p50_ms']:.3f} ms  p95 {lat['p95_ms']:.3f} ms  max {lat['max_ms']:.3f} ms "
            "(target p95 < 5 ms)"
        )
        print("  " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items() if k.startswith("p95_ms[")))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
