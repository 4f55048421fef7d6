"""Pointer switch latency: `pointer.commit` (one conditional PUT with If-Match, the new state
taken from the PUT's own ETag: no re-read) beside a plain unconditional put_object of the same
bytes, interleaved in one run on a private SeaweedFS.

Usage: python bench/bench_pointer.py [--runs N] [--rows N] [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import benchlib
from benchlib import median, note, p95, table

from kristal.channel import pointer as ptr
from kristal.channel import records
from kristal.channel.pointer import new_record
from kristal.formats.channel_docs import ReleaseRef
from kristal.publish.datagen import generate_triples
from kristal.verify.fetch import verify_release

WARMUP = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="commits (and puts) (default 100)")
    parser.add_argument("--rows", type=int, default=1000,
                        help="triples in the release the records name (default 1000)")
    parser.add_argument("--workdir", help="keep everything here instead of a temp dir")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    with benchlib.workdir(args.workdir, "kristal-bench-pointer-") as work, \
            benchlib.seaweed(work) as server:
        world = benchlib.make_world(work / "home", benchlib.store_config(server))
        store = world.store
        note("publishing a small release (its IDs and evidence fill the records) ...")
        data = work / "triples.jsonl"
        generate_triples(data, args.rows)
        world.publish(1, data)
        release = verify_release(world.ctx, world.channel, release_id=1)
        active = ReleaseRef.of(release.entry)
        evidence = {**release.evidence, "report_ids": release.report_ids}
        who = world.who("pointer benchmark")
        plain_key = f"channels/{world.channel}/bench-plain.json"
        cond_key = f"channels/{world.channel}/bench-if-match.json"

        def next_record(state: records.PointerState) -> Any:
            return new_record(world.ctx.keys, state, channel_id=world.channel, kind="activate",
                              active=active,
                              last_known_good=None,
                              index_version=release.index.index_version, forced=False,
                              operator=who.operator, reason=who.reason,
                              correlation_id=who.correlation_id, flow_run_id=None,
                              now=world.ctx.now(), evidence=evidence)

        state = records.read_pointer(world.ctx, world.channel)
        commit_ms: list[float] = []
        plain_ms: list[float] = []
        if_match_ms: list[float] = []
        body = b""
        cond_etag = store.put_bytes(cond_key, b"{}")
        note(f"{WARMUP} warm-up + {args.runs} rounds of commit / put_object / put_if_match ...")
        for i in range(WARMUP + args.runs):
            record = next_record(state)  # built outside the timed region
            body, _raw = records.record_bytes(record)
            t0 = time.perf_counter()
            state = ptr.commit(world.ctx, record, state)
            t1 = time.perf_counter()
            store.put_bytes(plain_key, body)
            t2 = time.perf_counter()
            outcome = store.put_if_match(cond_key, body, cond_etag)
            t3 = time.perf_counter()
            assert outcome.etag is not None, outcome
            cond_etag = outcome.etag
            if i >= WARMUP:
                commit_ms.append((t1 - t0) * 1000)
                plain_ms.append((t2 - t1) * 1000)
                if_match_ms.append((t3 - t2) * 1000)
        final = records.read_pointer(world.ctx, world.channel)
        assert final.record is not None and final.record.sequence == WARMUP + args.runs
        assert final.etag == state.etag, "the fast path's ETag must be the live one"

    figures = {
        "benchmark": "pointer", "machine": benchlib.machine(), "runs": args.runs,
        "record_bytes": len(body),
        "commit_ms": {"median": median(commit_ms), "p95": p95(commit_ms), "max": max(commit_ms)},
        "plain_put_object_ms": {"median": median(plain_ms), "p95": p95(plain_ms),
                                "max": max(plain_ms)},
        "put_if_match_ms": {"median": median(if_match_ms), "p95": p95(if_match_ms),
                            "max": max(if_match_ms)},
        "ratio_commit_vs_plain_median": median(commit_ms) / median(plain_ms),
        "final_sequence": WARMUP + args.runs,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"pointer switch on SeaweedFS: {args.runs} rounds (after {WARMUP} warm-up), "
          f"record {len(body)} bytes, interleaved")
    rows = [(label, f[k]["median"], f[k]["p95"], f[k]["max"]) for label, k, f in (
        ("pointer.commit (If-Match PUT, no re-read)", "commit_ms", figures),
        ("baseline: plain put_object, same bytes", "plain_put_object_ms", figures),
        ("    raw put_if_match, same bytes", "put_if_match_ms", figures))]
    print(table(("operation", "median ms", "p95 ms", "max ms"), rows))
    print(f"ratio commit/plain (medians) = {figures['ratio_commit_vs_plain_median']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
