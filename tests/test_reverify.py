"""Nightly re-verification against real SeaweedFS and the session Prefect server: a healthy
channel passes every row; tampered payloads, broken history chains, missing checks and expired
keys each fail their row (and the run, with an event and an artifact); a missing history object
is repaired; `rollback_on_failure` rolls a failing channel back.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
from world import World

from kristal.channel import records
from kristal.channel.history import walk_chain
from kristal.errors import CheckFailed, ChecksNotPassed, KristalError
from kristal.formats import layout
from kristal.operations import reverify_checks as rv
from kristal.operations.plan import plan_activation
from kristal.operations.reverify_bake import BAKE
from kristal.operations.reverify_checks import ChannelReport, CheckRow, list_channels
from kristal.operations.steps import switch_pointer
from kristal.runtime import staging
from tasks.names import artifact_key, channel_resource_id


def _activate(world: World, release_id: int) -> None:
    world.activate(release_id, via="plain")  # set-up: the re-verifications run as flows


def _report(world: World, channel: str | None = None,
            **kw: Any) -> tuple[ChannelReport, KristalError | None]:
    """The `reverify` flow for one channel: its rows (from the flow's result, or from the
    channel's table artifact when the run failed) and the error the run failed with."""
    channel = channel or world.channel
    try:
        result = world.reverify(channel=channel, **kw)
    except KristalError as exc:
        rows = [CheckRow(name=r["check"], ok=r["ok"] in (True, "True", "true"),
                         detail=r["detail"], code=r["code"] or None)
                for r in _table(artifact_key("reverify", channel))]
        return ChannelReport(channel_id=channel, rows=rows), exc
    [report] = result.channels
    return report, None


def _row(report: ChannelReport, name: str) -> rv.CheckRow:
    return next(r for r in report.rows if r.name == name)


def _table(key: str) -> list[dict[str, Any]]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:  # the newest version of the key
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
        )
    assert found, f"no artifact {key}"
    data = found[0].data
    return json.loads(data) if isinstance(data, str) else data


def _events(resource: str, deadline_s: float = 10.0) -> list[Any]:
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(
        event=EventNameFilter(name=["kristal.reverify.failed"]),
        resource=EventResourceFilter(id=[resource]),
    )
    end = time.monotonic() + deadline_s
    while True:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=event_filter, limit=50).events
        if events or time.monotonic() > end:
            return events
        time.sleep(0.3)


def _request(world: World, **kw: Any) -> Any:
    from flows.params import ReverifyRequest

    return ReverifyRequest(channel_ids=[world.channel], **kw)


def test_healthy_channel_passes_every_row_and_the_flow_reports_it(
    prefect_api: str, world: World
) -> None:
    from flows.reverify import reverify

    world.publish(1)
    world.publish(2)
    _activate(world, 1)
    _activate(world, 2)
    result = reverify(_request(world))
    assert result.ok and result.failed_channels == []
    [report] = result.channels
    assert (report.sequence, report.release_id) == (2, 2)
    names = [r.name for r in report.rows]
    assert names == [rv.POINTER_CHAIN, rv.LIVE_RELEASE, rv.EXPIRY, rv.AUTHORIZATIONS,
                     rv.OBJECTS, rv.LOCAL_INDEX, rv.CHECKS_RECORD, BAKE]
    assert all(r.ok for r in report.rows), report.rows
    assert "chain of 2 record(s) holds" in _row(report, rv.POINTER_CHAIN).detail
    assert "staged index matches its pack (60 rows)" in _row(report, rv.LOCAL_INDEX).detail
    assert "passed" in _row(report, rv.CHECKS_RECORD).detail
    table = _table(artifact_key("reverify", world.channel))
    assert [row["check"] for row in table] == names
    assert all(row["ok"] in (True, "True", "true") for row in table)


def test_tampered_payload_fails_the_run_with_event_and_artifact(
    prefect_api: str, world: World
) -> None:
    from flows.reverify import reverify

    result = world.publish(1)
    _activate(world, 1)
    key = layout.pack_file(result.runtime_pack_ids[0], staging.TRIPLES_PATH)
    data = bytearray(world.store.get_bytes(key, max_bytes=1 << 24)[0])
    data[10] ^= 0x01  # same size, one bit different
    world.store.put_bytes(key, bytes(data), content_type="application/x-ndjson")

    with pytest.raises(KristalError) as info:
        reverify(_request(world))
    assert info.value.code == "file_hash_mismatch"
    rows = {row["check"]: row for row in _table(artifact_key("reverify", world.channel))}
    bad = rows[rv.OBJECTS]
    assert bad["ok"] in (False, "False", "false") and bad["code"] == "file_hash_mismatch"
    assert key in bad["detail"]
    live = world.pointer().record
    events = _events(channel_resource_id(world.channel))
    assert events, "kristal.reverify.failed was not emitted"
    payload = events[0].payload
    assert payload["channel_id"] == world.channel
    assert payload["activation_id"] == live.activation_id
    assert any("objects-rehash" in reason for reason in payload["reasons"])
    assert live.sequence == 1  # an alert only: nothing rolled back


def test_missing_history_object_is_repaired_and_reported(world: World) -> None:
    world.publish(1)
    world.publish(2)
    _activate(world, 1)
    _activate(world, 2)
    world.store.delete(layout.history(world.channel, 2))
    report, _ = _report(world)
    row = _row(report, rv.POINTER_CHAIN)
    assert row.ok and "repaired missing history record 2" in row.detail, row
    assert report.ok, report.rows
    assert records.read_history(world.ctx, world.channel, 2) == world.pointer().record
    # Repaired once: the next run has nothing to repair.
    again = _row(_report(world)[0], rv.POINTER_CHAIN)
    assert again.ok and "repaired" not in again.detail


