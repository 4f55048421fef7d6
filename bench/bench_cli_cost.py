"""A command's fixed cost (issue 15 item 4): fresh processes, as the CLI runs them, interleaved.

(a) `kristalctl rollback C --to previous` of a small release, the whole command (a flow run on
    a real Prefect server, as in production; each run flips the channel between releases 1
    and 2);
(b) the floor: a fresh `python -c` with boto3 doing the pointer's two round trips (GET the
    pointer, conditional PUT with If-Match; on a scratch copy of the pointer);
(c) `kristalctl status C`, the whole command;
(d) `python -c "import prefect"`, to show what Prefect's import alone costs in the same run;
(e) and (f): (a) and (c) handed to a `kristalctl warm` process of the same environment (the
    warm path: a child forked from a process that has Prefect and the commands imported).
    (a) and (c) run with KRISTAL_NO_WARM=1, so they stay cold while it listens.

The work of (a) is what its run's tasks did (the domain steps: plan, stage and switch; the
post-activation checks), as the Prefect server recorded them (each task run's time Running).
Overhead = wall - work: the interpreter, imports, the command line, the flow run's creation,
lock, artifacts and final state, the log flush and the exit. Each sample also records the
child's CPU time (user + sys), which a shared machine's load inflates less than wall time.

`--compare TREE` also runs (a) and (c) from another source tree (e.g. `git archive <commit> |
tar -x -C /tmp/base`), interleaved, against the same stack.

Usage: python bench/bench_cli_cost.py [--runs N] [--compare TREE] [--json]
Targets (issue 15): overhead <= 1.5 s; the rollback, whole command, < 2 s (judged for the
cold and the warm path separately).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import benchlib
from benchlib import median, note, table, verdict

from kristal.formats import layout
from kristal.publish.datagen import generate_triples

OVERHEAD_TARGET_S = 1.5
ROLLBACK_TARGET_S = 2.0
ROOT = Path(__file__).resolve().parents[1]

_FLOOR = r"""
import json, sys
import boto3
from botocore.config import Config

cfg, key = json.loads(sys.argv[1]), sys.argv[2]
s3 = boto3.client("s3", endpoint_url=cfg["endpoint_url"], region_name=cfg["region"],
                  aws_access_key_id=cfg["access_key"], aws_secret_access_key=cfg["secret_key"],
                  config=Config(s3={"addressing_style": "path"},
                                retries={"total_max_attempts": 1, "mode": "standard"},
                                request_checksum_calculation="when_required",
                                response_checksum_validation="when_required"))
got = s3.get_object(Bucket=cfg["bucket"], Key=key)
body = got["Body"].read()
s3.put_object(Bucket=cfg["bucket"], Key=key, Body=body, IfMatch=got["ETag"],
              ContentType="application/json")
"""


def timed(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, float, str]:
    """Wall and CPU seconds of a fresh process, and its stdout. `cwd` is the source tree: for
    `-m` and `-c`, Python puts the working directory before PYTHONPATH."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed: {done.stderr.strip()[-1500:]}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, done.stdout


