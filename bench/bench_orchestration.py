"""Orchestration overhead: the `activate` flow's wall time against the same steps called as
plain functions (the operation, plain runner) for a small release, both in this process,
alternating, with
a per-step breakdown of the plain path so the flow's fixed cost can be read off.

The flow runs against a temporary Prefect server (Prefect's test harness) started here.

    python bench/bench_orchestration.py [--runs 5] [--rows 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import benchlib

from kristal.operations import steps
from kristal.operations.plan import plan_activation
from kristal.publish.datagen import generate_triples
from kristal.runtime import staging


def plain_steps(world: benchlib.BenchWorld, release_id: int) -> dict[str, float]:
    """The activate operation's steps one by one, timed (the plain runner's calls)."""
    marks = {}
    t = time.perf_counter()
    plan = plan_activation(world.ctx, world.channel, release_id=release_id)
    marks["resolve+verify"] = time.perf_counter() - t
    t = time.perf_counter()
    staging.stage_release(world.ctx, plan.release)
    marks["stage"] = time.perf_counter() - t
    t = time.perf_counter()
    if plan.state.record is not None:
        staging.confirm_restorable(world.ctx, plan.state.record.active)
    record = steps.switch_pointer(world.ctx, plan, world.who())
    marks["switch"] = time.perf_counter() - t
    t = time.perf_counter()
    reports = steps.measure_pinned(world.ctx, record, plan.release)
    marks["checks"] = time.perf_counter() - t
    t = time.perf_counter()
    steps.record_checks(world.ctx, record, reports)
    marks["record checks"] = time.perf_counter() - t
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    with benchlib.workdir(args.workdir, "kristal-bench-orch-") as work, \
            benchlib.seaweed(work) as server:
        os.environ["PREFECT_HOME"] = str(work / "prefect")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        world = benchlib.make_world(work / "home", benchlib.store_config(server))
        data = work / "triples.jsonl"
        generate_triples(data, args.rows)
        total = 3 * args.runs + 1
        for release_id in range(1, total + 1):
            world.publish(release_id, data if release_id % 2 else _variant(data, work))
        benchlib.activate_plain(world.ctx, world.channel, 1, world.who())  # warm caches and imports

        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=90):
            from flows.activate import activate
            from flows.params import ActivateRequest

            release_id = 1
            flow_s, plain_s, steps = [], [], []
            for _ in range(args.runs):
                release_id += 1
                t = time.perf_counter()
                benchlib.activate_plain(world.ctx, world.channel, release_id, world.who())
                plain_s.append(time.perf_counter() - t)
                release_id += 1
                t = time.perf_counter()
                activate(ActivateRequest(channel_id=world.channel, release_id=release_id,
                                         operator="bench", reason="bench"))
                flow_s.append(time.perf_counter() - t)
                release_id += 1
                steps.append(plain_steps(world, release_id))
    breakdown = {k: round(benchlib.median([s[k] for s in steps]) * 1000, 1) for k in steps[0]}
    result = {
        "rows": args.rows, "runs": args.runs,
        "flow_s": round(benchlib.median(flow_s), 3),
        "plain_s": round(benchlib.median(plain_s), 3),
        "overhead_s": round(benchlib.median(flow_s) - benchlib.median(plain_s), 3),
        "plain_steps_ms": breakdown,
    }
    if args.json:
        print(json.dumps({"machine": benchlib.machine(), **result}))
        return
    print(benchlib.table(["path", "median wall (s)"],
                         [["activate flow (Prefect)", result["flow_s"]],
                          ["baseline: plain functions", result["plain_s"]],
                          ["orchestration overhead", result["overhead_s"]]]))
    print(benchlib.table(["plain step", "median (ms)"], list(breakdown.items())))


def _variant(data: Path, work: Path) -> Path:
    """Same rows plus one, so even releases have their own pack (a fresh download each time)."""
    out = work / "triples-variant.jsonl"
    if not out.exists():
        out.write_bytes(data.read_bytes() + b'{"object":"x","predicate":"p:x",'
                        b'"statement_id":"stmt:variant","subject":"zz:variant"}\n')
    return out


if __name__ == "__main__":
    main()
