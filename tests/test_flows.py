"""The Prefect surface against a real Prefect server (the test harness): the activate flow end to
end with its artifacts and concurrency limit, the in-flow automatic rollback, dry runs, and the
rollback flow's `expected_activation_id` guard.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from world import World

from kristal.channel import records
from kristal.errors import CheckFailed, KristalError

BROKEN = {
    "row_count": 60,
    "smoke_queries": [{"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}],
    "latency_p95_ms": 50,
    "max_rss_mb": 512,
}


def _request(world: World, release_id: int, **kw: object) -> object:
    from flows.params import ActivateRequest

    return ActivateRequest(
        channel_id=world.channel,
        release_id=release_id,
        operator="pytest",
        reason=f"activate {release_id}",
        **kw,
    )


def _artifacts(key: str) -> list[object]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


def _flow_run(flow_run_id: object) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)  # type: ignore[arg-type]


def _task_states(flow_run_id: object) -> dict[str, str]:
    """Each task's name (the domain step) and the type of its final state."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run_id])))  # type: ignore[list-item]
    # A task run is named after its step and a suffix Prefect adds (`switch-pointer-9dc`).
    return {r.name.rsplit("-", 1)[0]: r.state.type.value for r in runs if r.state is not None}


def test_activate_flow_switches_checks_and_leaves_artifacts(prefect_api: str, world: World) -> None:
    from flows.activate import activate
    from tasks.names import lock_name

    world.publish(1)
    outcome = activate(_request(world, 1, correlation_id="CHG-1"))
    assert outcome.outcome == "activated" and outcome.check_result == "passed"
    live = world.pointer().record
    assert live.active.release_id == 1 and live.correlation_id == "CHG-1"
    assert live.flow_run_id is not None
    # The run says what it did: its name, tags to filter by, and how it ended.
    run = _flow_run(live.flow_run_id)
    assert run.name == f"activate {world.channel} → 1"
    tenant, environment, region = world.channel.split("/")
    assert {f"channel:{world.channel}", f"tenant:{tenant}", f"environment:{environment}",
            f"region:{region}", "release:1"} <= set(run.tags)
    assert run.state.is_completed() and "release 1 is live" in (run.state.message or "")
    key_suffix = world.channel.replace("/", "-")
    markdown = _artifacts(f"verification-{key_suffix}")
    assert markdown and "activated and checked" in markdown[0].data
    table = _artifacts(f"changes-{key_suffix}")
    rows = json.loads(table[0].data) if isinstance(table[0].data, str) else table[0].data
    assert {"field": "release_id", "before": "None", "after": "1", "changed": "✓"} in rows

    from prefect import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(lock_name(world.channel))
    assert limit.limit == 1


def test_failed_check_in_flow_rolls_back_and_fails_the_run(prefect_api: str, world: World) -> None:
    from flows.activate import activate

    world.publish(1)
    world.publish(2, expect=BROKEN)
    activate(_request(world, 1))
    with pytest.raises(CheckFailed, match="release 1 is live again"):
        activate(_request(world, 2))
    live = world.pointer().record
    assert (live.kind, live.active.release_id, live.sequence) == ("auto_rollback", 1, 3)
    assert records.read_checks_at(world.ctx, world.channel, 2).result == "failed"
    assert records.read_checks_at(world.ctx, world.channel, 3).result == "passed"
    # The failed check is a failed task of a failed run; the steps before it are green.
    run = _flow_run(live.flow_run_id)
    assert run.name == f"activate {world.channel} → 2" and run.state.is_failed()
    tasks = _task_states(live.flow_run_id)
    assert tasks["post-activation-checks"] == "FAILED", tasks
    assert tasks["switch-pointer"] == "COMPLETED", tasks
    assert [n for n, s in tasks.items() if s == "FAILED"] == ["post-activation-checks"], tasks
    # The channel's history page: its timeline picture and the rollback's cause.
    page = _artifacts(f"history-{world.channel.replace('/', '-')}")
    latest = max(page, key=lambda a: a.created).data  # type: ignore[attr-defined]
    assert f"# History of `{world.channel}`" in latest
    assert f"![timeline of {world.channel}](data:image/svg+xml;base64," in latest
    assert "| auto_rollback | 1 | ✓ |" in latest and "cause: failed checks: smoke_query" in latest
    assert "| **live** |" in latest


