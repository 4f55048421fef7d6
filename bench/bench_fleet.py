"""Fleet activation: one release to N channels (canary, then waves) against the same release to
one channel, each from a cold cache, on a private SeaweedFS; also counts payload downloads.

Measured two ways, in one run:
- `flow`: the Prefect `fleet-activate` flow vs the `activate` flow for one channel, against a
  temporary Prefect server (prefect_test_harness; its ~10 s start is not timed);
- `plain` (a reference, not the product path): the activate operation with the plain runner per
  channel, the fleet staged once and then activated wave by wave in a thread pool of
  `--max-parallel`; nothing else is shared, so every channel runs its own checks process.
Targets (on the flow, which `kristalctl fleet-activate` runs): fleet time under 5x one channel;
1 download per payload object for the whole fleet.

Usage: python bench/bench_fleet.py [--channels 50] [--rows 2000] [--wave-size 10]
                                   [--max-parallel 4] [--skip-flow] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchlib
from benchlib import note, table, verdict

from kristal.config import Settings
from kristal.context import Context
from kristal.operations.fleet_rules import (
    plan_waves,
    publish_to_channels,
    skew_report,
    skew_summary,
)
from kristal.publish.datagen import generate_triples
from kristal.runtime import staging
from kristal.store.s3 import ObjectStore
from kristal.verify.fetch import verify_release

TARGET_RATIO = 5.0


class DownloadCounter:
    """Counts ObjectStore.download_to calls (payload GETs) process-wide."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        original = ObjectStore.download_to
        counter = self

        def counting(store: ObjectStore, key: str, *args: Any, **kw: Any) -> None:
            with counter._lock:
                counter.count += 1
            original(store, key, *args, **kw)

        ObjectStore.download_to = counting  # type: ignore[method-assign]

    def take(self) -> int:
        with self._lock:
            value, self.count = self.count, 0
        return value


def fresh_cache(work: Path, label: str) -> Context:
    """Point KRISTAL_CACHE_DIR at an empty directory (cold cache) and return a new Context."""
    os.environ["KRISTAL_CACHE_DIR"] = str(work / "caches" / f"{label}-{uuid.uuid4().hex[:6]}")
    return Context.from_settings(Settings.from_env())


