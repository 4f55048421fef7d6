"""What this machine keeps and how long it waits (issue 12 items 7 and 10): the query-index
cache counts only a regular file built from the pack's own triples and follows no link, and
every download has an overall deadline. Attacks are made in the cache (or by a trickling
server); the activation runs through the flow.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from faultproxy import Action, FaultProxy
from world import World

from kristal.errors import KristalError
from kristal.formats import layout
from kristal.runtime.sqlite_index import PinnedReader


def _index_of(world: World, release_id: int) -> Path:
    from kristal.runtime.staging import index_path
    from kristal.verify.fetch import verify_release

    release = verify_release(world.ctx, world.channel, release_id=release_id)
    return index_path(world.ctx, release.packs[0].pack_id)


@pytest.fixture
def staged_decoy(world: World) -> tuple[World, Path]:
    """Release 1 (60 rows) live, so its index is in the cache; release 2 (80 rows) published."""
    world.publish(1)
    world.publish(2, rows=80)
    world.activate(1, via="plain")
    decoy = world.home / "decoy.sqlite"
    shutil.copyfile(_index_of(world, 1), decoy)
    return world, decoy


@pytest.mark.parametrize("plant", ["symlink", "copy"])
def test_a_planted_query_index_is_rebuilt_not_trusted(
        staged_decoy: tuple[World, Path], plant: str) -> None:
    """Release 1's index planted at release 2's path (as a link, or as a regular copy whose
    recorded source is another pack's): the activation rebuilds it and checks 80 rows."""
    world, decoy = staged_decoy
    target = _index_of(world, 2)
    if plant == "symlink":
        target.symlink_to(decoy)
    else:
        shutil.copyfile(decoy, target)
    outcome = world.activate(2)
    assert outcome.check_result == "passed"
    assert not target.is_symlink() and target.is_file()
    with PinnedReader(target) as reader:
        assert reader.count() == 80
    with PinnedReader(decoy) as reader:
        assert reader.count() == 60  # the link's target was never written to
    from kristal.channel import records

    assert records.read_checks_at(world.ctx, world.channel, 2).figures["row_count"] == 80


def test_a_symlinked_index_directory_is_refused_before_anything_moves(
        staged_decoy: tuple[World, Path]) -> None:
    world, _decoy = staged_decoy
    indexes = Path(world.env["KRISTAL_CACHE_DIR"]) / "indexes"
    elsewhere = world.home / "outside"
    indexes.rename(elsewhere)
    indexes.symlink_to(elsewhere, target_is_directory=True)
    before = world.snapshot()
    listing = sorted(os.listdir(elsewhere))
    with pytest.raises(KristalError) as info:
        world.activate(2)
    assert info.value.code == "path_invalid" and info.value.exit_status == 1
    assert world.snapshot() == before and world.pointer().record.active.release_id == 1
    assert sorted(os.listdir(elsewhere)) == listing  # nothing landed outside the cache


def test_a_trickling_download_is_abandoned_at_its_deadline(
        world: World, fault_proxy: FaultProxy) -> None:
    """Issue 12 item 10: the pack's triples come at 2 bytes/s. Each attempt stops at its
    deadline (1 s + size at the minimum throughput), the retries too; then the run fails
    `storage_unavailable`, nothing changed, and the channel is free for the next run."""
    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")
    world.patch.setenv("KRISTAL_DOWNLOAD_DEADLINE_BASE_S", "1")
    world.flows_through(fault_proxy.url, cache_dir=world.home / "fresh-cache")
    fault_proxy.add_rule(Action.TRICKLE, method="GET", key_contains=layout.TRIPLES_PATH,
                         delay=0.5, times=100)
    before = world.snapshot()
    started = time.monotonic()
    with pytest.raises(KristalError) as info:
        world.activate(2)
    took = time.monotonic() - started
    assert info.value.code == "storage_unavailable" and info.value.exit_status == 4
    assert "did not arrive within" in info.value.message
    assert took < 60, f"the trickle held the run for {took:.0f} s"
    assert world.snapshot() == before
    fault_proxy.clear_rules()
    assert world.activate(2).outcome == "activated"  # the lock was released
