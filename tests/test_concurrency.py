"""Concurrent writers of one channel's pointer (DESIGN §6 invariants 1, 2 and 4).

The race of eight processes runs the activate operation with the plain runner: the per-channel
concurrency limit is bypassed by construction, so the conditional write of `active.json` is the
only lock. The same race through the `activate` flow (three processes) shows the channel lock
serializing them: one history, no lost record, no conflict left to the conditional write.
SeaweedFS queues simultaneous conditional writers of one key in 1 s steps, hence the generous
timeouts.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from activation_worker import (
    REPO_ROOT,
    assert_history_complete,
    parse_outcome,
    worker_command,
    worker_env,
)
from world import World

from kristal.channel import pointer as ptr
from kristal.channel import records
from kristal.channel.pointer import new_record
from kristal.errors import KristalError, PointerConflict
from kristal.formats import layout
from kristal.formats.channel_docs import ReleaseRef

WRITERS = 8
PROCESS_TIMEOUT_S = 150
LOSER_CODES = {"pointer_conflict", "release_id_downgrade_blocked"}


def _race(world: World, tmp_path: Path, writers: int, via: str) -> dict[int, dict[str, Any]]:
    """`writers` worker processes activating releases 1..writers at once (a barrier file)."""
    for release_id in range(1, writers + 1):
        world.publish(release_id)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    go = barrier / "go"
    env = worker_env(world.env)
    procs = {
        release_id: subprocess.Popen(
            worker_command(world.channel, release_id, via=via,
                           ready=barrier / f"ready-{release_id}", go=go),
            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for release_id in range(1, writers + 1)
    }
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while len(list(barrier.glob("ready-*"))) < writers:
            dead = {r: p.returncode for r, p in procs.items() if p.poll() is not None}
            assert not dead, f"workers exited before the barrier: {dead}"
            assert time.monotonic() < deadline, "workers never reached the barrier"
            time.sleep(0.02)
        go.write_text("go")  # every process is past its imports: release them together
        outcomes: dict[int, dict[str, Any]] = {}
        for release_id, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, f"worker {release_id} crashed:\n{stderr[-2000:]}"
            outcome = parse_outcome(stdout)
            assert outcome is not None, f"worker {release_id} printed nothing:\n{stderr[-2000:]}"
            outcomes[release_id] = outcome
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outcomes


def test_eight_processes_activating_different_releases_leave_one_consistent_chain(
    world: World, tmp_path: Path
) -> None:
    _assert_one_consistent_chain(world, _race(world, tmp_path, WRITERS, "plain"))


def test_three_activate_flows_on_one_channel_are_serialized_by_its_lock(
    world: World, tmp_path: Path
) -> None:
    outcomes = _race(world, tmp_path, 3, "flow")
    _assert_one_consistent_chain(world, outcomes)
    # Under the lock nobody lost a race on the pointer: each one decided on what was live.
    assert all(o["ok"] or o["code"] == "release_id_downgrade_blocked"
               for o in outcomes.values()), outcomes


def _assert_one_consistent_chain(world: World, outcomes: dict[int, dict[str, Any]]) -> None:
    winners = {r: o for r, o in outcomes.items() if o["ok"]}
    losers = {r: o for r, o in outcomes.items() if not o["ok"]}
    assert winners, f"nobody won: {outcomes}"
    # Losers lost the race (pointer_conflict) or found a higher release already live.
    assert {o["code"] for o in losers.values()} <= LOSER_CODES, losers

    # One history object per sequence 1..N, N the pointer's, the hash chain intact.
    walked = assert_history_complete(world.ctx, world.channel)
    state = world.pointer()
    n = state.sequence
    assert n == len(walked) >= 1
    by_activation = {r.activation_id: r for r in walked}

    # No record lost: every reported success is in history with its sequence and release.
    for release_id, outcome in winners.items():
        record = by_activation.get(outcome["activation_id"])
        assert record is not None, f"release {release_id} reported success but left no record"
        assert (record.sequence, record.active.release_id) == (outcome["sequence"], release_id)
        assert outcome["checks"] == "passed"
    # Each record is a distinct release, and the chain only ever moved upwards.
    releases = [r.active.release_id for r in walked]
    assert releases == sorted(set(releases)), f"release order along the chain: {releases}"
    assert [r.highest_activated_release_id for r in walked] == releases
    assert all(r.kind == "activate" for r in walked)
    # A record a loser committed and whose checks it then refused to run (superseded) may exist
    # only as a pointer_conflict outcome: every record belongs to one worker's release.
    committed_by_losers = {r.active.release_id for r in walked} - set(winners)
    assert all(losers[rid]["code"] == "pointer_conflict" for rid in committed_by_losers)

    # The pointer names a published release whose checks passed.
    live = state.record
    assert live.active.release_id in world.published
    assert live.active == ReleaseRef.of(_entry(world, live.active.release_id))
    checks = records.read_checks_at(world.ctx, world.channel, n)
    assert checks is not None and checks.result == "passed"
    assert checks.activation_id == live.activation_id
    assert live.active.release_id in winners


def _entry(world: World, release_id: int) -> Any:
    from kristal.verify.fetch import verify_release

    return verify_release(world.ctx, world.channel, release_id=release_id).entry


def test_commit_from_one_read_state_has_exactly_one_winner(world: World) -> None:
    """8 threads commit built built from the same PointerState: one wins, seven conflict,
    the pointer holds the winner's record and nothing else was written."""
    world.publish(1)
    world.activate(1)
    world.publish(2)
    state = world.pointer()
    assert state.sequence == 1
    target = ReleaseRef.of(_entry(world, 2))
    built = [
        new_record(world.ctx.keys, state, channel_id=world.channel, kind="activate",
                   active=target,
                   last_known_good=None, index_version=state.record.index_version, forced=False,
                   operator=f"thread-{i}", reason="race", correlation_id=uuid.uuid4().hex,
                   flow_run_id=None, now=world.ctx.now(), evidence={})
        for i in range(WRITERS)
    ]
    before = world.snapshot()
    barrier = threading.Barrier(WRITERS)
    results: list[Any] = [None] * WRITERS

    def writer(i: int) -> None:
        barrier.wait()
        try:
            results[i] = ptr.commit(world.ctx, built[i], state)
        except KristalError as exc:
            results[i] = exc

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=PROCESS_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a commit hung"

    won = [i for i, r in enumerate(results) if isinstance(r, records.PointerState)]
    kinds = Counter(type(r).__name__ for r in results)
    assert len(won) == 1, f"expected exactly one winner, got {kinds}"
    assert all(isinstance(r, PointerConflict) for i, r in enumerate(results) if i != won[0]), kinds
    winner = built[won[0]]
    live = world.pointer()
    assert live.record == winner and live.sequence == 2
    assert live.etag == results[won[0]].etag
    # Only the pointer changed (commit writes no history: that is the caller's next step).
    after = world.snapshot()
    assert {k for k in after if after[k] != before.get(k)} == {layout.pointer(world.channel)}
    records.write_history(world.ctx, winner)
    assert_history_complete(world.ctx, world.channel)
