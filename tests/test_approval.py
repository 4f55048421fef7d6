"""A downgrade's human approval, through the downgrade flow and the CLI against the session's
Prefect server: an explicit decision and a name (a form without them does not resume the run),
four eyes and a required approval from the channel's policy, a timeout that rejects and is
recorded, no channel lock held while a human decides, and the pointer checked again after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from world import World

from kristal.errors import KristalError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _paused_run(timeout: float = 90) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
            if paused:
                return paused[0]
            time.sleep(0.3)
    raise AssertionError("no run paused for its approval")


def _approver(act: Callable[[Any], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Run `act(paused_run)` in a thread once the downgrade pauses; its failures are kept."""
    failures: list[BaseException] = []

    def main() -> None:
        try:
            act(_paused_run())
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, failures


def _answer(run: Any, **answer: object) -> None:
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(run.id, run_input=answer)


def _downgrade_request(world: World, *, approval: dict[str, Any] | None = None,
                       require_approval: bool = True) -> Any:
    from flows.params import DowngradeRequest
    from kristal.channel.governance import authorize

    if approval is not None:
        doc = world.trust_doc()
        doc["channels"]["*"]["approval"] = approval
        world.write_trust(doc)
    world.publish(1, generation=1)
    world.publish(2, generation=2)
    world.activate(1)
    world.activate(2)
    auth = authorize(world.ctx, world.keys.authority, world.channel, 1, "incident", "1h")
    return DowngradeRequest(
        channel_id=world.channel, release_id=1, authorization_id=auth["authorization_id"],
        require_approval=require_approval, operator="alice", reason="incident 42")


def _not_approved(world: World, request: Any) -> KristalError:
    from flows.downgrade import downgrade

    before = world.snapshot()
    with pytest.raises(KristalError) as info:
        downgrade(request)
    assert info.value.code == "activation_aborted", info.value
    assert world.snapshot() == before  # nothing live changed
    return info.value


def test_an_answer_without_a_decision_does_not_resume_and_a_rejection_changes_nothing(
        prefect_api: str, world: World) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    request = _downgrade_request(world)
    seen: list[str] = []

    def act(run: Any) -> None:
        # No decision (the form has no default), or no name: the server refuses the input
        # and the run stays paused.
        for incomplete in ({"approver": "bob"}, {"decision": "approve", "approver": ""}):
            try:
                _answer(run, **incomplete)
            except (PrefectHTTPStatusError, RuntimeError, ValueError) as exc:
                seen.append(type(exc).__name__)
            else:
                seen.append("taken")
        from prefect import get_client

        with get_client(sync_client=True) as client:
            assert client.read_flow_run(run.id).state.is_paused()
        _answer(run, decision="reject", approver="carol", comment="not tonight")

    thread, failures = _approver(act)
    error = _not_approved(world, request)
    thread.join(10)
    assert not failures, failures
    assert "rejected by carol (not tonight)" in error.message
    assert "taken" not in seen, seen


def test_four_eyes_from_the_channel_policy_refuses_the_operator_as_approver(
        prefect_api: str, world: World) -> None:
    """`approval.required` pauses a downgrade nobody asked to pause; `four_eyes` refuses the
    operator's own approval, and the refusal is recorded (event, report)."""
    from test_flows import _artifacts

    request = _downgrade_request(world, approval={"required": True, "four_eyes": True},
                                 require_approval=False)
    thread, failures = _approver(lambda run: _answer(run, decision="approve", approver="alice"))
    error = _not_approved(world, request)
    thread.join(10)
    assert not failures, failures
    assert "four eyes" in error.message and "alice" in error.message
    report = _artifacts(f"approval-{world.channel.replace('/', '-')}")
    assert report and "not approved" in report[0].data  # type: ignore[attr-defined]


def test_no_decision_within_the_policys_timeout_rejects(prefect_api: str, world: World) -> None:
    request = _downgrade_request(world, approval={"timeout": "3s"})
    began = time.monotonic()
    error = _not_approved(world, request)
    assert "no decision within 3s: rejected" in error.message
    assert time.monotonic() - began < 120


def test_the_lock_is_free_while_a_human_decides_and_the_pointer_is_checked_after(
        prefect_api: str, world: World) -> None:
    """While the downgrade waits, another activation of the channel takes the lock and goes
    live; the approval then finds the channel moved and switches nothing."""
    from flows.downgrade import downgrade

    request = _downgrade_request(world)
    world.publish(3, generation=2)

    def act(run: Any) -> None:
        began = time.monotonic()
        world.activate(3)  # through the flow: it takes the channel lock
        assert time.monotonic() - began < 60, "the paused downgrade held the channel lock"
        _answer(run, decision="approve", approver="bob")

    thread, failures = _approver(act)
    with pytest.raises(KristalError) as info:
        downgrade(request)
    thread.join(10)
    assert not failures, failures
    assert info.value.code == "pointer_conflict", info.value
    assert "changed while the downgrade waited for its approval" in info.value.message
    assert world.pointer().record.active.release_id == 3


def test_the_cli_says_where_to_approve_and_status_shows_the_approver(
        prefect_api: str, world: World) -> None:
    request = _downgrade_request(world)
    env = {**os.environ, **world.env, "PREFECT_API_URL": prefect_api}
    env.pop("KRISTAL_VERBOSE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "downgrade", world.channel, "--release", "1",
         "--authorization", request.authorization_id, "--require-approval",
         "--operator", "alice", "--reason", "incident 42"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"run: downgrade {world.channel} → 1  http"), first
        url = first.split()[-1]
        waiting = proc.stdout.readline()
        assert waiting.startswith("waiting for an approval") and waiting.strip().endswith(url)
        _answer(_paused_run(), decision="approve", approver="bob", comment="go")
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "release 1 is live" in out
    status = subprocess.run([sys.executable, "-m", "flows.cli", "status", world.channel],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "downgrade by alice (approved by bob)" in status.stdout, status.stdout
    history = subprocess.run(
        [sys.executable, "-m", "flows.cli", "history", world.channel, "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(history.stdout)[-1]["approver"] == "bob"