def task_work_s(flow_run_id: str) -> tuple[float, list[str]]:
    """Seconds the run's task runs spent Running, as the server recorded them, and names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])))
        state = client.read_flow_run(uuid.UUID(flow_run_id)).state
    if state is None or state.type.value != "COMPLETED":
        raise SystemExit(f"flow run {flow_run_id} ended {state}")
    return sum(r.total_run_time.total_seconds() for r in runs), sorted(r.name for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--workdir", help="keep everything here instead of a temp dir")
    parser.add_argument("--compare", type=Path, help="another source tree to run the CLI from")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load_before = Path("/proc/loadavg").read_text().split()[:3]

    with benchlib.workdir(args.workdir, "kristal-bench-clicost-") as work, \
            benchlib.seaweed(work) as server:
        os.environ["PREFECT_HOME"] = str(work / "prefect")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from prefect.settings import PREFECT_API_URL
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            config = benchlib.store_config(server)
            world = benchlib.make_world(work / "home", config)
            for release in (1, 2):
                data = work / f"r{release}.jsonl"
                generate_triples(data, 60, seed=release)
                world.publish(release, data)
                benchlib.activate_plain(world.ctx, world.channel, release, world.who())
            scratch = "bench/pointer-copy.json"
            pointer = world.store.get_bytes(layout.pointer(world.channel),
                                            max_bytes=1 << 20)[0]
            world.store.put_bytes(scratch, pointer)
            env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                   "PYTHONPATH": os.pathsep.join(
                       [str(ROOT),
                        os.environ.get("PYTHONPATH", "")])}
            env.pop("KRISTAL_VERBOSE", None)
            env["XDG_RUNTIME_DIR"] = str(work / "run")
            (work / "run").mkdir(mode=0o700)
            cold_env = {**env, "KRISTAL_NO_WARM": "1"}
            cli = [sys.executable, "-m", "flows.cli"]
            samples: dict[str, list[tuple[float, float]]] = {
                k: [] for k in ("rollback", "floor", "status", "import_prefect",
                                "compare_rollback", "compare_status", "warm_rollback",
                                "warm_status")}
            warm = benchlib.start_warm(env, work / "warm.log", ROOT)
            other = None if args.compare is None else {**env, "PYTHONPATH": str(
                args.compare.resolve())}
            work_s: dict[str, list[float]] = {"rollback": [], "warm_rollback": []}
            pointer_at: dict[str, list[float]] = {"rollback": [], "warm_rollback": []}
            names: list[str] = []
            rollback = [*cli, "rollback", world.channel, "--to", "previous",
                        "--operator", "bench", "--reason", "fixed cost"]
            for run in range(args.runs + 1):  # the first round warms the server: not counted
                note(f"round {run}/{args.runs} ...")
                for name, run_env in (("rollback", cold_env), ("warm_rollback", env)):
                    spawned = time.time()
                    wall, cpu, _ = timed(rollback, run_env)
                    record = live_record(world)
                    done, names = task_work_s(str(record.flow_run_id))
                    if run:
                        samples[name].append((wall, cpu))
                        work_s[name].append(done)
                        pointer_at[name].append(record.created_at.timestamp() - spawned)
                for name, argv, run_env in (
                        ("floor", [sys.executable, "-c", _FLOOR, json.dumps(config.__dict__),
                                   world.store.full_key(scratch)], env),
                        ("status", [*cli, "status", world.channel], cold_env),
                        ("warm_status", [*cli, "status", world.channel], env),
                        ("import_prefect", [sys.executable, "-c", "import prefect"], env)):
                    wall, cpu, _ = timed(argv, run_env)
                    if run:
                        samples[name].append((wall, cpu))
                if other is not None:
                    for name, argv in (
                            ("compare_rollback", [*cli, "rollback", world.channel, "--to",
                                                  "previous", "--operator", "bench",
                                                  "--reason", "fixed cost (compare)"]),
                            ("compare_status", [*cli, "status", world.channel])):
                        wall, cpu, _ = timed(argv, other, args.compare.resolve())
                        if run:
                            samples[name].append((wall, cpu))
            handed = benchlib.stop_warm(warm, work / "warm.log")
    load_after = Path("/proc/loadavg").read_text().split()[:3]

    walls = {k: [w for w, _ in v] for k, v in samples.items() if v}
    cpus = {k: [c for _, c in v] for k, v in samples.items() if v}
    overheads = {k: [w - d for w, d in zip(walls[k], work_s[k], strict=True)]
                 for k in work_s}
    res: dict[str, Any] = {
        "benchmark": "cli_cost", "machine": benchlib.machine(), "runs": args.runs,
        "wall_s": walls, "cpu_s": cpus, "rollback_work_s": work_s, "work_tasks": names,
        "rollback_overhead_s": overheads, "pointer_written_after_s": pointer_at,
        "loadavg_before": load_before, "loadavg_after": load_after,
        "warm_children": handed,
    }
    for path in ("rollback", "warm_rollback"):
        res[f"{path}_overhead_met"] = median(overheads[path]) <= OVERHEAD_TARGET_S
        res[f"{path}_met"] = median(walls[path]) < ROLLBACK_TARGET_S
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"fresh processes, medians of {args.runs} interleaved rounds; loadavg before "
          f"{' '.join(load_before)}, after {' '.join(load_after)}")
    print(table(("process", "wall s", "cpu s"), [
        *[row for path, label in (
            ("rollback", "(a) kristalctl rollback, cold (whole command, a flow run)"),
            ("warm_rollback", "(e) kristalctl rollback, warm (handed to kristalctl warm)"))
          for row in (
            (label, median(walls[path]), median(cpus[path])),
            ("    its work: the run's task runs (" + ", ".join(names) + ")",
             median(work_s[path]), ""),
            ("    overhead = wall - work", median(overheads[path]), ""),
            ("    pointer written after (record's created_at - spawn)",
             median(pointer_at[path]), ""))],
        ("(b) floor: python + boto3, GET pointer + conditional PUT", median(walls["floor"]),
         median(cpus["floor"])),
        ("(c) kristalctl status, cold", median(walls["status"]), median(cpus["status"])),
        ("(f) kristalctl status, warm", median(walls["warm_status"]),
         median(cpus["warm_status"])),
        ("(d) python -c 'import prefect'", median(walls["import_prefect"]),
         median(cpus["import_prefect"])),
        *([] if args.compare is None else [
            (f"{args.compare}: kristalctl rollback", median(walls["compare_rollback"]),
             median(cpus["compare_rollback"])),
            (f"{args.compare}: kristalctl status", median(walls["compare_status"]),
             median(cpus["compare_status"]))]),
    ]))
    print("(cpu s counts the client process only: a warm child's CPU is the warm process's)")
    for path in ("rollback", "warm_rollback"):
        print(f"{path.replace('_', ' ')}: overhead {median(overheads[path]):.2f} s (target <= "
              f"{OVERHEAD_TARGET_S}: {verdict(res[f'{path}_overhead_met'])}); whole command "
              f"{median(walls[path]):.2f} s (target < {ROLLBACK_TARGET_S}: "
              f"{verdict(res[f'{path}_met'])})")
    print(f"the warm process forked {handed} children (every warm sample ran warm: "
          f"{verdict(handed == 2 * (args.runs + 1))})")
    return 0


def live_record(world: benchlib.BenchWorld) -> Any:
    from kristal.channel import records

    record = records.read_pointer(world.ctx, world.channel).record
    if record is None or record.flow_run_id is None:
        raise SystemExit("the rollback left no record of a flow run")
    return record


if __name__ == "__main__":
    sys.exit(main())
