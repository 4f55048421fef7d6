"""Benchmark `kristalctl publish` (a fresh process, as production runs it) against the plain
floor measured in the same run: read the input, sort, canonicalize, hash and upload the same
bytes (the pack's triples and the Exchange's assertions) with boto3, nothing else.

The input is generated, then given content-style ids (which do not ascend) and shuffled, so the
sort and the statement_id uniqueness check both do real work. Peak RSS is each process's own
(`wait4`). `--run-rows` sets KRISTAL_PUBLISH_RUN_ROWS (rows per sorted run) for publish, to show
memory stays flat when the input is many times the run budget; `--compare DIR` also publishes
with another source tree (e.g. /work/main, the code before) in the same run.
Usage: python bench/bench_publish.py [--rows N] [--repeat K] [--run-rows R] [--compare DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import median, note, table, verdict

from kristal.publish.datagen import generate_triples

RATIO_TARGET = 2.0

# The floor, in a fresh process: the least work that yields the bytes publish uploads. "plain":
# json.loads, dicts through one prebuilt JSON encoder. "tuned": publish's own per-row techniques
# (one regex per canonical line, json's C string encoder in f-strings), so what remains between
# it and publish is publish's own work (validation, external sort, signing, the index).
_FLOOR = r"""
import hashlib, json, re, sys, time
t0 = time.perf_counter()
import boto3
from boto3.s3.transfer import TransferConfig
src, work, config, mode = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
t1 = time.perf_counter()
ROW = re.compile(r'\{"object":"([^"\\]+)","predicate":"([^"\\]+)",'
                 r'"statement_id":"([^"\\]+)","subject":"([^"\\]+)"\}\n?')
rows = []
with open(src, "rb") as handle:
    for line in handle:
        if not line.strip():
            continue
        if mode == "tuned":
            o, p, i, s = ROW.fullmatch(line.decode()).groups()
            rows.append((s, p, o, i))
        else:
            r = json.loads(line)
            rows.append((r["subject"], r["predicate"], r["object"], r["statement_id"]))
rows.sort()
t2 = time.perf_counter()
encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
enc = json.encoder.encode_basestring
if mode == "tuned":
    makers = (
        ("triples", lambda s, p, o, i: f'{{"object":{enc(o)},"predicate":{enc(p)},'
                                       f'"statement_id":{enc(i)},"subject":{enc(s)}}}'),
        ("assertions", lambda s, p, o, i: f'{{"assertion_id":{enc(i)},"assertion_status":'
                                          f'"sourced","certainty_level":"high","object":'
                                          f'{enc(o)},"predicate":{enc(p)},"subject":{enc(s)}}}'),
    )
else:
    makers = (
        ("triples", lambda s, p, o, i: encode({"statement_id": i, "subject": s,
                                               "predicate": p, "object": o})),
        ("assertions", lambda s, p, o, i: encode({"assertion_id": i, "subject": s,
                                                  "predicate": p, "object": o,
                                                  "assertion_status": "sourced",
                                                  "certainty_level": "high"})),
    )
digests = {}
for name, make in makers:
    digest = hashlib.sha256()
    with open(f"{work}/{name}.jsonl", "wb") as out:
        batch = []
        for row in rows:
            batch.append(make(*row))
            if len(batch) == 8192:
                chunk = ("\n".join(batch) + "\n").encode()
                digest.update(chunk)
                out.write(chunk)
                batch.clear()
        if batch:
            chunk = ("\n".join(batch) + "\n").encode()
            digest.update(chunk)
            out.write(chunk)
    digests[name] = digest.hexdigest()
t3 = time.perf_counter()
s3 = boto3.client("s3", endpoint_url=config["endpoint_url"], region_name=config["region"],
                  aws_access_key_id=config["access_key"],
                  aws_secret_access_key=config["secret_key"],
                  config=boto3.session.Config(s3={"addressing_style": "path"}))
transfer = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=8 << 20,
                          max_concurrency=4, use_threads=True)
for name in digests:
    s3.upload_file(f"{work}/{name}.jsonl", config["bucket"], f"floor/{name}.jsonl",
                   Config=transfer)
t4 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "parse_sort_s": t2 - t1, "encode_hash_s": t3 - t2,
                  "upload_s": t4 - t3, "sha256": digests}))
