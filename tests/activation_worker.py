"""One operation in its own process, for the concurrency and kill -9 tests.

    python tests/activation_worker.py activate CHANNEL RELEASE_ID [--force]
    python tests/activation_worker.py rollback CHANNEL EXPECTED_ACTIVATION_ID
    python tests/activation_worker.py downgrade CHANNEL RELEASE_ID AUTHORIZATION_ID
        [--via flow|plain] [--ready FILE --go FILE]

`--via flow` (the default) runs the Prefect flow against the test session's server
(`PREFECT_API_URL`, set by `worker_env`), as production runs it; `--via plain` runs the same
operation with the plain runner (no orchestrator, hence no channel lock: the concurrency tests
use it to race the conditional write alone). The context comes from the KRISTAL_* / AWS_*
variables the `world` fixture set. The worker optionally announces itself (`--ready`) and waits
for a shared barrier file (`--go`), then prints exactly one JSON line on stdout: the outcome,
or the error code. With `KRISTAL_CRASH_AT=<point>` it SIGKILLs itself at that point and prints
nothing.
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
    """os.environ + the world's KRISTAL_*/AWS_* variables (+ extra), with the repo importable
    and the session's Prefect server as the API."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k != "KRISTAL_CRASH_AT"}
    env.update(world_env)
    env["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def worker_command(channel: str, release_id: int, *, force: bool = False, via: str = "flow",
                   ready: Path | None = None, go: Path | None = None) -> list[str]:
    """An activation of `release_id`."""
    cmd = [sys.executable, str(WORKER), "activate", channel, str(release_id), "--via", via]
    if force:
        cmd.append("--force")
    if ready is not None:
        cmd += ["--ready", str(ready)]
    if go is not None:
        cmd += ["--go", str(go)]
    return cmd


def assert_history_complete(src: Any, channel: str) -> list[Any]:
    """Invariant 4 and the hash chain: history 1..N exists (nothing beyond), N is the pointer's
    sequence, history[N] is the pointer's record, and every record's prev_record_sha256 is the
    JCS SHA-256 of the record before it. Returns the records, oldest first."""
    from kristal.channel import records
    from kristal.formats import layout
    from kristal.formats.canonical import canonical_sha256

    store = src.store
    state = records.read_pointer(src, channel)
    assert state.record is not None, "the channel has no live record"
    n = state.sequence
    keys = sorted(store.list_keys(layout.history_prefix(channel)))
    assert keys == [layout.history(channel, s) for s in range(1, n + 1)], (
        f"history objects {keys} are not exactly sequences 1..{n}")
    walked = []
    for seq in range(1, n + 1):
        record = records.read_history(src, channel, seq)
        assert record is not None and record.sequence == seq
        if seq == 1:
            assert record.prev_record_sha256 is None
            assert record.previous is None and record.previous_sequence is None
        else:
            before = walked[-1]
            assert record.prev_record_sha256 == canonical_sha256(before.model_dump(mode="json")), (
                f"hash chain broken between sequences {seq - 1} and {seq}")
            assert record.previous_sequence == seq - 1 and record.previous == before.active
        walked.append(record)
    assert walked[-1] == state.record, "history[N] differs from the live pointer"
    assert len({r.activation_id for r in walked}) == n, "an activation_id appears twice"
    return walked


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


def _run(args: argparse.Namespace) -> Any:
    from kristal.config import Settings
    from kristal.context import Context
    from kristal.operations.outcome import Who

    if args.via == "flow":
        from flows.params import ActivateRequest, DowngradeRequest, RollbackRequest

        common = {"channel_id": args.channel, "operator": "worker", "reason": "reliability test"}
        if args.op == "activate":
            from flows.activate import activate

            return activate(ActivateRequest(release_id=int(args.rest[0]), force=args.force,
                                            **common))
        if args.op == "rollback":
            from flows.rollback import rollback

            return rollback(RollbackRequest(expected_activation_id=args.rest[0], **common))
        from flows.downgrade import downgrade

        return downgrade(DowngradeRequest(release_id=int(args.rest[0]),
                                          authorization_id=args.rest[1], **common))
    from kristal.operations.activate import activate as plain_activate
    from kristal.operations.downgrade import downgrade as plain_downgrade
    from kristal.operations.rollback import rollback as plain_rollback
    from kristal.operations.runner import PlainRunner

    ctx = Context.from_settings(Settings.from_env())
    who = Who(operator="worker", reason="reliability test",
              correlation_id=f"worker-{uuid.uuid4().hex[:8]}")
    run = PlainRunner()
    if args.op == "activate":
        return plain_activate(run, ctx, channel_id=args.channel, release_id=int(args.rest[0]),
                              force=args.force, who=who)
    if args.op == "rollback":
        return plain_rollback(run, ctx, channel_id=args.channel,
                              expected_activation_id=args.rest[0], who=who)
    return plain_downgrade(run, ctx, channel_id=args.channel, release_id=int(args.rest[0]),
                           authorization_id=args.rest[1], who=who)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=("activate", "rollback", "downgrade"))
    parser.add_argument("channel")
    parser.add_argument("rest", nargs="+")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--via", choices=("flow", "plain"), default="flow")
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--go", type=Path)
    args = parser.parse_args(argv)

    # Imports before the barrier, so that the processes start together.
    from kristal.errors import KristalError

    if args.via == "flow":
        import flows.activate
        import flows.downgrade
        import flows.rollback  # noqa: F401
        from flows.console import quiet_prefect

        quiet_prefect()
    else:
        import kristal.operations.activate  # noqa: F401
    if args.ready is not None:
        args.ready.write_text("ready")
    if args.go is not None:
        _wait_for(args.go)

    out: dict[str, Any] = {"op": args.op}
    started = time.monotonic()
    try:
        outcome = _run(args)
    except KristalError as exc:
        out.update(ok=False, code=exc.code, exit_status=exc.exit_status, message=exc.message)
    else:
        out.update(ok=True, outcome=outcome.outcome, activation_id=outcome.activation_id,
                   sequence=outcome.sequence, checks=outcome.check_result,
                   note=outcome.message)
    out["seconds"] = round(time.monotonic() - started, 3)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