def plain_fleet(ctx: Context, waves: list[list[str]], release_id: int, who: Any,
                max_parallel: int) -> None:
    staging.stage_release(ctx, verify_release(ctx, waves[0][0], release_id=release_id))
    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        for wave in waves:
            list(pool.map(lambda c: benchlib.activate_plain(ctx, c, release_id, who), wave))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=50, help="fleet size (default 50)")
    parser.add_argument("--rows", type=int, default=2000, help="triples in the release")
    parser.add_argument("--wave-size", type=int, default=10)
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument("--skip-flow", action="store_true", help="plain path only (no Prefect)")
    parser.add_argument("--workdir", help="keep everything here instead of a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    quiet = args.json

    with benchlib.workdir(args.workdir, "kristal-bench-fleet-") as work, \
            benchlib.seaweed(work) as server:
        os.environ["PREFECT_HOME"] = str(work / "prefect")
        os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(work / "prefect" / "storage")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        world = benchlib.make_world(work / "home", benchlib.store_config(server))
        tag = uuid.uuid4().hex[:6]
        # Four disjoint channel sets: {plain, flow} x {one channel, the fleet}.
        sets = {name: [f"acme/{name}{i}/{tag}" for i in range(n)]
                for name, n in (("p-one", 1), ("p-fleet", args.channels),
                                ("f-one", 1), ("f-fleet", args.channels))}
        everyone = [c for chans in sets.values() for c in chans]
        data = work / "triples.jsonl"
        generate_triples(data, args.rows)
        note(f"publishing one build to {len(everyone)} channels ...", quiet=quiet)
        t = time.perf_counter()
        world.channel = everyone[0]
        first = world.publish(1, data)
        publish_to_channels(world.store, world.ctx.trust_file, world.keys,
                            result_of_first_publish=first, channel_ids=everyone, release_id=1,
                            generation=1, now=world.ctx.now)
        publish_s = time.perf_counter() - t
        counter = DownloadCounter()
        who = world.who("fleet benchmark")
        results: dict[str, Any] = {"channels": args.channels, "rows": args.rows,
                                   "wave_size": args.wave_size, "max_parallel": args.max_parallel,
                                   "publish_to_all_s": round(publish_s, 2)}

        note("plain: one channel ...", quiet=quiet)
        ctx = fresh_cache(work, "p-one")
        t = time.perf_counter()
        benchlib.activate_plain(ctx, sets["p-one"][0], 1, who)
        results["plain_one_s"] = round(time.perf_counter() - t, 3)
        results["plain_one_downloads"] = counter.take()
        note(f"plain: {args.channels} channels ...", quiet=quiet)
        ctx = fresh_cache(work, "p-fleet")
        waves = plan_waves(sets["p-fleet"], None, args.wave_size)
        t = time.perf_counter()
        plain_fleet(ctx, waves, 1, who, args.max_parallel)
        results["plain_fleet_s"] = round(time.perf_counter() - t, 3)
        results["plain_fleet_downloads"] = counter.take()
        summary = skew_summary(skew_report(ctx, sets["p-fleet"]))
        results["plain_fleet_all_live"] = summary == {"1": sets["p-fleet"]}
        results["plain_ratio"] = round(results["plain_fleet_s"] / results["plain_one_s"], 2)

        if not args.skip_flow:
            note("starting a temporary Prefect server ...", quiet=quiet)
            from prefect.testing.utilities import prefect_test_harness

            with prefect_test_harness(server_startup_timeout=90):
                from flows.activate import activate
                from flows.fleet import FleetRequest, fleet_activate
                from flows.params import ActivateRequest

                warm = [f"acme/warm{i}/{tag}" for i in range(2)]
                publish_to_channels(world.store, world.ctx.trust_file, world.keys,
                                    result_of_first_publish=first, channel_ids=warm,
                                    release_id=1, generation=1, now=world.ctx.now)
                fresh_cache(work, "warm")
                fleet_activate(FleetRequest(channel_ids=warm, release_id=1, operator="bench",
                                            reason="warm-up"))  # imports, first-run costs
                counter.take()
                note("flow: one channel ...", quiet=quiet)
                fresh_cache(work, "f-one")
                t = time.perf_counter()
                activate(ActivateRequest(channel_id=sets["f-one"][0], release_id=1,
                                         operator="bench", reason="bench"))
                results["flow_one_s"] = round(time.perf_counter() - t, 3)
                results["flow_one_downloads"] = counter.take()
                note(f"flow: {args.channels} channels ...", quiet=quiet)
                fresh_cache(work, "f-fleet")
                t = time.perf_counter()
                outcome = fleet_activate(FleetRequest(
                    channel_ids=sets["f-fleet"], release_id=1, wave_size=args.wave_size,
                    max_parallel=args.max_parallel, operator="bench", reason="bench"))
                results["flow_fleet_s"] = round(time.perf_counter() - t, 3)
                results["flow_fleet_downloads"] = counter.take()
                results["flow_fleet_outcome"] = outcome.outcome
                results["flow_fleet_all_live"] = (
                    skew_summary(outcome.skew) == {"1": sets["f-fleet"]})
                results["flow_ratio"] = round(results["flow_fleet_s"] / results["flow_one_s"], 2)

    if args.json:
        print(json.dumps({"machine": benchlib.machine(), **results}))
        return 0
    rows = [["reference: plain, nothing shared", results["plain_one_s"],
             results["plain_fleet_s"], results["plain_ratio"], "n/a",
             results["plain_fleet_downloads"], verdict(results["plain_fleet_downloads"]
                                                       <= results["plain_one_downloads"])]]
    if "flow_ratio" in results:
        rows.append(["flow (Prefect)", results["flow_one_s"], results["flow_fleet_s"],
                     results["flow_ratio"], verdict(results["flow_ratio"] < TARGET_RATIO),
                     results["flow_fleet_downloads"], verdict(results["flow_fleet_downloads"]
                                                              <= results["flow_one_downloads"])])
    print(f"{args.channels} channels vs 1, {args.rows} rows, waves of {args.wave_size} after a "
          f"canary, {args.max_parallel} at a time; one channel downloads "
          f"{results['plain_one_downloads']} payload objects (= 1 download of the release)")
    print(table(["path", "1 channel (s)", f"{args.channels} channels (s)", "ratio",
                 f"< {TARGET_RATIO:g}x", "fleet downloads", "= one release"], rows))
    print(json.dumps({k: v for k, v in results.items() if k.endswith("all_live")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
