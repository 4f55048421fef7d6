"""The query layer on SQLite (ours: `build_index` + `PinnedReader`) against DuckDB, same rows,
same run: load time, on-disk size, peak RSS of the loading process, and the p95 of
triple-pattern queries returning at most 100 rows (the probes and patterns of
bench_index_build: s??, sp?, spo, s?o, ?po, ??o), each engine in its own fresh process.

DuckDB (PyPI `duckdb`, the `bench` extra; a benchmark-only dependency) is measured three ways:
a native table loaded with `read_json` plus the same three indexes (ART), the same table
without indexes, and a Parquet file (what a `kristal.runtime/parquet/1` pack would ship)
queried in place. Our build validates every line (order, canonical form, id uniqueness);
DuckDB's loads check nothing.

Usage: python bench/bench_duckdb.py [--rows N] [--ids ascending|hashed] [--queries N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_index_build import hashed_ids
from benchlib import note, p95, table

from kristal.publish.datagen import generate_triples

PATTERNS = ("s??", "sp?", "spo", "s?o", "?po", "??o")
COLUMNS = ("statement_id", "subject", "predicate", "object")


def probes(src: Path, rows: int, n: int, seed: int) -> list[dict[str, str]]:
    """`n` random rows of the file (one streaming pass)."""
    wanted = sorted(random.Random(seed).sample(range(rows), min(n, rows)))
    found: list[dict[str, str]] = []
    it = iter(wanted)
    target = next(it, None)
    with open(src, "rb") as lines:
        for i, line in enumerate(lines):
            while target == i:
                found.append(json.loads(line))
                target = next(it, None)
            if target is None:
                break
    random.Random(seed + 1).shuffle(found)
    return found


def patterns(rows: list[dict[str, str]]) -> list[tuple[str, tuple[str | None, ...]]]:
    out: list[tuple[str, tuple[str | None, ...]]] = []
    for r in rows:
        s, p, o = r["subject"], r["predicate"], r["object"]
        out += [("s??", (s, None, None)), ("sp?", (s, p, None)), ("spo", (s, p, o)),
                ("s?o", (s, None, o)), ("?po", (None, p, o)), ("??o", (None, None, o))]
    return out


def _latency(query: Any, pats: list[tuple[str, tuple[str | None, ...]]]) -> dict[str, Any]:
    for _, pat in pats[:200]:  # warm-up
        query(*pat)
    samples: list[float] = []
    per_kind: dict[str, list[float]] = {}
    for kind, pat in pats:
        t0 = time.perf_counter()
        n = len(query(*pat))
        ms = (time.perf_counter() - t0) * 1000
        if n > 100:
            continue
        samples.append(ms)
        per_kind.setdefault(kind, []).append(ms)
    return {"queries": len(samples), "p95_ms": p95(samples),
            "p95_ms_by_kind": {k: p95(v) for k, v in per_kind.items()}}


def _sql(table_ref: str, s: str | None, p: str | None, o: str | None) -> tuple[str, list[str]]:
    clauses, params = [], []
    for column, value in (("subject", s), ("predicate", p), ("object", o)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return (f"SELECT statement_id, subject, predicate, object FROM {table_ref}{where} "
            "ORDER BY pos LIMIT 101", params)


# --- the child process: one engine, one variant --------------------------------------------
def child(engine: str, src: Path, out: Path, probe_file: Path) -> dict[str, Any]:
    pats = [(k, tuple(p)) for k, p in json.loads(probe_file.read_text())]
    t0 = time.perf_counter()
    if engine == "sqlite":
        from kristal.runtime.sqlite_index import PinnedReader, build_index

        build_index(src, out, source_sha256="0" * 64)
        load_s = time.perf_counter() - t0
        rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with PinnedReader(out) as reader:
            lat = _latency(lambda s, p, o: reader.query(s, p, o, limit=101), pats)
        size = out.stat().st_size
    else:
        import duckdb

        target = out if engine != "duckdb-parquet" else out.with_suffix(".tmp.duckdb")
        db = duckdb.connect(str(target))
        db.execute("SET preserve_insertion_order = true")
        cols = ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS)
        db.execute(f"CREATE TABLE triples AS SELECT row_number() OVER () AS pos, * FROM "
                   f"read_json('{src}', format = 'newline_delimited', columns = {{{cols}}})")
        if engine == "duckdb-indexed":
            for ddl in ("CREATE INDEX triples_spo ON triples (subject, predicate, object)",
                        "CREATE INDEX triples_po ON triples (predicate, object)",
                        "CREATE INDEX triples_o ON triples (object)"):
                db.execute(ddl)
        if engine == "duckdb-parquet":
            parquet = out.with_suffix(".parquet")
            db.execute(f"COPY (SELECT * FROM triples ORDER BY pos) TO '{parquet}' "
                       "(FORMAT parquet, COMPRESSION zstd)")
            db.close()
            target.unlink()
            out = parquet
        else:
            db.execute("CHECKPOINT")
            db.close()
        load_s = time.perf_counter() - t0
        rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        size = out.stat().st_size
        if engine == "duckdb-parquet":
            reader = duckdb.connect()
            ref = f"read_parquet('{out}')"
        else:
            reader = duckdb.connect(str(out), read_only=True)
            ref = "triples"

        def query(s: str | None, p: str | None, o: str | None) -> list[Any]:
            sql, params = _sql(ref, s, p, o)
            return reader.execute(sql, params).fetchall()

        lat = _latency(query, pats)
        reader.close()
    return {"engine": engine, "load_s": load_s, "size_mb": size / 1e6,
            "peak_rss_load_mb": rss_load / 1024,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **lat}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ids", choices=("ascending", "hashed"), default="hashed")
    parser.add_argument("--queries", type=int, default=500, help="probe rows (x6 patterns)")
    parser.add_argument("--engines", default="sqlite,duckdb-indexed,duckdb-plain,duckdb-parquet")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, src, out, probe_file = args.child
        print(json.dumps(child(engine, Path(src), Path(out), Path(probe_file))))
        return 0

    with tempfile.TemporaryDirectory(prefix="kristal-bench-duckdb-", dir=args.workdir) as tmp:
        work = Path(tmp)
        src = work / "triples.jsonl"
        note(f"generating {args.rows:,} rows ({args.ids} ids) ...")
        generate_triples(src, args.rows, seed=0)
        if args.ids == "hashed":
            src.rename(work / "ascending.jsonl")
            hashed_ids(work / "ascending.jsonl", src)
            (work / "ascending.jsonl").unlink()
        probe_file = work / "probes.json"
        probe_file.write_text(json.dumps(patterns(probes(src, args.rows, args.queries, 1))))
        results = []
        for engine in args.engines.split(","):
            note(f"{engine} ...")
            os.sync()
            proc = subprocess.run([sys.executable, __file__, "--child", engine, str(src),
                                   str(work / f"{engine}.db"), str(probe_file)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{engine}: {proc.stderr.strip()[-1500:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{args.rows:,} rows ({args.ids} ids), {src.name}; loadavg "
          + " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    print(table(("engine", "load s", "size MB", "peak RSS MB", "query p95 ms", "n"), [
        (r["engine"], r["load_s"], r["size_mb"], r["peak_rss_mb"], r["p95_ms"], r["queries"])
        for r in results]))
    for r in results:
        print(f"  {r['engine']}: p95 by pattern " + ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(r["p95_ms_by_kind"].items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
