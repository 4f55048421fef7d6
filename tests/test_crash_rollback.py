"""kill -9 of rollback and downgrade at every crash point on their path (DESIGN §6 invariant 5),
mirroring tests/test_crash.py for activate.

A worker process (`tests/activation_worker.py`) runs the `rollback` or `downgrade` flow and
SIGKILLs itself at the point named by `KRISTAL_CRASH_AT`; its channel lease outlives it, so the
test frees the slot as an operator would. Then:

- before the switch (`before_switch`): the channel is exactly as it was, and re-running the same
  operation completes;
- after it (`after_switch`, `after_history`, `after_checks`): the new record is live with its
  checks pending. Re-running the rollback with the same `expected_activation_id` is a no-op
  (invariant 7: that activation is no longer live) that still repairs a missing history record
  (invariant 4); a downgrade re-run is refused (already live). `reverify` reports the checks
  pending within its timeout and failed past it (timeout 0). What converges is re-running the
  checks of the live record: the forced re-activation of the live release resumes at the
  checks, keeps the record (same activation, same sequence) and ends checked-and-live;
- between failed checks and the rollback (`before_rollback`, downgrade to a failing release):
  the forced re-run finishes the job: quarantine, automatic rollback to the record's previous
  release (across generations: it was live a moment ago).

Crash points that are not on an operation's path (`after_verify`, `after_stage`: activate only)
are checked to be unreached: the worker completes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest
from activation_worker import (
    REPO_ROOT,
    WORKER,
    assert_history_complete,
    parse_outcome,
    worker_env,
)
from invariants import check_channel
from world import World

from kristal.channel import records
from kristal.channel.governance import authorize
from kristal.crashpoints import POINTS
from kristal.errors import CheckFailed, KristalError
from kristal.operations.reverify_checks import CHECKS_RECORD

BEFORE_SWITCH = ("before_switch",)
AFTER_SWITCH = ("after_switch", "after_history", "after_checks")
FAILED_CHECKS = ("before_rollback",)  # downgrade only: its checks can fail
NOT_ON_PATH = ("after_verify", "after_stage")  # activate only
WORKER_TIMEOUT_S = 120

FAILING_EXPECT: dict[str, Any] = {
    "row_count": 60,
    "smoke_queries": [{"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}],
    "latency_p95_ms": 50,
    "max_rss_mb": 512,
}


def test_every_crash_point_has_an_expected_outcome() -> None:
    assert sorted(POINTS) == sorted(BEFORE_SWITCH + AFTER_SWITCH + FAILED_CHECKS + NOT_ON_PATH)


def _run_worker(world: World, args: list[str], point: str | None) -> subprocess.CompletedProcess:
    extra = {"KRISTAL_CRASH_AT": point} if point else {}
    return subprocess.run(
        [sys.executable, str(WORKER), *args, "--via", "flow"], env=worker_env(world.env, **extra),
        cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False,
    )


def _kill_at(world: World, args: list[str], point: str) -> None:
    proc = _run_worker(world, args, point)
    assert proc.returncode == -signal.SIGKILL, (
        f"the worker was not killed at {point!r} (returncode {proc.returncode}, outcome "
        f"{parse_outcome(proc.stdout)}): is crash_point({point!r}) on the {args[0]} path?\n"
        f"{proc.stderr[-2000:]}")
    assert parse_outcome(proc.stdout) is None
    world.free_channel_lock()


def _reverify_checks_row(world: World, timeout_s: float) -> Any:
    report = world.channel_report(checks_timeout_s=timeout_s)
    return next(r for r in report.rows if r.name == CHECKS_RECORD)


def _resume_checks(world: World, crashed: Any) -> None:
    """What converges after a crash past the switch: the live record's checks, resumed by the
    forced re-activation of the live release (same record, no new sequence)."""
    # Within the timeout the missing checks are pending; past it they count as failed.
    assert _reverify_checks_row(world, 3600).ok
    overdue = _reverify_checks_row(world, 0)
    assert not overdue.ok and overdue.code == "check_failed"

    result = world.activate(crashed.active.release_id, force=True)
    assert result.activation_id == crashed.activation_id
    assert result.check_result == "passed"
    assert world.pointer().record == crashed
    checks = records.read_checks_at(world.ctx, world.channel, crashed.sequence)
    assert checks.result == "passed" and checks.activation_id == crashed.activation_id
    assert world.reverify(checks_timeout_s=0).ok

    # Converged: once more is a no-op.
    snapshot = world.snapshot()
    again = world.activate(crashed.active.release_id, force=True)
    assert again.outcome == "already_live"
    assert world.snapshot() == snapshot


def _assert_crashed_after_switch(world: World, point: str, sequence: int, release_id: int,
                                 kind: str) -> Any:
    crashed = world.pointer().record
    assert (crashed.sequence, crashed.active.release_id, crashed.kind) == (
        sequence, release_id, kind)
    assert records.read_checks_at(world.ctx, world.channel, sequence) is None
    history = records.read_history(world.ctx, world.channel, sequence)
    if point == "after_switch":
        assert history is None, "the history object came before the pointer"
    else:
        assert history == crashed
    return crashed


def _assert_converged(world: World, release_id: int) -> None:
    facts = check_channel(world.ctx, world.channel, allow_pending_history=False,
                          require_checked=True)
    assert facts.live.active.release_id == release_id
    assert_history_complete(world.ctx, world.channel)


# --- rollback ------------------------------------------------------------------------------------
@pytest.fixture
def two_live(world: World) -> World:
    """Releases 1 and 2 (generation 1) both activated and checked: 2 is live."""
    world.publish(1)
    world.publish(2)
    for rid in (1, 2):
        assert world.activate(rid, via="plain").check_result == "passed"  # set-up
    return world


@pytest.mark.parametrize("point", BEFORE_SWITCH + AFTER_SWITCH)
def test_kill_9_during_rollback_converges(two_live: World, point: str) -> None:
    world = two_live
    live_before = world.pointer().record
    before = world.snapshot()
    args = ["rollback", world.channel, live_before.activation_id]

    _kill_at(world, args, point)

    if point in BEFORE_SWITCH:
        assert world.snapshot() == before
        assert world.pointer().record == live_before
        result = world.rollback(expected_activation_id=live_before.activation_id)
        assert (result.sequence, result.release_id) == (3, 1)
        assert result.check_result == "passed"
    else:
        crashed = _assert_crashed_after_switch(world, point, 3, 1, "rollback")
        # The same rollback again (same expected activation): nothing rolled back twice, but
        # the missing history record is repaired on the way (invariant 4).
        again = world.rollback(expected_activation_id=live_before.activation_id)
        assert again.outcome == "nothing_to_do" and "nothing rolled back" in again.message
        assert records.read_history(world.ctx, world.channel, 3) == crashed
        assert world.pointer().record == crashed
        _resume_checks(world, crashed)
    _assert_converged(world, 1)


@pytest.mark.parametrize("point", NOT_ON_PATH + FAILED_CHECKS)
def test_crash_points_off_the_rollback_path_are_not_reached(two_live: World, point: str) -> None:
    world = two_live
    live_before = world.pointer().record
    proc = _run_worker(world, ["rollback", world.channel, live_before.activation_id], point)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = parse_outcome(proc.stdout)
    assert outcome == {**outcome, "ok": True, "sequence": 3, "checks": "passed"}
    _assert_converged(world, 1)


# --- downgrade -----------------------------------------------------------------------------------
def _downgrade_world(world: World, *, failing: bool) -> str:
    """Release 1 (generation 1) published, release 2 (generation 2) live and checked, and an
    authorization for release 1. Returns the authorization id."""
    world.publish(1, generation=1, expect=FAILING_EXPECT if failing else None)
    world.publish(2, generation=2)
    assert world.activate(2, via="plain").check_result == "passed"  # set-up
    auth = authorize(world.ctx, world.keys.authority, world.channel, 1, "crash test", "1h")
    return auth["authorization_id"]


@pytest.mark.parametrize("point", BEFORE_SWITCH + AFTER_SWITCH)
def test_kill_9_during_downgrade_converges(world: World, point: str) -> None:
    auth_id = _downgrade_world(world, failing=False)
    live_before = world.pointer().record
    before = world.snapshot()
    args = ["downgrade", world.channel, "1", auth_id]

    _kill_at(world, args, point)

    if point in BEFORE_SWITCH:
        assert world.snapshot() == before
        assert world.pointer().record == live_before
        result = world.downgrade(1, auth_id)
        assert (result.sequence, result.outcome) == (2, "downgraded")
        assert result.check_result == "passed"
    else:
        crashed = _assert_crashed_after_switch(world, point, 2, 1, "downgrade")
        # Re-running the downgrade is refused (release 1 is already live) and changes nothing
        # but the repair of a missing history record.
        with pytest.raises(KristalError) as refused:
            world.downgrade(1, auth_id)
        assert refused.value.code == "rollback_target_missing"
        assert records.read_history(world.ctx, world.channel, 2) == crashed
        _resume_checks(world, crashed)
    _assert_converged(world, 1)


def test_kill_9_between_failed_downgrade_checks_and_rollback_converges(world: World) -> None:
    auth_id = _downgrade_world(world, failing=True)
    _kill_at(world, ["downgrade", world.channel, "1", auth_id], "before_rollback")

    crashed = world.pointer().record
    assert (crashed.sequence, crashed.active.release_id, crashed.kind) == (2, 1, "downgrade")
    failed = records.read_checks_at(world.ctx, world.channel, 2)
    assert failed is not None and failed.result == "failed"
    assert records.read_quarantine(world.ctx, world.channel, 1) is None
    overdue = _reverify_checks_row(world, 3600)
    assert not overdue.ok and overdue.code == "check_failed"

    # The forced re-run finishes what the killed downgrade was doing: quarantine release 1 and
    # roll back automatically to release 2 (generation 2: it was live a moment ago).
    with pytest.raises(CheckFailed) as info:
        world.activate(1, force=True)
    assert info.value.exit_status == 5
    live = world.pointer().record
    assert (live.sequence, live.kind, live.active.release_id) == (3, "auto_rollback", 2)
    quarantined = records.read_quarantine(world.ctx, world.channel, 1)
    assert (quarantined.sequence, quarantined.activation_id) == (2, crashed.activation_id)
    _assert_converged(world, 2)

    # A late guarded rollback for the same failure does nothing (invariant 7).
    snapshot = world.snapshot()
    late = world.rollback(expected_activation_id=crashed.activation_id, automatic=True)
    assert late.outcome == "nothing_to_do" and "nothing rolled back" in late.message
    assert world.snapshot() == snapshot


@pytest.mark.parametrize("point", NOT_ON_PATH)
def test_crash_points_off_the_downgrade_path_are_not_reached(world: World, point: str) -> None:
    auth_id = _downgrade_world(world, failing=False)
    proc = _run_worker(world, ["downgrade", world.channel, "1", auth_id], point)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = parse_outcome(proc.stdout)
    assert outcome == {**outcome, "ok": True, "sequence": 2, "checks": "passed"}
    _assert_converged(world, 1)
