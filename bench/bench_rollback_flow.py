"""Rollback through the Prefect `rollback` flow: time from calling the flow to the pointer naming
the target (the fast path: target still staged, cached files re-hashed, signatures re-verified),
for a small release (target < 300 ms) and, beside it, a release of about 1 GiB
(exchange blob + pack), whose fast path is dominated by re-hashing the cached files.

The baseline beside each figure is the same rollback through plain functions
(the rollback operation, plain runner) in the same run. The flow runs against a temporary Prefect
server (Prefect's test harness) started here.

    python bench/bench_rollback_flow.py [--small-rows 5000] [--big-rows 4500000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import benchlib

from kristal.channel import pointer as ptr
from kristal.publish.datagen import generate_triples


def _timed_switch() -> list[float]:
    """Wrap pointer.commit so the instant the pointer write returns is recorded."""
    stamps: list[float] = []
    original = ptr.commit

    def commit(*args, **kwargs):  # type: ignore[no-untyped-def]
        state = original(*args, **kwargs)
        stamps.append(time.perf_counter())
        return state

    ptr.commit = commit  # type: ignore[assignment]
    return stamps


def _release_pair(world: benchlib.BenchWorld, rows: int, first_id: int, work: Path) -> None:
    """Publish `first_id` (rows) and `first_id + 1` (a small other release)."""
    data = work / f"triples-{first_id}.jsonl"
    generate_triples(data, rows, seed=first_id)
    other = work / f"triples-{first_id + 1}.jsonl"
    generate_triples(other, 1000, seed=first_id + 1)
    world.publish(first_id, data)
    world.publish(first_id + 1, other)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small-rows", type=int, default=5000)
    parser.add_argument("--big-rows", type=int, default=4_500_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with benchlib.workdir(args.workdir, "kristal-bench-rbflow-") as work, \
            benchlib.seaweed(work) as server:
        os.environ["PREFECT_HOME"] = str(work / "prefect")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=90):
            from flows.params import RollbackRequest
            from flows.rollback import rollback

            stamps = _timed_switch()
            for label, rows in (("small", args.small_rows), ("1 GiB", args.big_rows)):
                home = work / label.replace(" ", "")
                home.mkdir()
                world = benchlib.make_world(home, benchlib.store_config(server))
                benchlib.note(f"{label}: publishing {rows} rows ...", quiet=args.json)
                _release_pair(world, rows, 1, home)
                size = sum(e.size_bytes for _k, e in _inventory(world, 1))
                benchlib.activate_plain(world.ctx, world.channel, 1, world.who())
                benchlib.activate_plain(world.ctx, world.channel, 2, world.who())
                flow_ms, plain_ms = [], []
                for _ in range(args.runs):
                    for path, samples in (("flow", flow_ms), ("plain", plain_ms)):
                        stamps.clear()
                        started = time.perf_counter()
                        if path == "flow":  # back to 1, still staged: the fast path
                            rollback(RollbackRequest(channel_id=world.channel, to="previous",
                                                     operator="bench", reason="bench"))
                        else:
                            benchlib.rollback_plain(world.ctx, world.channel, world.who(),
                                                    to="previous")
                        samples.append((stamps[0] - started) * 1000)
                        # Untimed: forward to 2 again, so that 1 is the previous release.
                        benchlib.rollback_plain(world.ctx, world.channel, world.who(),
                                                to="previous")
                results[label] = {"rows": rows, "release_bytes": size,
                                  "flow_to_switch_ms": round(benchlib.median(flow_ms), 1),
                                  "plain_to_switch_ms": round(benchlib.median(plain_ms), 1)}
                benchlib.note(f"{label}: {results[label]}", quiet=args.json)
    if args.json:
        print(json.dumps({"machine": benchlib.machine(), "results": results}))
        return
    print(benchlib.table(
        ["release", "bytes", "flow call -> pointer switched (ms)", "baseline: plain (ms)"],
        [[k, v["release_bytes"], v["flow_to_switch_ms"], v["plain_to_switch_ms"]]
         for k, v in results.items()]))
    small = results["small"]["flow_to_switch_ms"]
    print(f"small release: {small:.0f} ms from flow start to switch (target < 300 ms): "
          f"{benchlib.verdict(small < 300)}")


def _inventory(world: benchlib.BenchWorld, release_id: int) -> list:  # type: ignore[type-arg]
    from kristal.runtime.staging import _inventory as inventory
    from kristal.verify.fetch import verify_release

    return inventory(verify_release(world.ctx, world.channel, release_id=release_id))


if __name__ == "__main__":
    main()