"""


def content_ids_shuffled(ascending: Path, out_path: Path, seed: int = 1) -> None:
    """`ascending` (generated, canonical) with each id replaced by `st:` + 24 hex digits of its
    BLAKE2b, lines in a random order. Bounded memory: lines are dealt into bucket files at
    random, then each bucket is shuffled in memory and appended."""
    rng = random.Random(seed)
    buckets = max(1, os.path.getsize(ascending) // (64 << 20))
    parts = [out_path.with_name(f"{out_path.name}.part{i}") for i in range(buckets)]
    handles = [p.open("w", encoding="ascii") for p in parts]
    with open(ascending, encoding="ascii") as lines:
        for line in lines:
            row = json.loads(line)
            row["statement_id"] = "st:" + hashlib.blake2b(
                row["statement_id"].encode(), digest_size=12).hexdigest()
            handles[rng.randrange(buckets)].write(json.dumps(row, separators=(",", ":")) + "\n")
    for handle in handles:
        handle.close()
    with open(out_path, "w", encoding="ascii") as out:
        for part in parts:
            chunk = part.read_text(encoding="ascii").splitlines(keepends=True)
            rng.shuffle(chunk)
            out.writelines(chunk)
            part.unlink()


def timed(argv: list[str], env: dict[str, str], out: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of that process alone, and its stdout."""
    t0 = time.perf_counter()
    with out.open("wb") as stdout, (out.with_suffix(".err")).open("wb") as stderr:
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
        _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed: {out.with_suffix('.err').read_text()[-1500:]}")
    return wall, usage.ru_maxrss / 1024, out.read_text()


