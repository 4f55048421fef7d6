"""Channel state an attacker with write access to the bucket (no keys) tries to bend (issue 12,
first part): each change is made directly in the bucket, the operation runs through the flow
or the CLI, and it is refused with its code while every object under `channels/<id>/` stays
as it was; the floor binds rollbacks; recorded text is printed verbatim.
"""

from __future__ import annotations

import pytest
from test_cli import kristalctl
from world import World

from kristal.channel.governance import set_floor
from kristal.errors import KristalError
from kristal.formats import layout


def _refused(world: World, code: str, call: object) -> KristalError:
    before = world.snapshot()
    with pytest.raises(KristalError) as info:
        call()  # type: ignore[operator]
    assert info.value.code == code, info.value.line()
    assert world.snapshot() == before, "a refused operation changed the channel"
    return info.value


@pytest.fixture
def two_published_one_live(world: World) -> World:
    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")  # set-up
    return world


@pytest.mark.parametrize("slot", ["history", "checks"])
def test_a_taken_record_slot_is_found_before_the_switch(
        two_published_one_live: World, slot: str) -> None:
    """A planted `activations/2` or a planted passing `checks/2` (another activation's) would be
    adopted by the switch to sequence 2: it is found first, and nothing moves."""
    world = two_published_one_live
    record = world.read_json(layout.history(world.channel, 1))
    if slot == "history":
        world.write_json(layout.history(world.channel, 2), {**record, "sequence": 2})
    else:
        checks = world.read_json(layout.checks(world.channel, 1))
        world.write_json(layout.checks(world.channel, 2), {
            **checks, "sequence": 2, "activation_id": "00000000-0000-4000-8000-000000000000"})
    error = _refused(world, "pointer_invalid", lambda: world.activate(2))
    assert error.exit_status == 1 and "already exists" in error.message
    assert world.pointer().record.active.release_id == 1


def test_a_pointer_with_a_sequence_gap_is_not_repaired_into_history(world: World) -> None:
    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")
    world.activate(2, via="plain")
    pointer = world.read_json(layout.pointer(world.channel))
    # Re-signed (an attacker holding an activator key): the chain rule, not the signature,
    # is what refuses it.
    world.write_json(layout.pointer(world.channel), world.resign({**pointer, "sequence": 5}))
    error = _refused(world, "pointer_invalid", lambda: world.rollback())
    assert "does not follow on from history record 4" in error.message
    assert world.store.head(layout.history(world.channel, 5)) is None


def test_rollback_below_the_floor_is_refused_as_a_downgrade(world: World) -> None:
    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")
    world.activate(2, via="plain")
    set_floor(world.ctx, world.keys.authority, world.channel, 2)
    error = _refused(world, "rollback_not_authorized", lambda: world.rollback())
    assert "below the floor" in error.message
    _refused(world, "rollback_not_authorized", lambda: world.rollback("previous"))


def test_reverify_reports_a_live_release_below_the_floor(world: World) -> None:
    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")
    set_floor(world.ctx, world.keys.authority, world.channel, 2)
    with pytest.raises(KristalError) as info:
        world.reverify()
    assert info.value.code == "release_id_downgrade_blocked" and info.value.exit_status == 1
    assert "below the channel floor 2" in info.value.message