def test_broken_chain_fails_with_pointer_invalid(world: World) -> None:
    world.publish(1)
    world.publish(2)
    _activate(world, 1)
    _activate(world, 2)
    assert len(walk_chain(world.ctx, world.channel)) == 2
    key = layout.history(world.channel, 1)
    doc = world.read_json(key)
    doc["reason"] = "rewritten after the fact"
    # Over the immutable object, re-signed as an attacker holding an activator key would: the
    # signature holds, the chain does not.
    world.write_json(key, world.resign(doc))
    with pytest.raises(KristalError) as info:
        walk_chain(world.ctx, world.channel)
    assert info.value.code == "pointer_invalid" and "chain is broken" in info.value.message
    report, error = _report(world)
    row = _row(report, rv.POINTER_CHAIN)
    assert not row.ok and row.code == "pointer_invalid"
    assert error is not None and error.code == "pointer_invalid"


def test_checks_missing_past_timeout_fails_and_rolls_back_by_policy(
    prefect_api: str, world: World
) -> None:
    from flows.reverify import reverify

    world.publish(1)
    world.publish(2)
    _activate(world, 1)
    # A crash right after the switch: release 2 live, its checks never recorded.
    plan = plan_activation(world.ctx, world.channel, release_id=2)
    staging.stage_release(world.ctx, plan.release)
    record = switch_pointer(world.ctx, plan, world.who("crashed before checks"))
    assert records.read_checks_at(world.ctx, world.channel, record.sequence) is None

    pending = _row(_report(world, checks_timeout_s=3600)[0], rv.CHECKS_RECORD)
    assert pending.ok and "pending" in pending.detail
    late, error = _report(world, checks_timeout_s=0)
    row = _row(late, rv.CHECKS_RECORD)
    assert not row.ok and "checks missing past timeout: treated as failed" in row.detail
    assert error is not None and error.code == "check_failed" and error.exit_status == 1

    with pytest.raises(CheckFailed, match="release 1 is live again"):
        reverify(_request(world, checks_timeout_s=0, rollback_on_failure=[world.channel]))
    live = world.pointer().record
    assert (live.kind, live.active.release_id, live.sequence) == ("rollback", 1, 3)
    assert records.read_checks_at(world.ctx, world.channel, 3).result == "passed"


def test_channel_policy_in_trust_file_decides_reverify_rollback(
    prefect_api: str, world: World
) -> None:
    from flows.reverify import reverify

    world.publish(1)
    world.publish(2)
    _activate(world, 1)
    plan = plan_activation(world.ctx, world.channel, release_id=2)
    staging.stage_release(world.ctx, plan.release)
    switch_pointer(world.ctx, plan, world.who("crashed before checks"))
    # Without a policy: an alert and a failed run, nothing rolled back (exit 1, not 5).
    with pytest.raises(ChecksNotPassed) as info:
        reverify(_request(world, checks_timeout_s=0))
    assert info.value.code == "check_failed" and info.value.exit_status == 1
    assert world.pointer().record.active.release_id == 2
    # The channel's trust entry asks for rollback: the same failure now rolls back.
    doc = world.trust_doc()
    doc["channels"]["*"]["reverify_rollback"] = True
    world.write_trust(doc)
    with pytest.raises(CheckFailed, match="release 1 is live again"):
        reverify(_request(world, checks_timeout_s=0))
    assert world.pointer().record.active.release_id == 1


def test_expired_validator_key_fails_with_key_expired(world: World) -> None:
    world.publish(1)
    _activate(world, 1)
    assert _row(_report(world)[0], rv.EXPIRY).ok
    now = world.ctx.now()
    doc = world.trust_doc()
    for key in doc["channels"]["*"]["keys"]:
        if "validator" in key["roles"]:
            key["not_before"] = (now - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
            key["not_after"] = (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.write_trust(doc)
    report, error = _report(world)
    expiry = _row(report, rv.EXPIRY)
    assert not expiry.ok and expiry.code == "key_expired" and "dev-validator" in expiry.detail
    verified = _row(report, rv.LIVE_RELEASE)
    assert not verified.ok and verified.code == "key_expired"
    assert error is not None and error.code == "key_expired"


def test_expiry_within_seven_days_is_a_warning(world: World) -> None:
    world.publish(1)
    _activate(world, 1)
    now = world.ctx.now()
    doc = world.trust_doc()
    for key in doc["channels"]["*"]["keys"]:
        if "publisher" in key["roles"]:
            key["not_after"] = (now + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.write_trust(doc)
    row = _row(_report(world)[0], rv.EXPIRY)
    assert row.ok and "warning: key dev-publisher" in row.detail


def test_list_channels_finds_every_indexed_channel(world: World) -> None:
    others = [f"{world.channel}-b", "beta/prod/eu-west-1"]
    world.publish(1)
    for channel in others:
        world.publish(1, channel=channel)
    world.store.put_bytes("channels/not-a-channel/index.json", b"{}")
    assert list_channels(world.ctx) == sorted([world.channel, *others])
    # A channel with an index but nothing live passes with one row.
    report, error = _report(world, channel=others[1])
    assert error is None and report.ok and [r.name for r in report.rows] == [rv.POINTER_CHAIN]