def pack_digests(world: benchlib.BenchWorld, result: dict[str, Any]) -> dict[str, str]:
    """The sha256 of the triples and assertions files that publish listed (and uploaded)."""
    from kristal.formats.canonical import parse_json

    def doc(key: str) -> Any:
        return parse_json(world.store.get_bytes(key, max_bytes=1 << 24)[0])

    pack = doc(f"runtime-packs/{result['runtime_pack_ids'][0]}/runtime-pack-manifest.json")
    exchange = doc(f"exchanges/{result['exchange_id']}/exchange-manifest.json")
    return {"triples": pack["files"][0]["sha256"],
            "assertions": exchange["extensions"]["kristal.activate/blobs"][0]["sha256"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="alternating rounds; medians")
    parser.add_argument("--run-rows", type=int, help="KRISTAL_PUBLISH_RUN_ROWS for publish")
    parser.add_argument("--compare", type=Path, help="another source tree to publish from too")
    parser.add_argument("--workdir", help="keep everything here instead of a temp dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    root = Path(__file__).resolve().parents[1]
    with benchlib.workdir(args.workdir, "kristal-bench-publish-") as work, \
            benchlib.seaweed(work) as server:
        config = benchlib.store_config(server)
        world = benchlib.make_world(work / "home", config)
        data = work / "input.jsonl"
        note(f"generating {args.rows:,} rows (content ids, shuffled) ...")
        generate_triples(work / "ascending.jsonl", args.rows, seed=0)
        content_ids_shuffled(work / "ascending.jsonl", data)
        (work / "ascending.jsonl").unlink()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(root), os.environ.get("PYTHONPATH", "")])}
        if args.run_rows:
            env["KRISTAL_PUBLISH_RUN_ROWS"] = str(args.run_rows)
        input_mb = round(os.path.getsize(data) / 1e6, 1)
        loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
        floor: list[tuple[float, float, dict[str, Any]]] = []
        tuned: list[tuple[float, float, dict[str, Any]]] = []
        ours: list[tuple[float, float, dict[str, Any]]] = []
        other: list[tuple[float, float, dict[str, Any]]] = []
        release = 0
        trees = [(root, ours)] + ([(args.compare.resolve(), other)] if args.compare else [])
        for rnd in range(args.repeat):
            for mode, samples in (("plain", floor), ("tuned", tuned)):
                note(f"round {rnd + 1}/{args.repeat}: floor ({mode}) ...")
                scratch = work / "floor"
                scratch.mkdir(exist_ok=True)
                os.sync()
                wall, rss, out = timed([sys.executable, "-c", _FLOOR, str(data), str(scratch),
                                        json.dumps(config.__dict__), mode], env,
                                       work / "floor.out")
                samples.append((wall, rss, json.loads(out.strip().splitlines()[-1])))
                for name in ("triples", "assertions"):
                    (scratch / f"{name}.jsonl").unlink()
            for tree, samples in trees:
                release += 1
                note(f"round {rnd + 1}/{args.repeat}: kristalctl publish from {tree} ...")
                os.sync()
                wall, rss, out = timed(
                    [sys.executable, "-m", "flows.cli", "publish", "--data", str(data),
                     "--channel", world.channel, "--release-id", str(release),
                     "--generation", "1", "--json"],
                    {**env, "PYTHONPATH": str(tree)}, work / "publish.out")
                samples.append((wall, rss, json.loads(out)))
        loadavg_after = Path("/proc/loadavg").read_text().split()[:3]
        same_bytes = (pack_digests(world, ours[-1][2]) == floor[-1][2]["sha256"]
                      == tuned[-1][2]["sha256"])

    res: dict[str, Any] = {
        "benchmark": "publish", "machine": benchlib.machine(), "rows": args.rows,
        "repeat": args.repeat, "run_rows": args.run_rows,
        "input_mb": input_mb,
        "floor_wall_s": [w for w, _, _ in floor], "floor_rss_mb": [r for _, r, _ in floor],
        "floor_phases": [p for _, _, p in floor],
        "tuned_floor_wall_s": [w for w, _, _ in tuned],
        "tuned_floor_rss_mb": [r for _, r, _ in tuned],
        "tuned_floor_phases": [p for _, _, p in tuned],
        "ours_wall_s": [w for w, _, _ in ours], "ours_rss_mb": [r for _, r, _ in ours],
        "compare_tree": str(args.compare) if args.compare else None,
        "compare_wall_s": [w for w, _, _ in other], "compare_rss_mb": [r for _, r, _ in other],
        "same_bytes_as_floor": same_bytes,
        "loadavg_before": loadavg_before, "loadavg_after": loadavg_after,
    }
    res["ratio"] = median(res["ours_wall_s"]) / median(res["floor_wall_s"])
    res["ratio_tuned"] = median(res["ours_wall_s"]) / median(res["tuned_floor_wall_s"])
    res["target_met"] = res["ratio"] <= RATIO_TARGET and same_bytes
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    def phases(key: str) -> str:
        runs = res[key]
        return ", ".join(f"{k[:-2]} {median([p[k] for p in runs]):.1f}"
                         for k in ("imports_s", "parse_sort_s", "encode_hash_s", "upload_s"))

    rows: list[tuple[Any, ...]] = [
        ("floor, plain: json.loads + sort + JSON encoder + sha256 + boto3",
         median(res["floor_wall_s"]), max(res["floor_rss_mb"]), phases("floor_phases")),
        ("floor, tuned: regex + sort + C string encoder + sha256 + boto3",
         median(res["tuned_floor_wall_s"]), max(res["tuned_floor_rss_mb"]),
         phases("tuned_floor_phases")),
        ("kristalctl publish (this tree)", median(res["ours_wall_s"]), max(res["ours_rss_mb"]),
         f"ratio {res['ratio']:.2f} to plain, {res['ratio_tuned']:.2f} to tuned"),
    ]
    if other:
        rows.append((f"kristalctl publish ({args.compare})", median(res["compare_wall_s"]),
                     max(res["compare_rss_mb"]),
                     f"ratio {median(res['compare_wall_s']) / median(res['floor_wall_s']):.2f}"))
    print(f"publish, {args.rows:,} rows (content ids, shuffled), median of {args.repeat}"
          + (f", run budget {args.run_rows:,} rows" if args.run_rows else ""))
    print(table(("fresh process", "wall s", "peak RSS MB", "notes"), rows))
    print(f"ours/plain floor = {res['ratio']:.3f} (target <= {RATIO_TARGET}: "
          f"{verdict(res['target_met'])}); ours/tuned floor = {res['ratio_tuned']:.3f}; "
          f"same bytes as both floors: {same_bytes}; "
          f"loadavg before {' '.join(loadavg_before)}, after {' '.join(loadavg_after)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