def test_rollback_to_a_non_ascii_digit_is_usage_invalid(two_published_one_live: World) -> None:
    world = two_published_one_live
    before = world.snapshot()
    proc = kristalctl("rollback", world.channel, "--to", "²", "--operator", "alice",
                      "--reason", "typo", env=world.env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: usage_invalid: ") and proc.stderr.count("\n") == 1
    assert world.snapshot() == before


def test_recorded_text_is_printed_verbatim_not_as_rich_markup(world: World) -> None:
    world.publish(1)
    reason = "[/] [link=http://x.io]a[/link] [b]C[/b]"
    world.activate(1, via="plain", reason=reason)
    proc = kristalctl("history", world.channel, env=world.env)
    assert proc.returncode == 0, proc.stderr
    assert reason in proc.stdout, proc.stdout
    assert "\x1b]8;" not in proc.stdout  # no terminal hyperlink


def test_reverify_of_a_pointer_rewritten_in_place_is_pointer_invalid(
        two_published_one_live: World) -> None:
    """Not `check_failed` (exit 5 would say something was rolled back: nothing was)."""
    world = two_published_one_live
    pointer = world.read_json(layout.pointer(world.channel))
    world.write_json(layout.pointer(world.channel), {**pointer, "reason": "rewritten"})
    before = world.snapshot()
    with pytest.raises(KristalError) as info:
        world.reverify()
    assert info.value.code == "pointer_invalid" and info.value.exit_status == 1
    assert world.snapshot() == before


BROKEN = {"row_count": 60, "smoke_queries": [
    {"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}],
    "latency_p95_ms": 50, "max_rss_mb": 512}


def test_a_report_on_a_release_rolled_back_to_never_puts_the_failed_one_back(
        world: World) -> None:
    """Release 3 failed its checks and was rolled back to 2; a monitor then reports 2 failing
    (the `kristal.check.failed` automation runs exactly this request): the automatic target is
    release 1, not the record's `previous` (3, quarantined)."""
    from kristal.errors import CheckFailed

    world.publish(1)
    world.publish(2)
    world.publish(3, expect=BROKEN)
    world.activate(1, via="plain")
    world.activate(2, via="plain")
    with pytest.raises(CheckFailed):
        world.activate(3)
    live = world.pointer().record
    assert (live.sequence, live.active.release_id, live.previous.release_id) == (4, 2, 3)
    done = world.rollback(expected_activation_id=live.activation_id, automatic=True,
                          reason="monitor: error rate")
    assert done.outcome == "rolled_back" and done.release_id == 1
    now = world.pointer().record
    assert (now.sequence, now.kind, now.active.release_id) == (5, "auto_rollback", 1)
    from kristal.channel import records

    assert records.read_quarantine(world.ctx, world.channel, 2) is not None  # reported


def test_an_automatic_rollback_with_no_safe_target_changes_nothing_and_fails(
        world: World) -> None:
    world.publish(1)
    world.activate(1, via="plain")
    live = world.pointer().record
    with pytest.raises(KristalError) as info:
        world.rollback(expected_activation_id=live.activation_id, automatic=True,
                       reason="monitor: error rate")
    assert info.value.code == "rollback_failed" and info.value.exit_status == 1
    assert "nothing was live before it" in info.value.message
    assert world.pointer().record == live  # still live (now quarantined): nothing to go to
    assert _events("kristal.rollback.failed", world.channel), "the failure was not emitted"


def _events(name: str, channel: str, deadline_s: float = 10.0) -> list[object]:
    import time

    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from tasks.names import channel_resource_id

    wanted = EventFilter(event=EventNameFilter(name=[name]),
                         resource=EventResourceFilter(id=[channel_resource_id(channel)]))
    end = time.monotonic() + deadline_s
    while True:
        with get_client(sync_client=True) as client:
            found = client.read_events(filter=wanted, limit=10).events
        if found or time.monotonic() > end:
            return list(found)
        time.sleep(0.3)


def test_a_replayed_older_index_cannot_undo_a_revocation(world: World) -> None:
    """After `revoke` wrote index v3, the validly signed v2 put back in the bucket is refused:
    this machine remembers the highest index version it verified or wrote (TUF-style)."""
    from kristal.channel.governance import revoke

    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")  # the live record used v2
    key = layout.channel_index(world.channel)
    v2 = world.store.get_bytes(key, max_bytes=1 << 24)[0]
    revoke(world.ctx, world.keys.authority, world.channel, 2, "bad-data")
    world.store.put_bytes(key, v2)  # replayed: validly signed, older than what was seen
    error = _refused(world, "index_replayed", lambda: world.activate(2))
    assert "v2 is older than v3" in error.message
