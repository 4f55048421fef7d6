"""Signed channel records (issue 12, DESIGN §3, §6): every pointer, history, checks and
quarantine record carries an activator signature over its `record_id` and is verified where it
is read; checks and quarantine count only for their own activation; a rollback target is proven
by the hash chain. Each attack is made directly in the bucket; the operation runs through the
flow or the CLI and is refused with `pointer_invalid`, every channel object unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from test_cli import kristalctl
from world import World

from kristal.channel import records
from kristal.errors import KristalError
from kristal.formats import layout
from kristal.formats.identity import DocKind
from kristal.formats.time import rfc3339
from kristal.trust.signing import require_signatures


@pytest.fixture
def three_live(world: World) -> World:
    """Releases 1, 2, 3 activated and checked in turn (sequences 1..3), set up directly."""
    for release in (1, 2, 3):
        world.publish(release)
    for release in (1, 2, 3):
        world.activate(release, via="plain")
    return world


def _refused(world: World, call: Callable[[], Any], *, says: str = "") -> KristalError:
    before = world.snapshot()
    with pytest.raises(KristalError) as info:
        call()
    assert info.value.code == "pointer_invalid" and info.value.exit_status == 1, \
        info.value.line()
    assert says in info.value.message, info.value.message
    assert world.snapshot() == before, "a refused operation changed the channel"
    return info.value


def test_every_record_written_is_signed_by_the_activator(three_live: World) -> None:
    world = three_live
    trust = world.ctx.trust(world.channel)
    keys = [layout.pointer(world.channel)]
    keys += [layout.history(world.channel, s) for s in (1, 2, 3)]
    keys += [layout.checks(world.channel, s) for s in (1, 2, 3)]
    for key in keys:
        doc = world.read_json(key)
        record_id = require_signatures(doc, DocKind.CHANNEL_RECORD, trust, "activator",
                                       now=world.ctx.now(), what=key)
        assert doc["record_id"] == record_id
        assert [s["key_id"] for s in doc["signatures"]] == ["dev-activator"]


def _unsigned(world: World, doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "reason": "edited in the bucket"}


def _foreign_key(world: World, doc: dict[str, Any]) -> dict[str, Any]:
    return world.resign({**doc, "reason": "edited"},
                        world.extra_key("activator", "mallory", trusted=False))


def _publisher_key(world: World, doc: dict[str, Any]) -> dict[str, Any]:
    return world.resign({**doc, "reason": "edited"}, world.keys.publisher)


def _stripped(world: World, doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("record_id", "signatures")}


TAMPERS = {"edited": _unsigned, "untrusted-key": _foreign_key,
           "publisher-key": _publisher_key, "unsigned": _stripped}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_a_pointer_not_signed_by_an_activator_is_refused_by_status(
        three_live: World, tamper: str) -> None:
    world = three_live
    key = layout.pointer(world.channel)
    world.write_json(key, TAMPERS[tamper](world, world.read_json(key)))
    before = world.snapshot()
    proc = kristalctl("status", world.channel, env=world.env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: pointer_invalid: active pointer"), proc.stderr
    assert world.snapshot() == before


def test_an_edited_history_record_is_not_a_rollback_target(three_live: World) -> None:
    """Issue 12 item 5: history record 1 edited in the bucket (its signature no longer holds):
    `rollback --to 1` refuses it."""
    world = three_live
    key = layout.history(world.channel, 1)
    world.write_json(key, {**world.read_json(key), "operator": "mallory"})
    _refused(world, lambda: world.rollback(1), says="history record 1")


def test_a_resigned_history_record_is_caught_by_the_chain(three_live: World) -> None:
    """An edit re-signed with a trusted activator key still breaks the hash chain: neither
    `--to 1` nor the last-known-good walk (which reads record 2) uses it."""
    world = three_live
    for sequence in (1, 2):
        key = layout.history(world.channel, sequence)
        world.write_json(key, world.resign({**world.read_json(key), "reason": "resigned"}))
    _refused(world, lambda: world.rollback(1), says="not the one the chain links to")
    _refused(world, lambda: world.rollback(), says="history record 2")
    _refused(world, lambda: world.rollback("previous"), says="history record 2")


def test_checks_of_another_activation_are_refused(three_live: World) -> None:
    """A validly signed checks record moved beside another record (sequence 3's slot holds
    sequence 2's outcome, re-signed): status and rollback refuse it."""
    world = three_live
    moved = {**world.read_json(layout.checks(world.channel, 2)), "sequence": 3}
    world.write_json(layout.checks(world.channel, 3), world.resign(moved))
    before = world.snapshot()
    proc = kristalctl("status", world.channel, env=world.env)
    assert proc.returncode == 1 and "error: pointer_invalid: checks record 3" in proc.stderr, \
        proc.stderr
    assert world.snapshot() == before


def test_a_quarantine_record_bound_to_no_activation_is_refused(three_live: World) -> None:
    """A signed quarantine of release 2 naming an activation that never put it live."""
    world = three_live
    live = world.pointer().record
    planted = {
        "artifact_type": "kristal_quarantine", "channel_id": world.channel, "release_id": 2,
        "reason": "planted", "sequence": 2, "activation_id": live.activation_id,
        "created_at": "2026-12-01T00:00:00Z"}
    world.write_json(layout.quarantine(world.channel, 2), world.resign(planted))
    _refused(world, lambda: world.rollback(), says="quarantine record of release 2")


def test_a_checks_record_planted_after_the_switch_is_not_adopted(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacker races the checks: a passing record of another activation lands in the slot
    between the switch and the write of the real (failing) outcome. The run does not adopt it,
    and since the pointer moved, it does not exit 1 (nothing-changed): it says what is live."""
    from kristal.operations import steps

    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")
    real = steps.measure_pinned

    def racing(ctx: Any, record: Any, release: Any) -> Any:
        reports = real(ctx, record, release)
        earlier = world.read_json(layout.checks(world.channel, 1))
        world.write_json(layout.checks(world.channel, record.sequence), world.resign(
            {**earlier, "sequence": record.sequence, "release_id": record.active.release_id}))
        return reports

    monkeypatch.setattr(steps, "measure_pinned", racing)
    with pytest.raises(KristalError) as info:
        world.activate(2)
    assert info.value.code == "pointer_invalid" and info.value.exit_status == 4, \
        info.value.line()
    assert "is live" in info.value.message
    assert world.pointer().record.active.release_id == 2
    with pytest.raises(KristalError):
        records.read_checks_at(world.ctx, world.channel, 2)  # never counted as passed


def test_records_signed_by_a_rotated_key_stay_valid_but_not_a_revoked_one(
        three_live: World) -> None:
    """Key validity is judged at the record's `created_at`: an activator key past its
    `not_after` keeps history readable; a revoked key does not."""
    world = three_live
    doc = world.trust_doc()
    expiry = world.ctx.now() + timedelta(seconds=1)  # after every record (whole seconds)
    for entry in doc["channels"]["*"]["keys"]:
        if entry["key_id"] == "dev-activator":
            entry["not_after"] = rfc3339(expiry)
    world.write_trust(doc)
    time.sleep(max(0.0, (expiry - world.ctx.now()).total_seconds()) + 0.1)
    proc = kristalctl("history", world.channel, env=world.env)
    assert proc.returncode == 0, proc.stderr
    doc["channels"]["*"]["revoked_key_ids"] = ["dev-activator"]
    world.write_trust(doc)
    proc = kristalctl("history", world.channel, env=world.env)
    assert proc.returncode == 1 and "error: pointer_invalid: " in proc.stderr, proc.stderr
    assert "key_revoked" in proc.stderr


def test_the_development_key_set_has_an_activator_and_old_homes_gain_it(tmp_path: Path) -> None:
    """`dev up` makes an activator key and trusts it; a development home made before the role
    existed gets the key added to its `*` entry (its other keys and settings kept)."""
    import json

    from kristal.dev.devstack import ensure_dev_keys

    trust_path = ensure_dev_keys(tmp_path / "dev")
    entry = json.loads(trust_path.read_text())["channels"]["*"]
    roles = {k["key_id"]: k["roles"] for k in entry["keys"]}
    assert roles["dev-activator"] == ["activator"]
    assert (tmp_path / "dev" / "keys" / "dev-activator.pem").stat().st_mode & 0o777 == 0o600
    entry["keys"] = [k for k in entry["keys"] if k["key_id"] != "dev-activator"]
    entry["reverify_rollback"] = True
    trust_path.write_text(json.dumps({"channels": {"*": entry}}))
    ensure_dev_keys(tmp_path / "dev")
    again = json.loads(trust_path.read_text())["channels"]["*"]
    assert "dev-activator" in {k["key_id"] for k in again["keys"]}
    assert again["reverify_rollback"] is True
