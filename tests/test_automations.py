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
from test_cli import REPO_ROOT, kristalctl
from world import World

from kristal.channel import records
from tasks.names import CRASH_ZOMBIE_RUNS

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

    # 5. `automations apply` against what serve applied changes nothing; a new zombie window
    #    updates that automation (only the fields that changed) and warns what that costs.
    def apply(**extra: str) -> tuple[dict[str, Any], str]:
        proc = kristalctl("automations", "apply", "--json", timeout=120, env={
            **world.env, "PREFECT_API_URL": prefect_api,
            "KRISTAL_FOLLOWUP_WEBHOOK_URL": webhook[0], **extra})
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout), proc.stderr

    again, err = apply()
    assert {a["outcome"] for a in again["applied"].values()} == {"unchanged"}, again
    assert again["warnings"] == [] and "warning" not in err
    wider, err = apply(KRISTAL_ZOMBIE_AFTER_S="120")
    outcomes = {name: a["outcome"] for name, a in wider["applied"].items()}
    assert outcomes.pop(CRASH_ZOMBIE_RUNS) == "updated", wider
    assert set(outcomes.values()) == {"unchanged"}, wider
    assert wider["applied"][CRASH_ZOMBIE_RUNS]["changed"] == ["actions", "trigger.within"]
    assert err.startswith(f"warning: {CRASH_ZOMBIE_RUNS!r} was updated: its trigger starts "
                          "afresh"), err
    assert wider["warnings"] == [err.strip()]
    restored, _ = apply()
    assert restored["applied"][CRASH_ZOMBIE_RUNS]["outcome"] == "updated"


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


_SET_ORDER_PROBE = """
import itertools, sys
items = sys.argv[1:]
print(len({tuple(set(p)) for p in itertools.permutations(items)}))
"""

_READ_BACK_COMPARE = """
import itertools, json, uuid
from prefect.automations import Automation
from deployments.automations import Registered, _changed_fields, _definition, automations
ids = {n: uuid.uuid4() for n in ["activate", "rollback", "downgrade", "bake", "reverify"]}
json_differs, changed = False, []
for ours in automations(Registered(ids), None):
    doc = json.loads(ours.model_dump_json())
    for order in itertools.permutations(doc["trigger"]["expect"]):
        doc["trigger"]["expect"] = list(order)  # as the server may list it
        theirs = Automation.model_validate(doc)
        json_differs |= ours.model_dump(mode="json") != theirs.model_dump(mode="json")
        changed += _changed_fields(_definition(theirs), _definition(ours))
print(json.dumps({"json_differs": json_differs, "changed": changed}))
"""


def test_an_automation_read_back_with_its_sets_in_another_order_is_unchanged() -> None:
    """The server lists a trigger's `expect` set in its own order; read back, that set can
    iterate (and dump to JSON) in another order than ours under some hash seeds (one in eight
    for the zombie trigger's five events). The comparison must not see a change there: an
    update resets the zombie trigger (a host that died just before is never marked; CI
    failed so). Run under a hash seed where the order does differ, found first."""
    import uuid

    from deployments.automations import Registered, automations

    registered = Registered({"rollback": uuid.uuid4(), "activate": uuid.uuid4()})
    zombie = next(a for a in automations(registered, None) if a.name == CRASH_ZOMBIE_RUNS)
    events = sorted(zombie.trigger.expect)  # type: ignore[union-attr]
    seed = next((s for s in range(200) if subprocess.run(
        [sys.executable, "-c", _SET_ORDER_PROBE, *events], capture_output=True, text=True,
        env={**os.environ, "PYTHONHASHSEED": str(s)}, check=True).stdout.strip() != "1"), None)
    assert seed is not None, "no hash seed under 200 reorders the set: the probe is broken"
    result = subprocess.run([sys.executable, "-c", _READ_BACK_COMPARE], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True, timeout=120,
                            env={**os.environ, "PYTHONHASHSEED": str(seed),
                                 "PYTHONPATH": str(REPO_ROOT)})
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["json_differs"], f"seed {seed}: the JSON dumps never differed (probe broken)"
    assert doc["changed"] == [], doc
