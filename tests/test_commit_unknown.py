"""Commit-unknown (DESIGN §6 invariant 3): ambiguous pointer writes, resolved by re-reading.

The `activate` flow runs through the fault proxy, in front of the real SeaweedFS, with faults on the
PUT (and GET) of `active.json` only. A write whose response is lost must be recognised as ours
from the re-read, never resent blindly; a write that was not forwarded is retried conditionally;
and when the outcome cannot be learned the activation stops with `commit_unknown` (exit 4)
without removing anything, the previous release still live.
"""

from __future__ import annotations

from typing import Any

import pytest
from activation_worker import assert_history_complete
from faultproxy import Action, FaultProxy
from world import World

from kristal.channel import pointer as ptr
from kristal.channel import records
from kristal.errors import CommitUnknown
from kristal.runtime.staging import index_path

POINTER = "active.json"


@pytest.fixture
def live_one(world: World) -> World:
    world.publish(1)
    world.publish(2)
    assert world.activate(1, via="plain").check_result == "passed"  # set-up
    return world


def _activate_through(world: World, proxy: FaultProxy) -> Any:
    """The activate flow of release 2, every S3 request of it through the fault proxy."""
    world.flows_through(proxy.url, connect_timeout=2, read_timeout=5)
    return world.activate(2)


def _pointer_puts(proxy: FaultProxy) -> list[Any]:
    return proxy.requests("PUT", POINTER)


def _assert_activated_once(world: World, result: Any) -> None:
    """Release 2 live at sequence 2 with our record, exactly one record for it, history and
    checks written, nothing beyond."""
    live = world.pointer().record
    assert live.activation_id == result.activation_id
    assert (live.sequence, live.active.release_id) == (2, 2)
    assert records.read_history(world.ctx, world.channel, 2) == live
    assert records.read_history(world.ctx, world.channel, 3) is None
    assert result.check_result == "passed"
    assert records.read_checks_at(world.ctx, world.channel, 2).activation_id == live.activation_id
    assert_history_complete(world.ctx, world.channel)


def test_lost_response_to_pointer_put_is_resolved_as_ours_without_resend(
    live_one: World, fault_proxy: FaultProxy
) -> None:
    world = live_one
    rule = fault_proxy.add_rule(Action.DROP_RESPONSE, method="PUT", key_contains=POINTER, times=1)
    result = _activate_through(world, fault_proxy)
    assert rule.fired == 1
    _assert_activated_once(world, result)
    puts = _pointer_puts(fault_proxy)
    assert len(puts) == 1, "the pointer PUT was resent after its response was lost"
    assert puts[0].upstream_status == 200 and puts[0].action is Action.DROP_RESPONSE
    assert "if-match" in puts[0].headers


def test_503_on_pointer_put_is_retried_conditionally(
    live_one: World, fault_proxy: FaultProxy
) -> None:
    world = live_one
    etag = world.pointer().etag
    rule = fault_proxy.add_rule(Action.STATUS, method="PUT", key_contains=POINTER, status=503,
                                times=1)
    result = _activate_through(world, fault_proxy)
    assert rule.fired == 1
    _assert_activated_once(world, result)
    puts = _pointer_puts(fault_proxy)
    assert [p.action for p in puts] == [Action.STATUS, None]
    # The resend carried the same condition as the first attempt: never unconditional.
    assert all(p.headers.get("if-match") == etag for p in puts)


def test_reset_on_pointer_put_is_retried_conditionally(
    live_one: World, fault_proxy: FaultProxy
) -> None:
    world = live_one
    etag = world.pointer().etag
    rule = fault_proxy.add_rule(Action.RESET, method="PUT", key_contains=POINTER, times=1)
    result = _activate_through(world, fault_proxy)
    assert rule.fired == 1
    _assert_activated_once(world, result)
    puts = _pointer_puts(fault_proxy)
    assert [p.action for p in puts] == [Action.RESET, None]
    assert all(p.headers.get("if-match") == etag for p in puts)


def test_412_answering_our_own_landed_write_is_success(
    live_one: World, fault_proxy: FaultProxy
) -> None:
    """The first PUT lands but its response is lost, the re-read fails, so the conditional resend
    gets 412 from our own write: the next re-read must still find our record."""
    world = live_one
    fault_proxy.add_rule(Action.DROP_RESPONSE, method="PUT", key_contains=POINTER, times=1)
    # The first pointer GET is the plan's read (passed through); the next ones, the commit's
    # re-read with botocore's own retries, fail.
    fault_proxy.add_rule(Action.DELAY, method="GET", key_contains=POINTER, delay=0, times=1)
    fault_proxy.add_rule(Action.STATUS, method="GET", key_contains=POINTER, status=503, times=3)
    result = _activate_through(world, fault_proxy)
    _assert_activated_once(world, result)
    puts = _pointer_puts(fault_proxy)
    assert [p.upstream_status for p in puts] == [200, 412]
    assert [p.action for p in puts] == [Action.DROP_RESPONSE, None]


def test_outcome_still_unknown_after_rereads_is_commit_unknown(
    live_one: World, fault_proxy: FaultProxy
) -> None:
    world = live_one
    live_before = world.pointer()
    history_before = world.snapshot()
    # Let the plan's read of the pointer through, then fail every pointer PUT and GET.
    fault_proxy.add_rule(Action.DELAY, method="GET", key_contains=POINTER, delay=0, times=1)
    fault_proxy.add_rule(Action.STATUS, method="GET", key_contains=POINTER, status=503,
                         times=1000)
    fault_proxy.add_rule(Action.STATUS, method="PUT", key_contains=POINTER, status=503,
                         times=1000)
    with pytest.raises(CommitUnknown) as info:
        _activate_through(world, fault_proxy)
    assert info.value.code == "commit_unknown" and info.value.exit_status == 4
    assert len(_pointer_puts(fault_proxy)) == ptr.COMMIT_ATTEMPTS
    assert not [p for p in fault_proxy.requests(key_contains=POINTER) if p.action is None
                and p.method == "PUT"], "a pointer PUT reached the store"

    fault_proxy.clear_rules()
    # The previous release is still live, nothing was written or removed.
    assert world.pointer() == live_before
    assert world.snapshot() == history_before
    # Nothing staged was removed: release 2's index is still in the local cache.
    two = world.published[2].runtime_pack_ids[0]
    assert index_path(world.ctx, two).exists()
    # And once the store answers again, the same activation simply succeeds.
    result = world.activate(2)
    _assert_activated_once(world, result)