def test_dry_run_verifies_and_stages_without_switching(prefect_api: str, world: World) -> None:
    from flows.activate import activate

    world.publish(1)
    outcome = activate(_request(world, 1, dry_run=True))
    assert outcome.outcome == "planned" and outcome.plan["target"]["release_id"] == 1
    assert world.snapshot() == {}


def test_refused_activation_fails_the_run_with_its_code(prefect_api: str, world: World) -> None:
    from flows.activate import activate

    world.publish(1)
    world.publish(2)
    activate(_request(world, 2))
    before = world.snapshot()
    with pytest.raises(KristalError) as info:
        activate(_request(world, 1))
    assert info.value.code == "release_id_downgrade_blocked"
    assert world.snapshot() == before


def test_rollback_flow_guarded_by_expected_activation_id(prefect_api: str, world: World) -> None:
    from flows.activate import activate
    from flows.params import RollbackRequest
    from flows.rollback import rollback

    world.publish(1)
    world.publish(2)
    activate(_request(world, 1))
    activate(_request(world, 2))
    stale = RollbackRequest(
        channel_id=world.channel,
        operator="pytest",
        reason="late report",
        expected_activation_id="00000000-0000-0000-0000-000000000000",
    )
    state = rollback(stale, return_state=True)
    assert state.result().outcome == "nothing_to_do"
    needless = _flow_run(state.state_details.flow_run_id)
    assert needless.name == f"rollback {world.channel} → last-known-good: nothing to do"
    assert state.is_completed() and "nothing" in (state.message or "")
    assert world.pointer().record.sequence == 2
    live_id = world.pointer().record.activation_id
    done = rollback(
        RollbackRequest(
            channel_id=world.channel,
            operator="pytest",
            reason="bad data",
            expected_activation_id=live_id,
        )
    )
    assert done.outcome == "rolled_back" and done.release_id == 1
    record = world.pointer().record
    assert _flow_run(record.flow_run_id).name == f"rollback {world.channel} → 1"
    assert record.kind == "rollback" and record.rollback_mode
    assert record.highest_activated_release_id == 2
    # The same request again is a no-op: that activation is no longer live.
    again = rollback(
        RollbackRequest(
            channel_id=world.channel,
            operator="pytest",
            reason="bad data",
            expected_activation_id=live_id,
        )
    )
    assert again.outcome == "nothing_to_do" and world.pointer().record.sequence == 3


def _resume_when_paused(answer: dict[str, object]) -> threading.Thread:
    """Act as the approver: wait for a paused downgrade run, then answer its form."""

    def approver() -> None:
        from prefect import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.flow_runs import resume_flow_run

        deadline = time.monotonic() + 60
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                paused = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
                if paused:
                    resume_flow_run(paused[0].id, run_input=answer)
                    return
                time.sleep(0.5)

    thread = threading.Thread(target=approver, daemon=True)
    thread.start()
    return thread


def _downgrade_with_approval(world: World) -> Any:
    """Generation 2 live over generation 1, release 1 authorized: the downgrade request with an
    approval pause."""
    from flows.activate import activate
    from flows.params import DowngradeRequest
    from kristal.channel.governance import authorize

    world.publish(1, generation=1)
    world.publish(2, generation=2)
    activate(_request(world, 1))
    activate(_request(world, 2))
    auth = authorize(world.ctx, world.keys.authority, world.channel, 1, "incident", "1h")
    return DowngradeRequest(
        channel_id=world.channel, release_id=1, authorization_id=auth["authorization_id"],
        require_approval=True, operator="alice", reason="incident 42")


def test_downgrade_flow_pauses_for_approval_and_records_the_approver(
    prefect_api: str, world: World
) -> None:
    from flows.downgrade import downgrade

    request = _downgrade_with_approval(world)
    thread = _resume_when_paused({"approver": "bob", "decision": "approve", "comment": "ok"})
    outcome = downgrade(request)
    thread.join(5)
    assert outcome.outcome == "downgraded" and outcome.release_id == 1
    record = world.pointer().record
    assert record.kind == "downgrade" and record.evidence["approved_by"] == "bob"


def test_downgrade_flow_rejected_by_approver_changes_nothing(
    prefect_api: str, world: World
) -> None:
    from flows.downgrade import downgrade

    request = _downgrade_with_approval(world)
    before = world.snapshot()
    thread = _resume_when_paused({"approver": "carol", "decision": "reject"})
    with pytest.raises(KristalError) as info:
        downgrade(request)
    thread.join(5)
    assert info.value.code == "activation_aborted" and "carol" in info.value.message
    assert world.snapshot() == before
