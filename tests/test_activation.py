"""Activation against real SeaweedFS with real keys: the happy path, the automatic rollback, and
every bad input of the activation issue refused with its code while nothing live changes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from world import World

from kristal.channel import records
from kristal.errors import CheckFailed, KristalError
from kristal.formats import layout
from kristal.formats.canonical import canonical_sha256
from kristal.formats.identity import DocKind
from kristal.trust.signing import sign_document


def _refused(world: World, release_id: int, code: str) -> KristalError:
    before = world.snapshot()
    with pytest.raises(KristalError) as info:
        world.activate(release_id)
    assert info.value.code == code, info.value.line()
    assert world.snapshot() == before, "a refused activation changed the channel"
    return info.value


def test_activate_two_releases_records_chain_and_checks(world: World) -> None:
    world.publish(1)
    world.publish(2)
    first = world.activate(1)
    second = world.activate(2)
    assert first.check_result == "passed" and second.check_result == "passed"
    live = world.pointer().record
    assert live.sequence == 2 and live.active.release_id == 2
    assert live.previous.release_id == 1 and live.previous_sequence == 1
    assert live.last_known_good.release_id == 1
    assert live.highest_activated_release_id == 2 and not live.rollback_mode
    history1 = records.read_history(world.ctx, world.channel, 1)
    assert live.prev_record_sha256 == canonical_sha256(history1.model_dump(mode="json"))
    assert history1.prev_record_sha256 is None
    assert records.read_history(world.ctx, world.channel, 2) == live
    checks = records.read_checks_at(world.ctx, world.channel, 2)
    assert checks.previous_figures["row_count"] == checks.figures["row_count"] == 60
    assert live.evidence["report_ids"] and live.operator == "pytest"


def test_failed_check_quarantines_and_rolls_back_to_previous(world: World) -> None:
    world.publish(1)
    world.publish(
        2,
        expect={
            "row_count": 60,
            "smoke_queries": [
                {"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}
            ],
            "latency_p95_ms": 50,
            "max_rss_mb": 512,
        },
    )
    world.activate(1)
    with pytest.raises(CheckFailed) as info:
        world.activate(2)
    assert info.value.exit_status == 5
    live = world.pointer().record
    assert (live.sequence, live.kind, live.active.release_id) == (3, "auto_rollback", 1)
    assert live.highest_activated_release_id == 2 and live.rollback_mode
    failed = records.read_checks_at(world.ctx, world.channel, 2)
    assert failed.result == "failed" and "expected 999" in failed.reason
    assert records.read_quarantine(world.ctx, world.channel, 2).sequence == 2
    # The quarantined release is refused unless forced.
    with pytest.raises(KristalError) as again:
        world.activate(2)
    assert again.value.code == "release_quarantined"


def test_first_activation_failing_its_checks_stays_live_quarantined(world: World) -> None:
    world.publish(
        1, expect={"row_count": 61, "smoke_queries": [], "latency_p95_ms": 50, "max_rss_mb": 512}
    )
    with pytest.raises(CheckFailed, match="no automatic rollback"):
        world.activate(1)
    assert world.pointer().record.active.release_id == 1
    assert records.read_quarantine(world.ctx, world.channel, 1) is not None


def test_dry_run_like_plan_changes_nothing(world: World) -> None:
    from kristal.operations.plan import plan_activation

    world.publish(1)
    plan = plan_activation(world.ctx, world.channel, release_id=1)
    assert plan.summary()["target"]["release_id"] == 1
    assert world.snapshot() == {}


def test_exact_ids_must_name_one_index_entry(world: World) -> None:
    from kristal.operations.plan import plan_activation

    one = world.publish(1)
    two = world.publish(2)
    plan = plan_activation(
        world.ctx, world.channel, exchange_id=one.exchange_id, pack_ids=one.runtime_pack_ids
    )
    assert plan.release.entry.release_id == 1
    with pytest.raises(KristalError) as info:
        plan_activation(
            world.ctx, world.channel, exchange_id=one.exchange_id, pack_ids=two.runtime_pack_ids
        )
    assert info.value.code == "release_id_substitution_blocked"


# --- bad inputs: refused with their code, nothing live changed ----------------------------------
@pytest.fixture
def live_one(world: World) -> World:
    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")  # set-up: the refusals below go through the flow
    return world


def test_tampered_payload_byte_is_refused(live_one: World) -> None:
    world = live_one
    key = layout.pack_file(world.published[2].runtime_pack_ids[0], "data/triples.jsonl")
    data = bytearray(world.store.get_bytes(key, max_bytes=1 << 24)[0])
    data[10] ^= 0x01
    world.store.put_bytes(key, bytes(data))
    _refused(world, 2, "file_hash_mismatch")


def test_payload_one_byte_longer_is_refused(live_one: World) -> None:
    world = live_one
    key = layout.pack_file(world.published[2].runtime_pack_ids[0], "data/triples.jsonl")
    data = world.store.get_bytes(key, max_bytes=1 << 24)[0]
    world.store.put_bytes(key, data + b"X")
    _refused(world, 2, "file_hash_mismatch")


def test_tampered_manifest_is_refused(live_one: World) -> None:
    world = live_one
    key = world.manifest_key(2, "pack")
    doc = world.read_json(key)
    doc["extensions"]["kristal.activate/expectations"]["row_count"] = 1
    world.write_json(key, doc)
    _refused(world, 2, "identity_mismatch")


def test_bad_signature_is_refused(live_one: World) -> None:
    world = live_one
    key = world.manifest_key(2, "exchange")
    doc = world.read_json(key)
    sig = doc["signatures"][0]["signature"]
    doc["signatures"][0]["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    world.write_json(key, doc)
    _refused(world, 2, "signature_invalid")


def test_missing_signature_is_refused(live_one: World) -> None:
    world = live_one
    key = world.manifest_key(2, "pack")
    doc = world.read_json(key)
    doc["signatures"] = []
    world.write_json(key, doc)
    _refused(world, 2, "signature_missing")


def test_unknown_key_is_refused(live_one: World) -> None:
    world = live_one
    stranger = world.extra_key("publisher", "stranger", trusted=False)
    key = world.manifest_key(2, "exchange")
    doc = world.read_json(key)
    doc.pop("signatures")
    world.write_json(key, sign_document(doc, DocKind.EXCHANGE, stranger, now=world.ctx.now()))
    _refused(world, 2, "key_unknown")


def test_revoked_key_is_refused(live_one: World) -> None:
    world = live_one
    trust = world.trust_doc()
    trust["channels"]["*"]["revoked_key_ids"] = [world.keys.publisher.key_id]
    world.write_trust(trust)
    _refused(world, 2, "key_revoked")


def test_expired_key_is_refused(live_one: World) -> None:
    world = live_one
    trust = world.trust_doc()
    for key in trust["channels"]["*"]["keys"]:
        if key["key_id"] == world.keys.validator.key_id:
            key["not_before"] = "2020-01-01T00:00:00Z"
            key["not_after"] = "2021-01-01T00:00:00Z"
    world.write_trust(trust)
    _refused(world, 2, "key_expired")


def test_missing_validation_report_is_refused(live_one: World) -> None:
    world = live_one
    report_id = world.published[2].validation_report_ids[0]
    world.store.delete(layout.validation_report(report_id))
    _refused(world, 2, "validation_report_missing")


def test_foreign_validation_report_is_refused(live_one: World) -> None:
    world = live_one
    # The index (validly re-signed) binds release 2 to release 1's reports: they passed for other
    # IDs and prove nothing about release 2.
    world.rewrite_entry(2, validation_report_ids=world.published[1].validation_report_ids)
    _refused(world, 2, "validation_report_missing")


def test_failed_validation_report_is_refused(live_one: World) -> None:
    world = live_one
    report_id = world.published[2].validation_report_ids[0]
    doc = world.read_json(layout.validation_report(report_id))
    for name in ("validation_report_id", "signatures"):
        doc.pop(name)
    doc["result"] = "failed"
    doc["findings"][0]["status"] = "failed"
    signed = sign_document(
        doc, DocKind.VALIDATION_REPORT, world.keys.validator, now=world.ctx.now()
    )
    world.write_json(layout.validation_report(signed["validation_report_id"]), signed)
    ids = list(world.published[2].validation_report_ids)
    ids[0] = signed["validation_report_id"]
    world.rewrite_entry(2, validation_report_ids=ids)
    _refused(world, 2, "validation_failed")


def test_pack_built_from_another_exchange_is_refused(live_one: World) -> None:
    world = live_one
    world.rewrite_entry(2, runtime_pack_ids=world.published[1].runtime_pack_ids)
    _refused(world, 2, "source_exchange_mismatch")


def test_part_of_another_generation_is_refused(live_one: World) -> None:
    world = live_one
    world.rewrite_entry(2, generation=7)
    _refused(world, 2, "generation_mismatch")


def test_replayed_lower_release_id_is_refused(world: World) -> None:
    world.publish(1)
    world.publish(2)
    world.activate(2)
    _refused(world, 1, "release_id_downgrade_blocked")


def test_release_below_floor_is_refused(world: World) -> None:
    from kristal.channel.governance import set_floor

    world.publish(1)
    world.publish(2)
    set_floor(world.ctx, world.keys.authority, world.channel, 2)
    _refused(world, 1, "release_id_downgrade_blocked")


def test_revoked_release_is_refused(live_one: World) -> None:
    from kristal.channel.governance import revoke

    world = live_one
    revoke(world.ctx, world.keys.authority, world.channel, 2, "bad-data")
    _refused(world, 2, "release_revoked")


def test_path_traversal_in_files_is_refused(live_one: World) -> None:
    world = live_one
    key = world.manifest_key(2, "pack")
    doc = world.read_json(key)
    for name in ("runtime_pack_id", "signatures"):
        doc.pop(name)
    doc["files"][0]["path"] = "../../../etc/passwd"
    signed = sign_document(doc, DocKind.RUNTIME_PACK, world.keys.publisher, now=world.ctx.now())
    # Stored where a well-formed ID would put it, and bound by a validly re-signed index.
    world.write_json(layout.pack_manifest(signed["runtime_pack_id"]), signed)
    world.rewrite_entry(2, runtime_pack_ids=[signed["runtime_pack_id"]])
    _refused(world, 2, "path_invalid")


def test_index_signed_by_unknown_key_is_refused(live_one: World) -> None:
    world = live_one
    key = layout.channel_index(world.channel)
    doc = world.read_json(key)
    doc.pop("signatures")
    doc["signatures"] = []
    world.write_json(key, doc)
    _refused(world, 2, "signature_missing")


def test_replayed_older_index_is_refused(live_one: World) -> None:
    world = live_one
    key = layout.channel_index(world.channel)
    old = world.store.get_bytes(key, max_bytes=1 << 24)[0]
    # The live record used v2; a later change makes v3; putting v2 back is a replay...
    from kristal.channel.governance import set_floor

    set_floor(world.ctx, world.keys.authority, world.channel, 0)
    world.activate(2)  # record now carries index v3
    world.store.put_bytes(key, old)  # ... of v2, validly signed but older
    world.publish  # noqa: B018 - nothing else changes
    with pytest.raises(KristalError) as info:
        from kristal.operations.plan import plan_activation

        plan_activation(world.ctx, world.channel, release_id=2, force=True)
    assert info.value.code == "index_replayed"


def test_malformed_pointer_is_refused(live_one: World) -> None:
    world = live_one
    world.store.put_bytes(layout.pointer(world.channel), json.dumps({"sequence": "x"}).encode())
    with pytest.raises(KristalError) as info:
        world.activate(2)
    assert info.value.code == "pointer_invalid"


def test_endpoint_ignoring_conditions_is_refused_before_any_switch(
    world: World, fault_proxy: Any
) -> None:
    """DESIGN §6 invariant 6: the first conditional write of a process probes the endpoint."""
    from faultproxy import Action

    world.publish(1)
    fault_proxy.add_rule(Action.STRIP_CONDITIONS, method="PUT", times=1000)
    world.flows_through(fault_proxy.url)
    with pytest.raises(KristalError) as info:
        world.activate(1)
    assert info.value.code == "endpoint_unsafe" and info.value.exit_status == 4
    assert world.snapshot() == {}
