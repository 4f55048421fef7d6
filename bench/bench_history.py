"""Scale of history: `status` and the rollback decision stay constant-time as a channel's history
grows, because they follow links from the live record instead of listing the history.

Builds one channel with a short history and one with `--records` records (real conditional
pointer writes, history and check objects on a private SeaweedFS), then times, on each, the
`status` read (pointer + its checks) and `plan_rollback(last-known-good)`; the baseline beside
them is a listing of the whole history (what a naive implementation would do).

    python bench/bench_history.py [--records 10000] [--runs 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import benchlib

from kristal.channel import records
from kristal.operations.plan import ActivationPlan
from kristal.operations.rollback_target import plan_rollback
from kristal.operations.steps import record_checks
from kristal.operations.steps import switch_pointer as switch
from kristal.publish.datagen import generate_triples
from kristal.runtime.checks import CheckReport
from kristal.verify.fetch import verify_release


def grow(world: benchlib.BenchWorld, records: int) -> float:
    """Append records alternating releases 1 and 2 (as rollbacks), each with passed checks."""
    releases = {r: verify_release(world.ctx, world.channel, release_id=r) for r in (1, 2)}
    report = CheckReport(passed=True, outcomes=[], row_count=0, latency_p95_ms=0.0,
                         peak_rss_mb=0.0, runs=50)
    started = time.perf_counter()
    state = records.read_pointer(world.ctx, world.channel)
    while state.sequence < records:
        target = 1 if state.record.active.release_id == 2 else 2
        plan = ActivationPlan(world.channel, state, releases[target], "rollback", forced=False)
        record = switch(world.ctx, plan, world.who("grow history"))
        record_checks(world.ctx, record, [report])
        state = records.read_pointer(world.ctx, world.channel)
    return time.perf_counter() - started


def measure(world: benchlib.BenchWorld, runs: int) -> dict[str, float]:
    status, decide, listing = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        state = records.read_pointer(world.ctx, world.channel)
        records.read_checks_at(world.ctx, world.channel, state.sequence)
        t1 = time.perf_counter()
        plan_rollback(world.ctx, world.channel, to="last-known-good")
        t2 = time.perf_counter()
        status.append(t1 - t0)
        decide.append(t2 - t1)
    for _ in range(max(3, runs // 10)):
        t0 = time.perf_counter()
        sum(1 for _ in world.store.list_keys(f"channels/{world.channel}/activations/"))
        listing.append(time.perf_counter() - t0)
    return {"status_ms": benchlib.median(status) * 1000,
            "rollback_decision_ms": benchlib.median(decide) * 1000,
            "list_history_ms": benchlib.median(listing) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    with benchlib.workdir(args.workdir, "kristal-bench-history-") as work, \
            benchlib.seaweed(work) as server:
        results = {}
        for label, size in (("short", args.small), ("long", args.records)):
            home = work / label
            home.mkdir()
            world = benchlib.make_world(home, benchlib.store_config(server))
            data = home / "triples.jsonl"
            generate_triples(data, 2000)
            world.publish(1, data)
            world.publish(2, data)
            benchlib.activate_plain(world.ctx, world.channel, 1, world.who())
            benchlib.activate_plain(world.ctx, world.channel, 2, world.who())
            build_s = grow(world, size)
            results[label] = {"records": size, "build_s": round(build_s, 1),
                              **{k: round(v, 2) for k, v in measure(world, args.runs).items()}}
            benchlib.note(f"{label}: {results[label]}", quiet=args.json)
    short, long = results["short"], results["long"]
    ratio_status = long["status_ms"] / short["status_ms"]
    ratio_rollback = long["rollback_decision_ms"] / short["rollback_decision_ms"]
    if args.json:
        print(json.dumps({"machine": benchlib.machine(), "results": results,
                          "status_ratio": ratio_status, "rollback_ratio": ratio_rollback}))
        return
    print(benchlib.table(
        ["records", "status (ms)", "rollback decision (ms)", "baseline: list history (ms)"],
        [[r["records"], r["status_ms"], r["rollback_decision_ms"], r["list_history_ms"]]
         for r in (short, long)]))
    print(f"status {ratio_status:.2f}x and rollback decision {ratio_rollback:.2f}x from "
          f"{short['records']} to {long['records']} records (constant time: ~1x); "
          f"{benchlib.verdict(ratio_status < 1.5 and ratio_rollback < 1.5)}")


if __name__ == "__main__":
    main()
