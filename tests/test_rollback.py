"""Rollback and downgrade against real SeaweedFS: targets, the record they leave, and every bad
input of the rollback issue refused with its code while nothing live changes.
"""

from __future__ import annotations

from typing import Any

import pytest
from world import World

from kristal.channel import records
from kristal.channel.governance import authorize, revoke
from kristal.errors import KristalError
from kristal.formats.identity import DocKind
from kristal.trust.signing import sign_document

BROKEN = {"row_count": 60, "smoke_queries": [
    {"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}],
    "latency_p95_ms": 50, "max_rss_mb": 512}


def _activate(world: World, release_id: int, **kw: Any) -> Any:
    return world.activate(release_id, **kw)


def _rollback(world: World, to: Any = "last-known-good", **kw: Any) -> Any:
    return world.rollback(to, reason="rollback", **kw)


def _refused(world: World, code: str, call: Any) -> None:
    before = world.snapshot()
    with pytest.raises(KristalError) as info:
        call()
    assert info.value.code == code, info.value.line()
    assert world.snapshot() == before, "a refused operation changed the channel"


@pytest.fixture
def three_live(world: World) -> World:
    """Releases 1, 2, 3 of generation 1 activated in order (3 live)."""
    for release_id in (1, 2, 3):
        world.publish(release_id)
        _activate(world, release_id, via="plain")  # set-up
    return world


def test_rollback_to_last_known_good_keeps_highest_and_sets_rollback_mode(
    three_live: World,
) -> None:
    world = three_live
    result = _rollback(world)
    record = world.pointer().record
    assert result.activation_id == record.activation_id and record.sequence == 4
    assert (record.kind, record.active.release_id) == ("rollback", 2)
    assert record.highest_activated_release_id == 3 and record.rollback_mode
    assert record.previous.release_id == 3 and record.reason == "rollback"
    assert records.read_checks_at(world.ctx, world.channel, 4).result == "passed"
    # History is appended, never rewritten.
    assert [records.read_history(world.ctx, world.channel, s).active.release_id
            for s in (1, 2, 3, 4)] == [1, 2, 3, 2]
    # The next forward activation leaves rollback mode.
    world.publish(4)
    _activate(world, 4)
    assert not world.pointer().record.rollback_mode


def test_rollback_to_explicit_sequence_and_previous(three_live: World) -> None:
    world = three_live
    _rollback(world, 1)
    assert world.pointer().record.active.release_id == 1
    _rollback(world, "previous")
    assert world.pointer().record.active.release_id == 3


def test_last_known_good_skips_failed_and_quarantined_releases(world: World) -> None:
    world.publish(1)
    world.publish(2)
    world.publish(3, expect=BROKEN)
    world.publish(4)
    _activate(world, 1)
    _activate(world, 2)
    with pytest.raises(KristalError):
        _activate(world, 3)  # fails, quarantined, auto rollback to 2 (sequence 4)
    _activate(world, 4)      # sequence 5
    _rollback(world)
    record = world.pointer().record
    assert record.active.release_id == 2, "3 is quarantined, 2 passed most recently"


def test_rollback_guard_makes_a_second_request_a_no_op(three_live: World) -> None:
    world = three_live
    live_id = world.pointer().record.activation_id
    first = _rollback(world, expected_activation_id=live_id)
    second = _rollback(world, expected_activation_id=live_id)
    assert first.outcome == "rolled_back" and second.outcome == "nothing_to_do"
    assert "not live" in second.message and world.pointer().record.sequence == 4


def test_rollback_fast_path_uses_the_cache_and_rehashes(three_live: World) -> None:
    world = three_live
    # Corrupt the cached copy of release 2's pack: the fast path must notice and re-download.
    from kristal.runtime.staging import _inventory
    from kristal.verify.fetch import verify_release

    release = verify_release(world.ctx, world.channel, release_id=2)
    entry = next(e for k, e in _inventory(release) if k.endswith("triples.jsonl"))
    cached = world.ctx.cache.path_for(entry.sha256)
    cached.chmod(0o600)
    cached.write_bytes(b"corrupt" + cached.read_bytes()[7:])
    _rollback(world)
    assert world.pointer().record.active.release_id == 2
    assert world.ctx.cache.verified_path(entry.sha256, entry.size_bytes) is not None


# --- bad inputs ------------------------------------------------------------------------------
def test_rollback_with_empty_history_is_refused(world: World) -> None:
    world.publish(1)
    _refused(world, "rollback_target_missing", lambda: _rollback(world))


def test_rollback_to_a_sequence_never_recorded_is_refused(three_live: World) -> None:
    _refused(three_live, "rollback_target_missing", lambda: _rollback(three_live, 9))


def test_rollback_with_no_earlier_good_release_is_refused(world: World) -> None:
    world.publish(1)
    _activate(world, 1)
    _refused(world, "rollback_target_missing", lambda: _rollback(world))


def test_rollback_to_a_revoked_release_is_refused(three_live: World) -> None:
    world = three_live
    revoke(world.ctx, world.keys.authority, world.channel, 2, "bad-data")
    _refused(world, "release_revoked", lambda: _rollback(world, "previous"))


def test_rollback_target_signed_by_a_key_revoked_since_is_refused(three_live: World) -> None:
    world = three_live
    trust = world.trust_doc()
    trust["channels"]["*"]["revoked_key_ids"] = [world.keys.publisher.key_id]
    world.write_trust(trust)
    _refused(world, "key_revoked", lambda: _rollback(world))


def test_rollback_across_generations_is_refused_as_a_downgrade(world: World) -> None:
    world.publish(1, generation=1)
    world.publish(2, generation=2)
    _activate(world, 1)
    _activate(world, 2)
    _refused(world, "rollback_not_authorized", lambda: _rollback(world, "previous"))


def test_concurrent_activation_moving_the_pointer_during_a_rollback(three_live: World) -> None:
    from kristal.operations.rollback_target import plan_rollback
    from kristal.operations.steps import switch_pointer

    world = three_live
    decision = plan_rollback(world.ctx, world.channel, to="previous")
    world.publish(4)
    _activate(world, 4)  # moves the pointer after the rollback read it
    before = world.snapshot()
    with pytest.raises(KristalError) as info:
        switch_pointer(world.ctx, decision.plan, world.who("late rollback"))
    assert info.value.code == "pointer_conflict"
    assert world.snapshot() == before
    assert world.pointer().record.active.release_id == 4


# --- downgrade -------------------------------------------------------------------------------
@pytest.fixture
def gen2_live(world: World) -> World:
    """Release 1 (generation 1) then release 2 (generation 2) live."""
    world.publish(1, generation=1)
    world.publish(2, generation=2)
    _activate(world, 1, via="plain")
    _activate(world, 2, via="plain")
    return world


def _authorize(world: World, release_id: int, expires_in: str = "1h") -> str:
    auth = authorize(world.ctx, world.keys.authority, world.channel, release_id, "incident",
                     expires_in)
    return auth["authorization_id"]


def _downgrade(world: World, release_id: int, authorization_id: str, via: str = "flow") -> Any:
    return world.downgrade(release_id, authorization_id, via=via, reason="downgrade")


def test_authorized_downgrade_goes_to_the_older_generation(gen2_live: World) -> None:
    world = gen2_live
    auth_id = _authorize(world, 1)
    result = _downgrade(world, 1, auth_id)
    record = world.pointer().record
    assert result.check_result == "passed"
    assert (record.kind, record.active.release_id, record.active.generation) == ("downgrade", 1, 1)
    assert record.rollback_mode and record.highest_activated_release_id == 2
    assert record.evidence["authorization"]["authorization_id"] == auth_id


def test_downgrade_without_an_authorization_in_the_index_is_refused(gen2_live: World) -> None:
    world = gen2_live
    bogus = "sha256:" + "ab" * 32
    _refused(world, "rollback_not_authorized", lambda: _downgrade(world, 1, bogus))


def test_expired_authorization_is_refused(gen2_live: World) -> None:
    import datetime as dt

    world = gen2_live
    auth_id = _authorize(world, 1, "1m")
    real_now = world.ctx.now
    world.ctx.now = lambda: real_now() + dt.timedelta(minutes=5)  # the plain runner's clock
    _refused(world, "rollback_not_authorized",
             lambda: _downgrade(world, 1, auth_id, via="plain"))


def test_authorization_for_another_release_is_refused(world: World) -> None:
    for release_id, generation in ((1, 1), (2, 1), (3, 2)):
        world.publish(release_id, generation=generation)
    _activate(world, 1)
    _activate(world, 3)
    auth_id = _authorize(world, 2)
    _refused(world, "rollback_not_authorized", lambda: _downgrade(world, 1, auth_id))


def _add_authorization(world: World, auth: dict[str, Any]) -> None:
    world.change_index(lambda body: body["rollback_authorizations"].append(auth))


def _authorization(world: World, *, channel: str | None = None, packs: list[str] | None = None,
                   key: Any = None) -> dict[str, Any]:
    now = world.ctx.now()
    return sign_document({
        "artifact_type": "rollback_authorization", "channel_id": channel or world.channel,
        "target_release_id": 1,
        "target_runtime_pack_ids": packs or world.published[1].runtime_pack_ids,
        "reason": "incident", "issuer": "someone",
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_at": (now.replace(year=now.year + 1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }, DocKind.ROLLBACK_AUTHORIZATION, key or world.keys.authority, now=now)


def test_authorization_for_another_channel_is_refused(gen2_live: World) -> None:
    world = gen2_live
    auth = _authorization(world, channel="other/prod/eu")
    _add_authorization(world, auth)
    _refused(world, "rollback_not_authorized",
             lambda: _downgrade(world, 1, auth["authorization_id"]))


def test_authorization_for_other_pack_ids_is_refused(gen2_live: World) -> None:
    world = gen2_live
    auth = _authorization(world, packs=world.published[2].runtime_pack_ids)
    _add_authorization(world, auth)
    _refused(world, "rollback_not_authorized",
             lambda: _downgrade(world, 1, auth["authorization_id"]))


def test_authorization_not_signed_by_channel_authority_is_refused(gen2_live: World) -> None:
    world = gen2_live
    auth = _authorization(world, key=world.keys.publisher)  # a trusted key, the wrong role
    _add_authorization(world, auth)
    _refused(world, "rollback_not_authorized",
             lambda: _downgrade(world, 1, auth["authorization_id"]))


def test_downgrade_that_would_mix_generations_is_refused(gen2_live: World) -> None:
    from kristal.formats import layout

    world = gen2_live
    # A validly signed pack built from release 1's exchange but carrying generation 2, bound to
    # release 1 by a validly re-signed index and blessed by a valid authorization.
    pack = world.read_json(world.manifest_key(1, "pack"))
    for name in ("runtime_pack_id", "signatures"):
        pack.pop(name)
    pack["extensions"]["kristal.activate/generation"] = 2
    signed = sign_document(pack, DocKind.RUNTIME_PACK, world.keys.publisher, now=world.ctx.now())
    world.write_json(layout.pack_manifest(signed["runtime_pack_id"]), signed)

    world.rewrite_entry(1, runtime_pack_ids=[signed["runtime_pack_id"]])
    auth_id = _authorize(world, 1)
    _refused(world, "generation_mismatch", lambda: _downgrade(world, 1, auth_id))
