"""One activation in its own process, for the concurrency and kill -9 tests.

    python tests/activation_worker.py CHANNEL RELEASE_ID [--force] [--ready FILE --go FILE]

Builds `Context.from_settings()` from the KRISTAL_* / AWS_* variables the `world` fixture set,
optionally announces itself (`--ready`) and waits for a shared barrier file (`--go`), then calls
`kristal.pipeline.activate_release` directly (no Prefect: the concurrency limit is bypassed on
purpose). Prints exactly one JSON line on stdout: the outcome, or the error code. With
`KRISTAL_CRASH_AT=<point>` set the process SIGKILLs itself at that point and prints nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

BARRIER_TIMEOUT_S = 120.0
WORKER = Path(__file__).resolve()
REPO_ROOT = WORKER.parent.parent


# --- used by the tests (imported from tests/, never by the worker process itself) ---------------
def worker_env(world_env: dict[str, str], **extra: str) -> dict[str, str]:
    """os.environ + the world's KRISTAL_*/AWS_* variables (+ extra), with the repo importable."""
    env = {k: v for k, v in os.environ.items() if k != "KRISTAL_CRASH_AT"}
    env.update(world_env)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def worker_command(channel: str, release_id: int, *, force: bool = False,
                   ready: Path | None = None, go: Path | None = None) -> list[str]:
    cmd = [sys.executable, str(WORKER), channel, str(release_id)]
    if force:
        cmd.append("--force")
    if ready is not None:
        cmd += ["--ready", str(ready)]
    if go is not None:
        cmd += ["--go", str(go)]
    return cmd


def assert_history_complete(store: Any, channel: str) -> list[Any]:
    """Invariant 4 and the hash chain: history 1..N exists (nothing beyond), N is the pointer's
    sequence, history[N] is the pointer's record, and every record's prev_record_sha256 is the
    JCS SHA-256 of the record before it. Returns the records, oldest first."""
    from kristal.channel import pointer as ptr
    from kristal.formats import layout
    from kristal.formats.canonical import canonical_sha256

    state = ptr.read_pointer(store, channel)
    assert state.record is not None, "the channel has no live record"
    n = state.sequence
    keys = sorted(store.list_keys(layout.history_prefix(channel)))
    assert keys == [layout.history(channel, s) for s in range(1, n + 1)], (
        f"history objects {keys} are not exactly sequences 1..{n}")
    records = []
    for seq in range(1, n + 1):
        record = ptr.read_history(store, channel, seq)
        assert record is not None and record.sequence == seq
        if seq == 1:
            assert record.prev_record_sha256 is None
            assert record.previous is None and record.previous_sequence is None
        else:
            before = records[-1]
            assert record.prev_record_sha256 == canonical_sha256(before.model_dump(mode="json")), (
                f"hash chain broken between sequences {seq - 1} and {seq}")
            assert record.previous_sequence == seq - 1 and record.previous == before.active
        records.append(record)
    assert records[-1] == state.record, "history[N] differs from the live pointer"
    assert len({r.activation_id for r in records}) == n, "an activation_id appears twice"
    return records


def parse_outcome(stdout: str) -> dict[str, Any] | None:
    """The worker's JSON line, or None when it printed none (killed)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None



def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"barrier {path} never appeared")
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("channel")
    parser.add_argument("release_id", type=int)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--go", type=Path)
    args = parser.parse_args(argv)

    # Imports (and the context) before the barrier, so that the processes start together.
    from kristal.context import Context
    from kristal.errors import KristalError
    from kristal.operations.pipeline import activate_release
    from kristal.operations.plan import Who

    ctx = Context.from_settings()
    who = Who(operator="activation-worker", reason="reliability test",
              correlation_id=f"worker-{args.release_id}-{uuid.uuid4().hex[:8]}")
    if args.ready is not None:
        args.ready.write_text("ready")
    if args.go is not None:
        _wait_for(args.go)

    out: dict[str, Any] = {"release_id": args.release_id}
    started = time.monotonic()
    try:
        result = activate_release(ctx, args.channel, args.release_id, who, force=args.force)
    except KristalError as exc:
        out.update(ok=False, code=exc.code, exit_status=exc.exit_status, message=exc.message)
    else:
        record = result.record
        out.update(
            ok=True,
            activation_id=record.activation_id if record else None,
            sequence=record.sequence if record else None,
            checks=result.checks.result if result.checks else None,
            note=result.note,
        )
    out["seconds"] = round(time.monotonic() - started, 3)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
