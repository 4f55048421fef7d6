"""Time from `kristalctl report-failure` to the pointer naming the previous release, through the
real path: the event reaches the Prefect server, the automation creates a `rollback` run, the
runner of `kristalctl serve` (polling every second) starts it in a fresh process, which rolls back.

Baseline in the same run: `kristalctl rollback --to previous` called directly (a release manager
at the keyboard), which skips the event, the automation and the runner's poll.

    python bench/bench_report_failure.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import benchlib

from kristal.channel import records
from kristal.publish.datagen import generate_triples

_cli = benchlib.kristalctl  # the real CLI in a subprocess


def _wait_for(world: benchlib.BenchWorld, release_id: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = records.read_pointer(world.ctx, world.channel).record
        if live is not None and live.active.release_id == release_id:
            return
        time.sleep(0.05)
    raise SystemExit(f"release {release_id} never became live")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    with benchlib.workdir(args.workdir, "kristal-bench-report-") as work, \
            benchlib.seaweed(work) as server:
        from kristal.dev.processes import start_prefect_server, stop_process

        prefect = start_prefect_server(work / "prefect", log_path=work / "prefect.log")
        serve = None
        try:
            world = benchlib.make_world(work / "home", benchlib.store_config(server))
            env = {**os.environ, **world.env, "PREFECT_API_URL": prefect.api_url,
                   "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
            serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], env=env,
                                     stdout=(work / "serve.log").open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
            data = work / "triples.jsonl"
            generate_triples(data, 2000)
            releases = 2 * (2 * args.runs) + 1
            for release_id in range(1, releases + 1):
                world.publish(release_id, data)
            time.sleep(8)  # serve registers its deployments and automations
            benchlib.activate_plain(world.ctx, world.channel, 1, world.who())
            release_id = 1
            automated, direct = [], []
            for _ in range(args.runs):
                for samples, how in ((automated, "report"), (direct, "rollback")):
                    previous = release_id
                    release_id += 1
                    benchlib.activate_plain(world.ctx, world.channel, release_id, world.who())
                    started = time.monotonic()
                    if how == "report":
                        _cli(env, "report-failure", world.channel, "--reason", "bench")
                    else:
                        _cli(env, "rollback", world.channel, "--to", "previous",
                             "--operator", "bench", "--reason", "bench")
                    _wait_for(world, previous)
                    samples.append(time.monotonic() - started)
                    # Move on past the quarantined/rolled-back release for the next sample.
                    release_id += 1
                    benchlib.activate_plain(world.ctx, world.channel, release_id, world.who())
        finally:
            if serve is not None:
                serve.terminate()
                serve.wait(15)
            stop_process(prefect.pid)
    result = {"runs": args.runs,
              "report_failure_to_previous_s": round(benchlib.median(automated), 2),
              "baseline_direct_rollback_cli_s": round(benchlib.median(direct), 2)}
    if args.json:
        print(json.dumps({"machine": benchlib.machine(), **result}))
        return
    print(benchlib.table(["path", "median s"], [
        ["report-failure -> event -> automation -> rollback run", result[
            "report_failure_to_previous_s"]],
        ["baseline: kristalctl rollback --to previous", result["baseline_direct_rollback_cli_s"]],
    ]))


if __name__ == "__main__":
    main()
