"""Rollback latency for a small release on a private SeaweedFS, all modes in one run:

- auto rollback after a failed check, driven step by step (plan_activation, stage_release,
  switch, measure, record_checks, then quarantine + plan_rollback + stage_release + switch +
  measure + record_checks): from the moment `record_checks` returns the failed outcome to the
  pointer naming the previous release, and to the end of the rollback's own checks;
- the same through the activate operation (plain runner), read from the records' own `created_at`
  (checks record of the failed sequence -> auto_rollback record; one clock);
- baseline: a plain manual rollback (`to="previous"`) of a good release, same split;
- the rollback fast path (target still staged) beside the same rollback with the target's
  cached files and index deleted first (cold).

Usage: python bench/bench_rollback.py [--runs N] [--rows N] [--workdir DIR] [--json]
Targets: failed check -> pointer on previous < 1 s; fast path start -> switched < 300 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import benchlib
from benchlib import BenchWorld, median, note, table, verdict

from kristal.channel import pointer as ptr
from kristal.channel import records
from kristal.errors import CheckFailed
from kristal.operations import steps
from kristal.operations.plan import plan_activation
from kristal.operations.rollback_target import plan_rollback
from kristal.publish.datagen import generate_triples
from kristal.runtime import staging
from kristal.verify.fetch import verify_release

ROLLBACK_TARGET_S = 1.0
FAST_PATH_TARGET_S = 0.3

# The instant the pointer PUT returned inside steps.switch_pointer (before the history write).
_COMMITTED: list[float] = []
_real_commit = ptr.commit


def _timed_commit(*args: Any, **kwargs: Any) -> records.PointerState:
    state = _real_commit(*args, **kwargs)
    _COMMITTED.append(time.perf_counter())
    return state


ptr.commit = _timed_commit  # steps.switch_pointer calls ptr.commit through the module


class Releases:
    """Publishes releases 1, 2, 3, ... on demand, each with its own data."""

    def __init__(self, world: BenchWorld, rows: int) -> None:
        self.world = world
        self.rows = rows
        self.next_id = 1
        self.data_bytes = 0

    def publish(self, *, bad: bool) -> int:
        rid = self.next_id
        self.next_id += 1
        data = self.world.home / f"triples-{rid}.jsonl"
        generate_triples(data, self.rows, seed=rid)
        self.data_bytes = data.stat().st_size
        expect = None
        if bad:
            # Row count right, one smoke query wrong: the check that fails is the smoke query.
            expect = {"row_count": self.rows,
                      "smoke_queries": [{"pattern": {"s": "entity:000000000", "p": None,
                                                     "o": None}, "expect_count": 987654}],
                      "latency_p95_ms": 50, "max_rss_mb": 512}
        self.world.publish(rid, data, expect=expect)
        data.unlink()
        return rid


def activate_good(world: BenchWorld, rid: int) -> None:
    result = benchlib.activate_plain(world.ctx, world.channel, rid, world.who("good"))
    assert result.check_result == "passed", result


def switch_bad_and_check(world: BenchWorld, rid: int) -> Any:
    """Activate a release whose smoke expectation is wrong; returns (record, failed checks)."""
    ctx, who = world.ctx, world.who("bad")
    plan = plan_activation(ctx, world.channel, release_id=rid)
    staging.stage_release(ctx, plan.release)
    record = steps.switch_pointer(ctx, plan, who)
    checks = steps.record_checks(ctx, record, steps.measure_pinned(ctx, record, plan.release))
    assert checks.result == "failed", checks
    return record, checks


def rollback_steps(world: BenchWorld, *, kind: str, expected: str | None) -> dict[str, float]:
    """plan_rollback + stage_release + switch + measure + record_checks, as
    the rollback operation runs them; times from the call (t0 = now)."""
    ctx, who = world.ctx, world.who(kind)
    t0 = time.perf_counter()
    decision = plan_rollback(ctx, world.channel, to="previous", expected_activation_id=expected,
                             kind=kind)  # type: ignore[arg-type]
    assert decision.plan is not None, decision.noop_reason
    t_plan = time.perf_counter()
    staging.stage_release(ctx, decision.plan.release)
    t_stage = time.perf_counter()
    _COMMITTED.clear()
    record = steps.switch_pointer(ctx, decision.plan, who)
    t_switch = time.perf_counter()
    t_commit = _COMMITTED[-1]
    checks = steps.record_checks(ctx, record,
                                      steps.measure_pinned(ctx, record, decision.plan.release))
    t_checks = time.perf_counter()
    assert checks.result == "passed", checks
    live = records.read_pointer(ctx, world.channel).record
    assert live is not None and live.activation_id == record.activation_id
    return {"plan": t_plan - t0, "stage": t_stage - t_plan,
            "to_commit": t_commit - t0, "to_switch_return": t_switch - t0,
            "with_checks": t_checks - t0, "release_id": float(record.active.release_id)}


def drop_cached(world: BenchWorld, release_id: int) -> None:
    """Delete a release's cached blobs and query index: its next staging is a cold one."""
    release = verify_release(world.ctx, world.channel, release_id=release_id)
    for _key, entry in staging._inventory(release):
        world.ctx.cache.path_for(entry.sha256).unlink(missing_ok=True)
    for pack in release.packs:
        staging.index_path(world.ctx, pack.pack_id).unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per mode (median; default 5)")
    parser.add_argument("--rows", type=int, default=5000,
                        help="triples per release (default 5000)")
    parser.add_argument("--workdir", help="keep everything here instead of a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    auto: list[dict[str, float]] = []
    via_pipeline: list[dict[str, float]] = []
    manual: list[dict[str, float]] = []
    cold: list[dict[str, float]] = []
    with benchlib.workdir(args.workdir, "kristal-bench-rollback-") as work, \
            benchlib.seaweed(work) as server:
        world = benchlib.make_world(work / "home", benchlib.store_config(server))
        releases = Releases(world, args.rows)
        note(f"release 1 (good, {args.rows} triples) ...")
        activate_good(world, releases.publish(bad=False))

        for run in range(args.runs):
            note(f"auto rollback, steps: run {run + 1}/{args.runs} ...")
            rid = releases.publish(bad=True)
            record, _checks = switch_bad_and_check(world, rid)
            # t0: record_checks has returned the failed outcome.
            t0 = time.perf_counter()
            steps.quarantine_release(world.ctx, record, "bench: failed check")
            t_q = time.perf_counter() - t0
            timings = rollback_steps(world, kind="auto_rollback", expected=record.activation_id)
            timings = {k: v + t_q if k in ("to_commit", "to_switch_return", "with_checks") else v
                       for k, v in timings.items()}
            timings["quarantine"] = t_q
            auto.append(timings)

        for run in range(args.runs):
            note(f"auto rollback, activate operation: run {run + 1}/{args.runs} ...")
            rid = releases.publish(bad=True)
            t0 = time.perf_counter()
            try:
                benchlib.activate_plain(world.ctx, world.channel, rid, world.who("bad"))
                raise AssertionError("the bad release passed its checks")
            except CheckFailed:
                wall = time.perf_counter() - t0
            live = records.read_pointer(world.ctx, world.channel).record
            assert live is not None and live.kind == "auto_rollback"
            failed = records.read_checks_at(world.ctx, world.channel, live.sequence - 1)
            assert failed is not None and failed.result == "failed"
            own = records.read_checks_at(world.ctx, world.channel, live.sequence)
            assert own is not None
            via_pipeline.append({
                "checks_to_rollback_record": (live.created_at - failed.created_at).total_seconds(),
                "checks_to_rollback_checks": (own.created_at - failed.created_at).total_seconds(),
                "activate_release_wall": wall})

        for label, samples, prepare in (("manual rollback (baseline)", manual, False),
                                        ("manual rollback, target not staged", cold, True)):
            for run in range(args.runs):
                note(f"{label}: run {run + 1}/{args.runs} ...")
                activate_good(world, releases.publish(bad=False))
                live = records.read_pointer(world.ctx, world.channel).record
                assert live is not None and live.previous is not None
                target = live.previous.release_id
                if prepare:
                    drop_cached(world, target)
                samples.append(rollback_steps(world, kind="rollback", expected=None))
        release_bytes = releases.data_bytes

    figures = summarise(args, release_bytes, auto, via_pipeline, manual, cold)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        report(figures)
    return 0


def _medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: median([s[k] for s in samples]) for k in samples[0]}


