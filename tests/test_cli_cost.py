"""A command's fixed cost (issue 15 item 4), guarded where it can regress silently: commands that
need no run never import Prefect (its import alone is ~1 s), and a rollback through the CLI,
whose process ends without the interpreter's final collection, still lands its run's logs and
final state on the Prefect server before the process is gone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from world import World

REPO_ROOT = Path(__file__).resolve().parent.parent
# `-X importtime` writes one line per module: "import time: self | cumulative | name".
_PREFECT_LINE = re.compile(r"\|\s*(prefect(?:\.[\w.]+)?)\s*$", re.MULTILINE)


def _cli(world: World, *args: str, importtime: bool = False,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **world.env}
    env.pop("KRISTAL_VERBOSE", None)
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "flows.cli", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_commands_without_a_run_never_import_prefect(world: World, tmp_path: Path) -> None:
    world.publish(1)
    world.activate(1, via="plain")
    data = world.data(2)
    other = f"{world.channel}x"
    commands = [
        ("status", world.channel),
        ("history", world.channel),
        ("channels",),
        ("releases", world.channel),
        ("status", world.channel, "--json"),
        ("publish", "--data", str(data), "--channel", other, "--release-id", "1",
         "--generation", "1"),
        ("authorize", other, "--release", "1", "--reason", "r", "--expires-in", "1h"),
        ("floor", other, "--release", "1"),
        ("revoke", other, "--release", "1", "--reason", "r"),
        ("keys", "generate", "--role", "publisher", "--key-id", "k1",
         "--out", str(tmp_path / "keys")),
        ("canon", str(data.with_suffix(".json"))),
    ]
    (data.with_suffix(".json")).write_text('{"b": 1, "a": [1, 2]}', "utf-8")
    for args in commands:
        done = _cli(world, *args, importtime=True)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        loaded = _PREFECT_LINE.findall(done.stderr)
        assert not loaded, f"kristalctl {' '.join(args)} imported {loaded[:5]}"


def test_a_rollback_through_the_cli_lands_its_logs_and_completed_state(
        world: World, prefect_api: str) -> None:
    """The CLI process ends with its garbage frozen (no final collection); Prefect's log and
    event workers still flush at exit, so once the command has returned the server has the
    run's final state and every log line it wrote, with no waiting."""
    world.patch.setenv("PREFECT_API_URL", prefect_api)  # else each CLI run starts a server
    world.env["PREFECT_API_URL"] = prefect_api
    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")
    world.activate(2, via="plain")
    correlation = f"cost-{uuid.uuid4().hex[:8]}"
    done = _cli(world, "rollback", world.channel, "--operator", "alice", "--reason",
                "fixed cost", "--correlation-id", correlation, "--json", timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] == "rolled_back"
    live = world.pointer().record
    assert live is not None and live.kind == "rollback" and live.active.release_id == 1
    assert live.flow_run_id is not None  # a run of the rollback flow, as in production

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(live.flow_run_id))
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(live.flow_run_id)])))
    assert run.state is not None and run.state.type.value == "COMPLETED", run.state
    messages = [entry.message for entry in logs]
    assert any("switched" in m and "back to release 1" in m for m in messages), messages
    # The run's last line (its outcome, which `--via-deployment` reads back) arrived too.
    assert any(m.startswith("kristal-outcome ") and live.activation_id in m
               for m in messages), messages
