"""A fleet fanned out to a work pool against the in-process fleet, in one run: one release to N
channels over two regions, through the real CLI both times, `kristalctl fleet-activate` (every
channel activated in the fleet's own process, one download) and `kristalctl fleet-activate
--fan-out` (every channel a run of the `activate` deployment on its region's work queue, run by
that region's `prefect worker start`, each worker with a cache of its own, as on its own host).

Private SeaweedFS and `prefect server`; `kristalctl deploy --pool P --region R1 --region R2`; two
process workers, one per region queue. Both paths get a two-channel warm-up fleet first (first
runs on a fresh server), then the timed fleet on channels of their own, from cold caches. Prints
both wall times, per-channel figures (for the fan-out: each child run's wait for its worker and
its own run time, read from the API) and the load average around each. On one host the fan-out
is expected to be slower: each channel's run is a fresh Python process; the point of it is that
each region's channels run on that region's hosts.

Usage: python bench/bench_fanout.py [--channels 200] [--rows 2000] [--wave-size 10]
                                    [--max-parallel 4] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib
from benchlib import median, note, p95, table

from kristal.dev.processes import start_prefect_server, stop_process
from kristal.operations.fleet_rules import publish_to_channels, skew_summary
from kristal.publish.datagen import generate_triples

REPO_ROOT = Path(__file__).resolve().parent.parent


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


@contextlib.contextmanager
def workers(work: Path, pool: str, queues: list[str]) -> Iterator[None]:
    """One `prefect worker start --work-queue Q` per queue, each with its own cache."""
    started = []
    for queue in queues:
        env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PREFECT_WORKER_PREFETCH_SECONDS": "1",
               "KRISTAL_CACHE_DIR": str(work / "caches" / f"worker-{queue}")}
        with (work / f"worker-{queue}.log").open("wb") as log:
            started.append(subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type",
                 "process", "--work-queue", queue], cwd=REPO_ROOT, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True))
    try:
        yield
    finally:
        for worker in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGINT)  # a worker ignores SIGTERM
        for worker in started:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()


def fleet(channels: list[str], args: argparse.Namespace, *extra: str,
          cache: Path | None = None) -> tuple[float, dict[str, Any]]:
    env = dict(os.environ)
    if cache is not None:
        env["KRISTAL_CACHE_DIR"] = str(cache)
    started = time.perf_counter()
    out = benchlib.kristalctl(env, "fleet-activate", *channels, "--release", "1",
                              "--wave-size", str(args.wave_size), "--max-parallel",
                              str(args.max_parallel), "--operator", "bench", "--reason",
                              "bench", "--json", *extra, timeout=3600)
    return time.perf_counter() - started, json.loads(out)


def child_runs(fleet_key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        found: list[Any] = []
        while True:
            page = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"fleet:{fleet_key}"])), limit=200,
                offset=len(found))
            found += page
            if len(page) < 200:
                return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=200, help="fleet size (default 200)")
    parser.add_argument("--rows", type=int, default=2000, help="triples in the release")
    parser.add_argument("--wave-size", type=int, default=10)
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument("--workdir", help="keep everything here instead of a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    quiet = args.json

    with benchlib.workdir(args.workdir, "kristal-bench-fanout-") as work, \
            benchlib.seaweed(work) as s3:
        os.environ["PREFECT_HOME"] = str(work / "prefect-client")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        world = benchlib.make_world(work / "home", benchlib.store_config(s3))
        tag = uuid.uuid4().hex[:4]
        regions = [f"eu{tag}", f"us{tag}"]

        def channels(name: str, count: int) -> list[str]:
            return [f"acme/{name}{i}/{regions[i % 2]}" for i in range(count)]

        sets = {"warm-in": channels("wi", 2), "warm-out": channels("wo", 2),
                "in": channels("i", args.channels), "out": channels("o", args.channels)}
        everyone = [c for chans in sets.values() for c in chans]
        data = work / "triples.jsonl"
        generate_triples(data, args.rows)
        note(f"publishing one build to {len(everyone)} channels ...", quiet=quiet)
        world.channel = everyone[0]
        first = world.publish(1, data)
        publish_to_channels(world.store, world.ctx.trust_file, world.keys,
                            result_of_first_publish=first, channel_ids=everyone, release_id=1,
                            generation=1, now=world.ctx.now)
        note("starting a prefect server, deploying, two workers ...", quiet=quiet)
        server = start_prefect_server(work / "prefect", log_path=work / "prefect.log")
        os.environ["PREFECT_API_URL"] = server.api_url
        pool = f"bench-{tag}"
        results: dict[str, Any] = {"channels": args.channels, "rows": args.rows,
                                   "wave_size": args.wave_size,
                                   "max_parallel": args.max_parallel}
        try:
            deployed = json.loads(benchlib.kristalctl(
                dict(os.environ), "deploy", "--pool", pool, "--region", regions[0], "--region",
                regions[1], "--json"))
            with workers(work, pool, deployed["work_queues"]):
                note("warm-up: two channels each way ...", quiet=quiet)
                fleet(sets["warm-in"], args, cache=work / "caches" / "warm")
                fleet(sets["warm-out"], args, "--fan-out")

                note(f"in-process fleet, {args.channels} channels ...", quiet=quiet)
                results["in_load_before"] = load()
                wall, doc = fleet(sets["in"], args, cache=work / "caches" / "in-process")
                results.update(in_load_after=load(), in_wall_s=round(wall, 2),
                               in_per_channel_s=round(wall / args.channels, 3),
                               in_outcome=doc["outcome"],
                               in_all_live=skew_summary(doc["skew"]) == {"1": sets["in"]},
                               in_payload_downloads=doc["payload_downloads"])

                note(f"fanned-out fleet, {args.channels} channels ...", quiet=quiet)
                results["out_load_before"] = load()
                wall, doc = fleet(sets["out"], args, "--fan-out")
                results.update(out_load_after=load(), out_wall_s=round(wall, 2),
                               out_per_channel_s=round(wall / args.channels, 3),
                               out_outcome=doc["outcome"],
                               out_all_live=skew_summary(doc["skew"]) == {"1": sets["out"]})
                key = str(doc["artifact_keys"][0]).removeprefix("fleet-waves-")
                runs = child_runs(key)
                waits = [(r.start_time - r.created).total_seconds() for r in runs
                         if r.start_time and r.created]
                run_s = [r.total_run_time.total_seconds() for r in runs]
                results.update(
                    out_child_runs=len(runs),
                    out_runs_by_queue={q: sum(r.work_queue_name == q for r in runs)
                                       for q in deployed["work_queues"]},
                    out_wait_median_s=round(median(waits), 2),
                    out_wait_p95_s=round(p95(waits), 2),
                    out_run_median_s=round(median(run_s), 2),
                    out_run_p95_s=round(p95(run_s), 2))
                results["ratio"] = round(results["out_wall_s"] / results["in_wall_s"], 1)
        finally:
            stop_process(server.pid)

    if args.json:
        print(json.dumps({"machine": benchlib.machine(), **results}))
        return 0
    print(f"{args.channels} channels over 2 regions, {args.rows} rows, waves of "
          f"{args.wave_size} after a canary, {args.max_parallel} at a time; 2 process workers "
          "on this host")
    print(table(["path", "wall (s)", "per channel (s)", "outcome", "all live",
                 "load before", "load after"], [
        ["in-process fleet", results["in_wall_s"], results["in_per_channel_s"],
         results["in_outcome"], results["in_all_live"], results["in_load_before"],
         results["in_load_after"]],
        ["--fan-out (2 workers)", results["out_wall_s"], results["out_per_channel_s"],
         results["out_outcome"], results["out_all_live"], results["out_load_before"],
         results["out_load_after"]]]))
    print(f"fan-out / in-process: {results['ratio']}x; child runs {results['out_child_runs']} "
          f"by queue {results['out_runs_by_queue']}; each child: waited for its worker "
          f"{results['out_wait_median_s']} s median ({results['out_wait_p95_s']} p95), ran "
          f"{results['out_run_median_s']} s median ({results['out_run_p95_s']} p95); in-process "
          f"payload downloads {results['in_payload_downloads']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
