"""Deployments and automations end to end on a real Prefect server: `kristalctl serve` runs in a
subprocess (registering the deployments and applying the automations), runs are triggered
through the API, and the automations create rollback runs that the same runner executes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from world import World

from kristal.channel import records

BROKEN = {"row_count": 60, "smoke_queries": [
    {"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}],
    "latency_p95_ms": 50, "max_rss_mb": 512}


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    _Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/tracker", _Receiver.received
    server.shutdown()


@pytest.fixture
def served(prefect_api: str, world: World, webhook: Any, tmp_path: Path) -> Iterator[World]:
    """`kristalctl serve` against the session Prefect server, with the world's configuration."""
    env = {**os.environ, **world.env, "PREFECT_API_URL": prefect_api,
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "KRISTAL_FOLLOWUP_WEBHOOK_URL": webhook[0],
           "KRISTAL_CRASH_AT": "after_history",
           "KRISTAL_CRASH_ARMED_FILE": str(tmp_path / "crash-armed")}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_deployments(("activate", "rollback", "downgrade"), proc, tmp_path)
        yield world
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_for_deployments(names: tuple[str, ...], proc: subprocess.Popen[bytes],
                          tmp_path: Path) -> None:
    from prefect import get_client

    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            found = {d.name for d in client.read_deployments()}
            automations = {a.name for a in client.read_automations()}
            if set(names) <= found and len(automations) >= 3:
                time.sleep(2)  # the runner starts polling right after registering
                return
            time.sleep(0.5)
    raise AssertionError("serve did not register its deployments: "
                         + (tmp_path / "serve.log").read_text()[-3000:])


def _run_deployment(name: str, parameters: dict[str, Any]) -> Any:
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, timeout=120)


def _rollback_runs() -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["rollback"])))


def _wait(predicate: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out")


def _request(world: World, release_id: int) -> dict[str, Any]:
    return {"request": {"channel_id": world.channel, "release_id": release_id,
                        "operator": "pytest", "reason": f"activate {release_id}"}}


def test_deployments_automations_and_follow_ups_end_to_end(
    served: World, webhook: Any, prefect_api: str
) -> None:
    world = served
    world.publish(1)
    world.publish(2, expect=BROKEN)
    world.publish(3)
    world.publish(4)
    assert _run_deployment("activate/activate", _request(world, 1)).state.is_completed()

    # 1. Activate 2, whose checks fail: the flow rolls back inside the run and fails; the
    #    automation's rollback run for that failed run finds nothing of that run live.
    seen = {r.id for r in _rollback_runs()}
    failed = _run_deployment("activate/activate", _request(world, 2))
    assert failed.state.is_failed()
    assert world.pointer().record.kind == "auto_rollback"
    late = _wait(lambda: [r for r in _rollback_runs()
                          if r.id not in seen and r.state and r.state.is_final()])
    assert late[0].state.is_completed()
    live = world.pointer().record
    assert live.active.release_id == 1 and live.sequence == 3, "no double rollback"

    # 2. A monitor reports a failed check on release 3 after the fact: kristal.check.failed ->
    #    rollback run -> release 1 live again and 3 quarantined.
    assert _run_deployment("activate/activate", _request(world, 3)).state.is_completed()
    seen = {r.id for r in _rollback_runs()}
    started = time.monotonic()
    cli = subprocess.run([sys.executable, "-m", "flows.cli", "report-failure", world.channel,
                          "--reason", "error rate 12%"], capture_output=True, text=True,
                         env={**os.environ, **world.env, "PREFECT_API_URL": prefect_api},
                         timeout=60)
    assert cli.returncode == 0, cli.stderr
    _wait(lambda: world.pointer().record.active.release_id == 1)
    elapsed = time.monotonic() - started
    live = world.pointer().record
    assert (live.kind, live.previous.release_id, live.sequence) == ("auto_rollback", 3, 5)
    assert records.read_quarantine(world.ctx, world.channel, 3) is not None
    assert [r for r in _rollback_runs() if r.id not in seen]
    print(f"report-failure -> previous release live: {elapsed:.1f} s")

    # 3. Activate 4 with one crash armed right after its switch: the run dies (Crashed) with 4
    #    live and its checks pending; the automation's rollback run puts 1 back. The dead run's
    #    channel lease outlives it (up to ~75 s on a real server; the test harness never
    #    reclaims it), so the guarded rollback proceeds on the conditional write alone.
    (world.home.parent / "crash-armed").touch()
    run = _run_deployment("activate/activate", _request(world, 4))
    assert run.state.name in {"Crashed", "Failed"}, run.state
    record = world.pointer().record
    assert record.active.release_id == 4 and record.flow_run_id == str(run.id)
    _wait(timeout=120, predicate=lambda: world.pointer().record.active.release_id == 1)
    live = world.pointer().record
    assert (live.kind, live.previous.release_id, live.sequence) == ("auto_rollback", 4, 7)

    # 4. Every effective rollback opened a follow-up that reached the tracker webhook.
    posts = _wait(lambda: {p["failed_release_id"] for p in webhook[1]
                           if p.get("channel_id") == world.channel} >= {"3", "4"})
    assert posts


def test_the_automations_definition_does_not_depend_on_the_order_deployments_registered_in(
) -> None:
    """`deploy` registers deployments in its own order, `automations apply` reads them in
    another: the definitions must compare equal, or a re-apply updates the zombie automation
    and resets its trigger (a host that died just before is then never marked; seen in CI)."""
    import uuid

    from deployments.automations import Registered, _definition, automations

    names = ["activate", "rollback", "downgrade", "bake", "reverify", "fleet-activate"]
    ids = {name: uuid.uuid4() for name in names}
    one = automations(Registered(ids), None)
    other = automations(Registered(dict(reversed(ids.items()))), None)
    assert [_definition(a) for a in one] == [_definition(a) for a in other]
