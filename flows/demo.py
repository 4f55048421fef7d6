"""`kristalctl demo`: the main job end to end on the local stack.

Starts (or reuses) the local stack, publishes releases 1 and 2 (good) and 3 (a smoke expectation
that cannot hold) to a fresh channel, activates 1, 2, then 3, which its checks roll back to 2,
and prints the history.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from kristal.errors import CheckFailed

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "triples.jsonl"


def _say(as_json: bool, text: str) -> None:
    if not as_json:
        print(text, flush=True)


def _write_variant(src: Path, dst: Path, extra: int) -> None:
    lines = src.read_bytes().splitlines(keepends=True)
    with dst.open("wb") as out:
        out.writelines(lines)
        for i in range(extra):
            out.write(
                json.dumps(
                    {
                        "statement_id": f"stmt:demo:{i:04d}",
                        "subject": f"entity:demo-{i:04d}",
                        "predicate": "relation:added-in",
                        "object": "release:2",
                    },
                    ensure_ascii=False,
                ).encode()
                + b"\n"
            )


def _ensure_stack(as_json: bool) -> None:
    from kristal.config import home_dir, s3_endpoint_set

    if s3_endpoint_set() and os.environ.get("PREFECT_API_URL"):
        return
    from kristal.dev.devstack import dev_up

    home = home_dir()
    _say(as_json, f"starting the local stack under {home} (SeaweedFS + Prefect server) ...")
    stack, _started = dev_up(home)
    os.environ.update(stack.exports())
    _say(as_json, f"  S3 {stack.s3_endpoint}   Prefect {stack.prefect_api_url}")


def run_demo(*, as_json: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    _ensure_stack(as_json)
    from flows.console import quiet_prefect
    from kristal.config import Settings
    from kristal.context import Context
    from kristal.publish.publisher import load_publisher_keys, publish

    quiet_prefect()
    from flows.activate import activate
    from flows.params import ActivateRequest

    ctx = Context.from_settings()
    ctx.store.ensure_bucket()
    channel = f"demo/dev/run-{time.strftime('%Y%m%d-%H%M%S')}"
    keys = load_publisher_keys(Settings.from_env().key_dir)
    summary: dict[str, Any] = {"channel_id": channel, "steps": []}
    with tempfile.TemporaryDirectory(prefix="kristal-demo-") as tmp:
        work = Path(tmp)
        data1, data2 = work / "release-1.jsonl", work / "release-2.jsonl"
        _write_variant(SAMPLE, data1, 0)
        _write_variant(SAMPLE, data2, 25)
        broken = work / "expect-broken.json"
        broken.write_text(
            json.dumps(
                {
                    "row_count": sum(1 for _ in data2.open("rb")),
                    "smoke_queries": [
                        {
                            "pattern": {"s": "entity:demo-0001", "p": None, "o": None},
                            "expect_count": 2,
                        }
                    ],
                    "latency_p95_ms": 50,
                    "max_rss_mb": 512,
                }
            )
        )
        for release_id, data, expect in ((1, data1, None), (2, data2, None), (3, data2, broken)):
            result = publish(
                ctx.store,
                ctx.trust(channel),
                keys,
                data=data,
                channel_id=channel,
                release_id=release_id,
                generation=1,
                expect_file=expect,
                now=ctx.now,
            )
            _say(
                as_json,
                f"published release {release_id}: {result.row_count} rows, "
                f"pack {result.runtime_pack_ids[0][:19]}...",
            )
            summary["steps"].append({"publish": release_id, "rows": result.row_count})
    for release_id in (1, 2, 3):
        request = ActivateRequest(
            channel_id=channel,
            release_id=release_id,
            operator="demo",
            reason=f"demo: activate release {release_id}",
        )
        try:
            outcome = activate(request)
            _say(
                as_json, f"activate {release_id}: {outcome.message} (checks {outcome.check_result})"
            )
            summary["steps"].append({"activate": release_id, "outcome": outcome.outcome})
        except CheckFailed as exc:
            _say(as_json, f"activate {release_id}: {exc.line()}")
            summary["steps"].append(
                {"activate": release_id, "outcome": "rolled_back", "error": exc.code}
            )
    from kristal.channel import records
    from kristal.channel.history import history

    listed = history(ctx, channel)
    live = records.read_pointer(ctx, channel).record
    summary["history"] = [
        {
            "sequence": r.sequence,
            "kind": r.kind,
            "release_id": r.active.release_id,
            "checks": (
                c.result
                if (c := records.read_checks(ctx, r))
                else "pending"
            ),
        }
        for r in listed
    ]
    summary["live_release_id"] = live.active.release_id if live else None
    summary["seconds"] = round(time.monotonic() - started, 1)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\nhistory of {channel}:")
        for row in summary["history"]:
            print(
                f"  {row['sequence']:>3}  {row['kind']:<14} release {row['release_id']}  "
                f"checks {row['checks']}"
            )
        print(f"live: release {summary['live_release_id']}   ({summary['seconds']} s)")
    return summary
