"""Time from a metric crossing its threshold to the previous release live, during a bake with a
1 s interval, through the real path: `kristalctl activate --bake` starts the bake run (a
detached `kristalctl bake`, its own Prefect flow run), Prometheus scrapes an exporter every
second, the bake's next measurement sees the error rate, fails, and rolls back.

The floor it compares against, in the same run: the bake interval itself (a measurement can
only see the crossing at its next tick), plus Prometheus' scrape interval (it can only see it
at its next scrape). Also printed: where the time goes (flip -> failing measurement recorded ->
rollback record written -> pointer read back here).

    python bench/bench_bake.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import benchlib

from kristal.channel import bakes, records
from kristal.dev.processes import start_prefect_server, stop_process
from kristal.dev.prometheus import MetricsExporter, start_prometheus
from kristal.publish.datagen import generate_triples

INTERVAL_S = 1.0
SCRAPE_S = 1.0
METRIC = "kristal_error_ratio"


_cli = benchlib.kristalctl  # the real CLI in a subprocess


def _until(what: str, probe: object, timeout: float = 180) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()  # type: ignore[operator]
        if got:
            return got
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    samples: list[dict[str, float]] = []
    with benchlib.workdir(args.workdir, "kristal-bench-bake-") as work, \
            benchlib.seaweed(work) as server:
        exporter = MetricsExporter()
        prom = start_prometheus(work / "prometheus", exporter.port, scrape_interval_s=1)
        prefect = start_prefect_server(work / "prefect", log_path=work / "prefect.log")
        try:
            world = benchlib.make_world(work / "home", benchlib.store_config(server))
            trust_path = Path(world.env["KRISTAL_TRUST_FILE"])
            trust = json.loads(trust_path.read_text())
            trust["channels"]["*"]["bake"] = {
                "duration": "0s", "interval": "1s",
                "metrics": [{"name": "error-rate", "condition": "< 0.05",
                             "query": f'max({METRIC}{{channel="$channel"}})'}]}
            trust_path.write_text(json.dumps(trust))
            env = {**os.environ, **world.env, "PREFECT_API_URL": prefect.api_url,
                   "KRISTAL_PROMETHEUS_URL": prom.url}
            data = work / "triples.jsonl"
            generate_triples(data, 2000)
            for release_id in range(1, 2 * args.runs + 2):
                world.publish(release_id, data)
            channel = world.channel
            exporter.set(METRIC, {"channel": channel}, 0.001)
            _cli(env, "activate", channel, "--release", "1", "--bake", "0",
                 "--operator", "bench", "--reason", "bench")
            release = 1
            for _ in range(args.runs):
                good, release = release, release + 1
                _cli(env, "activate", channel, "--release", str(release), "--bake", "120s",
                     "--bake-interval", f"{INTERVAL_S:g}s", "--operator", "bench",
                     "--reason", "bench")
                record = records.read_pointer(world.ctx, channel).record
                assert record is not None and record.active.release_id == release
                _until("two passed measurements",
                       lambda r=record: len(bakes.measurements(world.ctx, r)) >= 2)
                flipped = time.monotonic()
                flipped_at = world.ctx.now()
                exporter.set(METRIC, {"channel": channel}, 0.5)
                _until("the previous release live", lambda g=good: (
                    (live := records.read_pointer(world.ctx, channel).record) is not None
                    and live.active.release_id == g))
                took = time.monotonic() - flipped
                back = records.read_pointer(world.ctx, channel).record
                assert back is not None
                failing = next(m for m in bakes.measurements(world.ctx, record)
                               if m.result == "failed")
                samples.append({
                    "crossing_to_previous_live_s": took,
                    "crossing_to_failed_measurement_s":
                        (failing.created_at - flipped_at).total_seconds(),
                    "failed_measurement_to_rollback_record_s":
                        (back.created_at - failing.created_at).total_seconds(),
                })
                exporter.set(METRIC, {"channel": channel}, 0.001)
                release += 1  # past the quarantined release
                _cli(env, "activate", channel, "--release", str(release), "--bake", "0",
                     "--operator", "bench", "--reason", "bench")
        finally:
            stop_process(prefect.pid)
            stop_process(prom.pid)
            exporter.close()
    result = {key: round(benchlib.median([s[key] for s in samples]), 2) for key in samples[0]}
    result |= {"runs": args.runs, "floor_interval_s": INTERVAL_S, "scrape_interval_s": SCRAPE_S,
               "max_crossing_to_previous_live_s": round(
                   max(s["crossing_to_previous_live_s"] for s in samples), 2)}
    if args.json:
        print(json.dumps({"machine": benchlib.machine(), **result}))
        return
    print(benchlib.table(["what", "median s"], [
        ["metric crosses -> previous release live", result["crossing_to_previous_live_s"]],
        ["  crossing -> failed measurement recorded",
         result["crossing_to_failed_measurement_s"]],
        ["  failed measurement -> rollback record", result[
            "failed_measurement_to_rollback_record_s"]],
        ["floor: the bake interval", INTERVAL_S],
        ["  (+ Prometheus scrape interval)", SCRAPE_S],
    ]))


if __name__ == "__main__":
    main()
