"""kill -9 of the activation process at every crash point (DESIGN §6 invariant 5).

Release 1 is live and checked, release 2 published; a worker process running the `activate` flow
for release 2 is SIGKILLed at a named point (`KRISTAL_CRASH_AT`); its channel lease outlives it,
so the test frees the slot as an operator would before the re-runs (through the flow). Before
the switch the channel must be exactly as it was; after it, release 2 is live without checks
and re-running the same activation (`force=True`) resumes at the checks, repairs the history and
ends checked-and-live; a crash between a failed check and the rollback must still converge to
release 1 live, release 2 quarantined, and a complete history.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import pytest
from activation_worker import (
    REPO_ROOT,
    assert_history_complete,
    parse_outcome,
    worker_command,
    worker_env,
)
from world import World

from kristal.channel import records
from kristal.crashpoints import POINTS
from kristal.errors import CheckFailed, KristalError

BEFORE_SWITCH = ("after_verify", "after_stage", "before_switch")
AFTER_SWITCH = ("after_switch", "after_history", "after_checks")
FAILED_CHECKS = ("before_rollback",)
WORKER_TIMEOUT_S = 120

# A release whose smoke query cannot pass: the checks fail after the switch.
FAILING_EXPECT: dict[str, Any] = {
    "row_count": 60,
    "smoke_queries": [{"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}],
    "latency_p95_ms": 50,
    "max_rss_mb": 512,
}


def test_every_crash_point_is_covered() -> None:
    """A new crash point must be given an expected outcome here."""
    assert sorted(POINTS) == sorted(BEFORE_SWITCH + AFTER_SWITCH + FAILED_CHECKS)


def _kill_worker_at(world: World, release_id: int, point: str) -> None:
    proc = subprocess.run(
        worker_command(world.channel, release_id),
        env=worker_env(world.env, KRISTAL_CRASH_AT=point),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False,
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"the worker was not killed at {point!r} (returncode {proc.returncode}, outcome "
        f"{parse_outcome(proc.stdout)}): is crash_point({point!r}) reached on the activate "
        f"path?\n{proc.stderr[-2000:]}"
    )
    assert parse_outcome(proc.stdout) is None, "a killed worker reported an outcome"
    world.free_channel_lock()


@pytest.fixture
def one_live(world: World) -> World:
    world.publish(1)
    first = world.activate(1, via="plain")  # set-up
    assert first.check_result == "passed"
    return world


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_crash_point_converges(one_live: World, point: str) -> None:
    world = one_live
    world.publish(2, expect=FAILING_EXPECT if point in FAILED_CHECKS else None)
    live_before = world.pointer().record
    before = world.snapshot()

    _kill_worker_at(world, 2, point)

    state = world.pointer()
    if point in BEFORE_SWITCH:
        # Nothing of the channel moved: release 1 live, same history, same checks.
        assert world.snapshot() == before
        assert state.record == live_before
        # Converges: a plain re-run activates release 2 as if nothing had happened.
        result = world.activate(2)
        assert result.sequence == 2 and result.check_result == "passed"

    elif point in AFTER_SWITCH:
        crashed = state.record
        assert (crashed.sequence, crashed.active.release_id, crashed.kind) == (2, 2, "activate")
        assert records.read_checks_at(world.ctx, world.channel, 2) is None
        history2 = records.read_history(world.ctx, world.channel, 2)
        if point == "after_switch":
            assert history2 is None, "the history object came before the pointer"
        else:
            assert history2 == crashed

        # Re-running with force resumes at the checks: same record, no new sequence, and the
        # missing history object (after_switch) repaired on the way (invariant 4).
        result = world.activate(2, force=True)
        assert result.activation_id == crashed.activation_id
        assert result.check_result == "passed"
        after = world.pointer()
        assert after.sequence == 2 and after.record == crashed
        assert records.read_history(world.ctx, world.channel, 2) == crashed
        checks = records.read_checks_at(world.ctx, world.channel, 2)
        assert checks.result == "passed" and checks.activation_id == crashed.activation_id

        # Converged: without force the live release is refused, with force it is a no-op.
        snapshot = world.snapshot()
        with pytest.raises(KristalError) as refused:
            world.activate(2)
        assert refused.value.code == "release_id_downgrade_blocked"
        again = world.activate(2, force=True)
        assert again.outcome == "already_live"
        assert world.snapshot() == snapshot

    else:  # before_rollback: release 2 failed its checks, the rollback never happened
        crashed = state.record
        assert (crashed.sequence, crashed.active.release_id) == (2, 2)
        failed = records.read_checks_at(world.ctx, world.channel, 2)
        assert failed is not None and failed.result == "failed"
        assert failed.activation_id == crashed.activation_id
        assert records.read_quarantine(world.ctx, world.channel, 2) is None

        # Re-running the same activation must finish what the killed run was doing:
        # quarantine release 2 and roll back automatically to release 1.
        with pytest.raises(CheckFailed) as info:
            world.activate(2, force=True)
        assert info.value.exit_status == 5
        _assert_rolled_back(world, crashed.activation_id)

    assert_history_complete(world.ctx, world.channel)


def _assert_rolled_back(world: World, failed_activation_id: str) -> None:
    live = world.pointer().record
    assert (live.sequence, live.kind, live.active.release_id) == (3, "auto_rollback", 1)
    assert live.previous_sequence == 2 and live.highest_activated_release_id == 2
    checks3 = records.read_checks_at(world.ctx, world.channel, 3)
    assert checks3 is not None and checks3.result == "passed"
    quarantined = records.read_quarantine(world.ctx, world.channel, 2)
    assert quarantined is not None
    assert (quarantined.sequence, quarantined.activation_id) == (2, failed_activation_id)


def test_kill_9_before_rollback_converges_by_guarded_auto_rollback(one_live: World) -> None:
    """The automatic rollback the killed run would have done, run again for the same failure,
    converges; run once more it does nothing (invariant 7: no double rollback)."""
    world = one_live
    world.publish(2, expect=FAILING_EXPECT)
    _kill_worker_at(world, 2, "before_rollback")
    failed = world.pointer().record
    assert records.read_checks_at(world.ctx, world.channel, 2).result == "failed"

    back = world.rollback(expected_activation_id=failed.activation_id, automatic=True)
    assert back.outcome == "rolled_back" and back.check_result == "passed"
    live = world.pointer().record
    assert (live.sequence, live.kind, live.active.release_id) == (3, "auto_rollback", 1)

    snapshot = world.snapshot()
    again = world.rollback(expected_activation_id=failed.activation_id, automatic=True)
    assert again.outcome == "nothing_to_do" and "nothing rolled back" in again.message
    assert world.snapshot() == snapshot
    assert_history_complete(world.ctx, world.channel)
