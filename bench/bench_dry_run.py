"""A cold dry-run activation of an N-row pack (steps A-C: resolve and verify the release, then
stage it: every declared object downloaded or hashed, the query index built) in a fresh process,
beside the plain floor measured in the same run: a fresh process that downloads the pack's
objects with boto3 (`download_file`, its parallel ranges), `json.loads` every row, and
`executemany` into SQLite with the same pragmas, table and three indexes, checking nothing.

Each run of ours gets an empty KRISTAL_CACHE_DIR (cold); they alternate. The dry run goes
through the plain runner (the operations' own steps), and, as a third row, through the CLI as
an operator runs it: `kristalctl activate C --release 1 --dry-run` in a fresh process, a flow
run on a Prefect server this script starts (Prefect's import, the run; issue 15 item 4), and,
as a fourth, the same command handed to a `kristalctl warm` process of its environment (the
warm path: no start-up). `--no-cli` leaves both out.

`--compare TREE` also runs the dry run from another source tree (e.g. `git worktree add
/tmp/base <commit>`), interleaved, against the same bucket and floor.

Usage: python bench/bench_dry_run.py [--rows N] [--ids ascending|hashed] [--runs N]
                                     [--compare TREE] [--no-cli] [--json]
Target (issue 15): ours <= 1.2 x the floor (the plain runner and the CLI each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
from bench_index_build import hashed_ids
from benchlib import median, note, table, verdict

from kristal.publish.datagen import generate_triples
from kristal.runtime.sqlite_index import BUILD_PRAGMAS, INDEX_DDL, INSERT_SQL, TABLE_DDL
from kristal.verify.fetch import verify_release

RATIO_TARGET = 1.2

_OURS = r"""
import json, sys, time
t0 = time.perf_counter()
from kristal.config import Settings
from kristal.context import Context
from kristal.operations.activate import activate
from kristal.operations.outcome import Who
from kristal.operations.runner import PlainRunner

ctx = Context.from_settings(Settings.from_env())
t1 = time.perf_counter()
out = activate(PlainRunner(), ctx, channel_id=sys.argv[1], release_id=int(sys.argv[2]),
               dry_run=True, who=Who(operator="bench", reason="bench", correlation_id="bench"))
assert out.outcome == "planned", out
print(json.dumps({"imports_s": t1 - t0, "activate_s": time.perf_counter() - t1}))
"""

_FLOOR = r"""
import json, sqlite3, sys, time
from concurrent.futures import ThreadPoolExecutor
t0 = time.perf_counter()
import boto3
from botocore.config import Config

cfg, keys, sql = (json.loads(a) for a in sys.argv[1:4])
work, triples_key = sys.argv[4], sys.argv[5]
s3 = boto3.client("s3", endpoint_url=cfg["endpoint_url"], region_name=cfg["region"],
                  aws_access_key_id=cfg["access_key"], aws_secret_access_key=cfg["secret_key"],
                  config=Config(s3={"addressing_style": "path"},
                                request_checksum_calculation="when_required",
                                response_checksum_validation="when_required"))
t1 = time.perf_counter()
paths = {key: f"{work}/obj-{n}" for n, key in enumerate(keys)}
with ThreadPoolExecutor(max_workers=4) as pool:
    list(pool.map(lambda k: s3.download_file(cfg["bucket"], k, paths[k]), keys))
t2 = time.perf_counter()
db = sqlite3.connect(f"{work}/floor.db", isolation_level=None)
for pragma in sql["pragmas"]:
    db.execute(pragma)
db.execute("BEGIN")
db.execute(sql["table"])
with open(paths[triples_key], "rb") as lines:
    db.executemany(sql["insert"], ((r["statement_id"], r["subject"], r["predicate"], r["object"])
                                   for r in map(json.loads, lines)))
for ddl in sql["indexes"]:
    db.execute(ddl)
