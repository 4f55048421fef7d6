"""The failure responder end to end: `kristalctl respond` in a subprocess against the session's
Prefect server and SeaweedFS, reports sent by `kristalctl report-failure` (and, for the late and
the malformed one, straight to Prefect's events API, as a monitor would), then `kristalctl
serve` beside it, so the automation's rollback run and the responder answer the same report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from world import World

from kristal.channel import records

TIMEOUT_S = 120.0


class Process:
    """A `kristalctl` subprocess whose stdout and stderr go to files read while it runs."""

    def __init__(self, args: list[str], env: dict[str, str], base: Path) -> None:
        self.out, self.err = base.with_suffix(".out"), base.with_suffix(".err")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args], env=env, stdout=self.out.open("wb"),
            stderr=self.err.open("wb"), start_new_session=True)

    def text(self) -> str:
        return self.out.read_text() + "\n--- stderr ---\n" + self.err.read_text()[-4000:]

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@contextmanager
def kristalctl(args: list[str], env: dict[str, str], base: Path) -> Iterator[Process]:
    process = Process(args, env, base)
    try:
        yield process
    finally:
        if process.proc.poll() is None:
            process.stop()


def _until(what: str, probe: Callable[[], Any], process: Process | None = None) -> Any:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        assert process is None or process.proc.poll() is None, process.text()
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}"
                         + (f":\n{process.text()}" if process else ""))


def _handled(responder: Process, event_id: str) -> dict[str, Any] | None:
    for line in responder.out.read_text().splitlines():
        doc = json.loads(line)
        if doc["event_id"] == event_id:
            return dict(doc)
    return None


def _report_failure(world: World, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "flows.cli", "report-failure", world.channel,
                           "--reason", "error rate 12%", "--json"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["event_id"])


def _emit(world: World, payload: dict[str, Any]) -> str:
    """A monitor's report straight to Prefect's events API."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    from tasks.names import channel_resource_id

    event = emit_event(event="kristal.check.failed", payload=payload,
                       resource={"prefect.resource.id": channel_resource_id(world.channel)})
    EventsWorker.drain_all()
    assert event is not None
    return str(event.id)


def _automation_run(event_id: str) -> Any:
    """The automation's rollback run for that report, once it has finished."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["rollback"])))
    for run in runs:
        request = (run.parameters or {}).get("request", {})
        if request.get("correlation_id") == event_id and request.get("operator") == "automation":
            return run if run.state is not None and run.state.is_final() else None
    return None


def _served_since(started: float) -> bool:
    """`kristalctl serve` has registered the rollback deployment and applied the automations."""
    from prefect import get_client

    from tasks.names import AUTO_ROLLBACK_ON_CHECK_FAILED

    with get_client(sync_client=True) as client:
        names = {a.name for a in client.read_automations()}
        try:
            deployment = client.read_deployment_by_name("rollback/rollback")
        except Exception:
            return False
    updated = deployment.updated.timestamp() if deployment.updated else 0.0
    return AUTO_ROLLBACK_ON_CHECK_FAILED in names and updated >= started


def test_responder_rolls_back_once_ignores_late_reports_and_never_doubles_the_automation(
    world: World, prefect_api: str, tmp_path: Path
) -> None:
    for release_id in (1, 2, 3, 4):
        world.publish(release_id)
    world.activate(1, via="plain")
    world.activate(2, via="plain")
    reported = world.pointer().record
    env = {**os.environ, **world.env, "PREFECT_API_URL": prefect_api,
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    with kristalctl(["respond", "--channel", world.channel, "--json"], env,
                    tmp_path / "respond") as responder:
        _until("the responder to listen", lambda: "listening" in responder.err.read_text(),
               responder)

        # 1. A report rolls back once: release 1 live again, 2 quarantined, by the responder.
        event_id = _report_failure(world, env)
        handled = _until("the report handled", lambda: _handled(responder, event_id), responder)
        assert handled["result"] == "rolled_back", handled
        live = world.pointer().record
        assert (live.kind, live.active.release_id, live.previous.release_id, live.sequence,
                live.operator) == ("auto_rollback", 1, 2, 3, "responder")
        assert handled["sequence"] == 3 and handled["flow_run_id"]
        assert records.read_quarantine(world.ctx, world.channel, 2) is not None

        # 2. `kristalctl serve` starts (it applies the automation and runs its rollback runs)
        #    while a late report for the superseded activation, and one that names no
        #    activation, change nothing.
        started = time.time()
        with kristalctl(["serve"], env, tmp_path / "serve") as serve:
            world.activate(3, via="plain")
            before = world.snapshot()
            late = _emit(world, {"activation_id": reported.activation_id, "reason": "late"})
            malformed = _emit(world, {"reason": "which one?"})
            late_handled = _until("the late report", lambda: _handled(responder, late),
                                  responder)
            ignored = _until("the bad report", lambda: _handled(responder, malformed),
                             responder)
            assert late_handled["result"] == "nothing_to_do", late_handled
            assert ignored["result"] == "ignored" and "activation_id" in ignored["message"]
            assert world.snapshot() == before, "a late report changed the channel"

            # 3. One report, two guarded rollbacks (the responder's and the automation's):
            #    exactly one new record, whoever came first.
            world.activate(4, via="plain")
            live = world.pointer().record
            _until("serve to apply the automations", lambda: _served_since(started - 1), serve)
            event_id = _emit(world, {"activation_id": live.activation_id, "reason": "both"})
            answered = _until("the responder", lambda: _handled(responder, event_id), responder)
            fallback = _until("the automation's run", lambda: _automation_run(event_id), serve)
        sequence = live.sequence
        live = world.pointer().record
        assert (live.kind, live.active.release_id, live.sequence) == ("auto_rollback", 3,
                                                                       sequence + 1)
        assert records.read_history(world.ctx, world.channel, sequence + 2) is None
        assert fallback.state.is_completed(), fallback.state
        assert answered["result"] in ("rolled_back", "nothing_to_do"), answered
        assert (answered["result"] == "rolled_back") == (live.operator == "responder"), (
            answered, live.operator)
        assert responder.stop() == 0, responder.text()
    assert "stopped" in responder.err.read_text()