def summarise(args: argparse.Namespace, release_bytes: int, auto: list[dict[str, float]],
              via_pipeline: list[dict[str, float]], manual: list[dict[str, float]],
              cold: list[dict[str, float]]) -> dict[str, Any]:
    a, m, c, p = _medians(auto), _medians(manual), _medians(cold), _medians(via_pipeline)
    return {
        "benchmark": "rollback", "machine": benchlib.machine(), "runs": args.runs,
        "rows": args.rows, "triples_bytes": release_bytes,
        "auto_steps": {"median": a, "samples": auto},
        "auto_pipeline_created_at": {"median": p, "samples": via_pipeline},
        "manual_baseline": {"median": m, "samples": manual},
        "manual_cold": {"median": c, "samples": cold},
        "targets": {
            "failed_check_to_pointer_previous_lt_1s": a["to_commit"] < ROLLBACK_TARGET_S,
            "fast_path_start_to_switched_lt_300ms": m["to_commit"] < FAST_PATH_TARGET_S
            and a["to_commit"] - a["quarantine"] < FAST_PATH_TARGET_S,
        },
    }


def report(f: dict[str, Any]) -> None:
    a = f["auto_steps"]["median"]
    m = f["manual_baseline"]["median"]
    c = f["manual_cold"]["median"]
    p = f["auto_pipeline_created_at"]["median"]
    print(f"rollback of a {f['rows']}-triple release ({f['triples_bytes'] / 1e6:.2f} MB of "
          f"triples), median of {f['runs']}, seconds")
    print(table(("rollback", "pointer switched", "switch() returned", "incl. own checks"), [
        ("auto: failed check -> (quarantine + rollback)", a["to_commit"], a["to_switch_return"],
         a["with_checks"]),
        ("auto via activate_release (created_at)", p["checks_to_rollback_record"], None,
         p["checks_to_rollback_checks"]),
        ("baseline: manual to=previous", m["to_commit"], m["to_switch_return"],
         m["with_checks"]),
        ("manual, target not staged (cold)", c["to_commit"], c["to_switch_return"],
         c["with_checks"]),
    ]))
    print()
    print("where the time goes to the switch (medians, s)")
    print(table(("rollback", "quarantine", "plan_rollback", "stage_release",
                 "switch: record + PUT"), [
        ("auto (fast path: target staged)", a["quarantine"], a["plan"], a["stage"],
         a["to_commit"] - a["quarantine"] - a["plan"] - a["stage"]),
        ("manual (fast path: target staged)", None, m["plan"], m["stage"],
         m["to_commit"] - m["plan"] - m["stage"]),
        ("manual, cold (target not staged)", None, c["plan"], c["stage"],
         c["to_commit"] - c["plan"] - c["stage"]),
    ]))
    t = f["targets"]
    print(f"failed check -> pointer on previous: {a['to_commit']:.3f} s "
          f"(target < {ROLLBACK_TARGET_S:.0f} s: "
          f"{verdict(t['failed_check_to_pointer_previous_lt_1s'])})")
    print(f"fast path start -> switched: manual {m['to_commit'] * 1000:.0f} ms, auto "
          f"{(a['to_commit'] - a['quarantine']) * 1000:.0f} ms (target < "
          f"{FAST_PATH_TARGET_S * 1000:.0f} ms: "
          f"{verdict(t['fast_path_start_to_switched_lt_300ms'])}); "
          f"activate_release of the bad release, whole call: "
          f"{p['activate_release_wall']:.2f} s")


if __name__ == "__main__":
    sys.exit(main())