db.execute("COMMIT")
db.close()
print(json.dumps({"imports_s": t1 - t0, "download_s": t2 - t1, "load_s": time.perf_counter() - t2}))
"""


def run_json(argv: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    # In the tree PYTHONPATH names first: for `-c`, Python puts the working directory before
    # PYTHONPATH, so a `--compare` run started from another checkout would run that one.
    cwd = env.get("PYTHONPATH", "").split(os.pathsep)[0] or None
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed: {proc.stderr.strip()[-1500:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ids", choices=("ascending", "hashed"), default="hashed",
                        help="hashed (default): ids that do not ascend, as real content ids")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", help="keep everything here instead of a temp dir")
    parser.add_argument("--compare", type=Path, help="another source tree to run ours from")
    parser.add_argument("--no-cli", action="store_true", help="no kristalctl row")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with benchlib.workdir(args.workdir, "kristal-bench-dryrun-") as work, \
            benchlib.seaweed(work) as server, contextlib.ExitStack() as stack:
        api_url = None if args.no_cli else stack.enter_context(prefect_server(work))
        config = benchlib.store_config(server)
        world = benchlib.make_world(work / "home", config)
        data = work / "input.jsonl"
        note(f"generating {args.rows:,} rows ({args.ids} ids) and publishing ...")
        generate_triples(data, args.rows, seed=0)
        if args.ids == "hashed":
            data.rename(work / "ascending.jsonl")
            hashed_ids(work / "ascending.jsonl", data)
            (work / "ascending.jsonl").unlink()
        t0 = time.perf_counter()
        world.publish(1, data)
        publish_s = time.perf_counter() - t0
        data.unlink()
        release = verify_release(world.ctx, world.channel, release_id=1)
        pack = release.packs[0]
        pack_keys = [world.store.full_key(f"runtime-packs/{pack.pack_id}/{e.path}")
                     for e in pack.manifest.files]
        triples_key = world.store.full_key(
            f"runtime-packs/{pack.pack_id}/{pack.manifest.triples().path}")
        every = [(e.path, e.size_bytes) for e in release.exchange.blobs()] + [
            (e.path, e.size_bytes) for e in pack.manifest.files]
        sql = {"pragmas": BUILD_PRAGMAS, "table": TABLE_DDL, "insert": INSERT_SQL,
               "indexes": INDEX_DDL}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}

        other: list[tuple[float, dict[str, Any]]] = []
        ours: list[tuple[float, dict[str, Any]]] = []
        cli: list[float] = []
        warm_cli: list[float] = []
        warm_cache = work / "cache-warm"
        runtime = work / "run"
        runtime.mkdir(mode=0o700)
        warm_env = {**env, "KRISTAL_CACHE_DIR": str(warm_cache), "PREFECT_API_URL": api_url or "",
                    "XDG_RUNTIME_DIR": str(runtime)}
        warm = None if api_url is None else benchlib.start_warm(
            warm_env, work / "warm.log", Path(__file__).resolve().parents[1])
        floor: list[tuple[float, dict[str, Any]]] = []
        for run in range(args.runs):
            note(f"run {run + 1}/{args.runs} ...")
            scratch = work / "floor"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            os.sync()
            floor.append(run_json([sys.executable, "-c", _FLOOR, json.dumps(config.__dict__),
                                   json.dumps(pack_keys), json.dumps(sql), str(scratch),
                                   triples_key], env))
            shutil.rmtree(scratch, ignore_errors=True)
            cache = work / f"cache-{run}"
            os.sync()
            ours.append(run_json([sys.executable, "-c", _OURS, world.channel, "1"],
                                 {**env, "KRISTAL_CACHE_DIR": str(cache)}))
            kept = sorted(p.name for p in (cache / "blobs" / "sha256").iterdir())
            shutil.rmtree(cache, ignore_errors=True)
            if api_url is not None:
                os.sync()
                cli.append(run_cli(world.channel, {
                    **env, "KRISTAL_CACHE_DIR": str(cache), "PREFECT_API_URL": api_url,
                    "KRISTAL_NO_WARM": "1"}))
                shutil.rmtree(cache, ignore_errors=True)
                os.sync()
                warm_cli.append(run_cli(world.channel, warm_env))
                shutil.rmtree(warm_cache, ignore_errors=True)
            if args.compare:
                os.sync()
                other.append(run_json(
                    [sys.executable, "-c", _OURS, world.channel, "1"],
                    {**env, "KRISTAL_CACHE_DIR": str(cache),
                     "PYTHONPATH": str(args.compare.resolve())}))
                shutil.rmtree(cache, ignore_errors=True)

        handed = 0 if warm is None else benchlib.stop_warm(warm, work / "warm.log")

    res = {
        "benchmark": "dry_run", "machine": benchlib.machine(), "rows": args.rows,
        "ids": args.ids, "runs": args.runs, "publish_s": publish_s, "objects": every,
        "blobs_kept_by_ours": len(kept),
        "ours_wall_s": [w for w, _ in ours], "ours_phases": [p for _, p in ours],
        "floor_wall_s": [w for w, _ in floor], "floor_phases": [p for _, p in floor],
        "cli_wall_s": cli, "warm_cli_wall_s": warm_cli, "warm_children": handed,
        "compare_tree": str(args.compare) if args.compare else None,
        "compare_wall_s": [w for w, _ in other], "compare_phases": [p for _, p in other],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    res["ratio"] = median(res["ours_wall_s"]) / median(res["floor_wall_s"])
    res["target_met"] = res["ratio"] <= RATIO_TARGET
    res["cli_ratio"] = median(cli) / median(res["floor_wall_s"]) if cli else None
    res["cli_target_met"] = res["cli_ratio"] is not None and res["cli_ratio"] <= RATIO_TARGET
    res["warm_cli_ratio"] = median(warm_cli) / median(res["floor_wall_s"]) if warm_cli else None
    res["warm_cli_target_met"] = (res["warm_cli_ratio"] is not None
                                  and res["warm_cli_ratio"] <= RATIO_TARGET
                                  and handed == len(warm_cli))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0

    def phase(runs: list[dict[str, Any]], name: str) -> float:
        return median([r[name] for r in runs])

    print(f"cold dry run, {args.rows:,} rows ({args.ids} ids), median of {args.runs} "
          f"(publish took {publish_s:.1f} s); objects: "
          + ", ".join(f"{p} {s / 1e6:.1f} MB" for p, s in every))
    rows = [] if not other else [(
        f"ours from {args.compare}", median(res["compare_wall_s"]),
        f"imports {phase(res['compare_phases'], 'imports_s'):.2f}, activate "
        f"{phase(res['compare_phases'], 'activate_s'):.2f}")]
    print(table(("fresh process", "wall s", "phases (median s)"), [*rows,
        ("ours: dry-run activation (plain runner)", median(res["ours_wall_s"]),
         f"imports {phase(res['ours_phases'], 'imports_s'):.2f}, activate "
         f"{phase(res['ours_phases'], 'activate_s'):.2f}"),
        *([] if not cli else [(
            "ours: kristalctl activate --dry-run (a flow run)", median(cli),
            "the whole command"), (
            "ours: the same, handed to kristalctl warm", median(warm_cli),
            f"the whole command ({handed} of {len(warm_cli)} ran warm)")]),
        ("floor: boto3 + json.loads + executemany + 3 indexes", median(res["floor_wall_s"]),
         f"imports {phase(res['floor_phases'], 'imports_s'):.2f}, download "
         f"{phase(res['floor_phases'], 'download_s'):.2f}, load "
         f"{phase(res['floor_phases'], 'load_s'):.2f}"),
    ]))
    if other:
        print(f"{args.compare}/floor = "
              f"{median(res['compare_wall_s']) / median(res['floor_wall_s']):.3f}")
    print(f"ours/floor = {res['ratio']:.3f} (target <= {RATIO_TARGET}: "
          f"{verdict(res['target_met'])}); blobs kept in our cache: {res['blobs_kept_by_ours']} "
          f"of {len(every)} objects; loadavg at the end {' '.join(res['loadavg'])}")
    if cli:
        print(f"kristalctl/floor = {res['cli_ratio']:.3f} (target <= {RATIO_TARGET}: "
              f"{verdict(res['cli_target_met'])}); warm kristalctl/floor = "
              f"{res['warm_cli_ratio']:.3f} ({verdict(res['warm_cli_target_met'])})")
    return 0


@contextlib.contextmanager
def prefect_server(work: Path) -> Any:
    """A Prefect server of this run's own (Prefect's test harness); yields its API URL."""
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


def run_cli(channel: str, env: dict[str, str]) -> float:
    """Wall seconds of `kristalctl activate CHANNEL --release 1 --dry-run`, a fresh process."""
    argv = [sys.executable, "-m", "flows.cli", "activate", channel, "--release", "1",
            "--dry-run", "--operator", "bench", "--reason", "dry run", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or json.loads(proc.stdout)["outcome"] != "planned":
        raise RuntimeError(f"kristalctl activate --dry-run failed: {proc.stderr[-1500:]}")
    return wall


if __name__ == "__main__":
    sys.exit(main())
