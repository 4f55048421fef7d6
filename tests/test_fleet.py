"""Fleet activation: one build released to many channels, activated in waves (canary first)
through the real Prefect server and SeaweedFS, with one download through the cache; a failed
canary halts the fleet and vetoes the rest; the skew report; wave planning.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter

import pytest
from test_flows import BROKEN, _artifacts
from world import World

from kristal.channel import records
from kristal.errors import (
    GenerationMismatch,
    KristalError,
    PathInvalid,
    ReleaseIdSubstitutionBlocked,
    ReleaseRevoked,
    UsageInvalid,
)
from kristal.formats import layout
from kristal.operations.fleet_channel import FleetOutcome
from kristal.operations.fleet_rules import (
    plan_waves,
    publish_to_channels,
    skew_report,
    skew_summary,
)
from kristal.store.s3 import ObjectStore

A, B, C, D, E = (f"acme/fleet/{r}" for r in ("a", "b", "c", "d", "e"))


# --- wave planning (no I/O) -----------------------------------------------------------------------
def test_plan_waves_puts_the_first_channel_alone_then_waves_in_order() -> None:
    assert plan_waves([A, B, C, D, E], None, 2) == [[A], [B, C], [D, E]]
    assert plan_waves([A, B, C, D, E], None, 3) == [[A], [B, C, D], [E]]
    assert plan_waves([A], None, 5) == [[A]]


def _run(request: object) -> FleetOutcome:
    """The fleet flow as the CLI runs it; its run ends Failed exactly when the fleet did not
    do what it was asked (halted, a channel refused or rolled back), Completed otherwise."""
    from flows.fleet import run_fleet

    outcome, state = run_fleet(request)  # type: ignore[arg-type]
    should_fail = outcome.outcome != "planned" and outcome.exit_status != 0
    assert state.is_failed() == should_fail, (state, outcome.outcome, outcome.exit_status)
    assert state.is_completed() != should_fail
    if outcome.outcome == "halted":
        assert f"halted at wave {outcome.halted_at_wave}" in (state.message or "")
    return outcome


def test_plan_waves_with_named_canaries_or_none() -> None:
    assert plan_waves([A, B, C, D, E], [C, E], 2) == [[C, E], [A, B], [D]]
    assert plan_waves([A, B, C], [], 2) == [[A, B], [C]]
    assert plan_waves([A, B, C], [A, B, C], 1) == [[A, B, C]]


@pytest.mark.parametrize(
    ("channels", "canary", "size"),
    [([A, B], ["acme/fleet/zz"], 1), ([A, A], None, 1), ([A, B], None, 0), ([], None, 1),
     ([A, B], [B, B], 1)],
)
def test_plan_waves_refuses_bad_plans(channels: list[str], canary: list[str] | None,
                                      size: int) -> None:
    with pytest.raises(UsageInvalid):
        plan_waves(channels, canary, size)


def test_plan_waves_refuses_a_malformed_channel_id() -> None:
    with pytest.raises(PathInvalid):
        plan_waves([A, "not a channel"], None, 1)


# --- a fleet in one bucket --------------------------------------------------------------------
def _fleet(world: World, count: int = 5) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"acme/fleet{i}/{tag}" for i in range(count)]


def _release(world: World, channels: list[str], release_id: int, **kw: object) -> None:
    """Publish once in the first channel, then name the same artifacts in the others."""
    first = world.publish(release_id, channel=channels[0], **kw)  # type: ignore[arg-type]
    others = publish_to_channels(
        world.store, world.ctx.trust_file, world.keys, result_of_first_publish=first,
        channel_ids=channels, release_id=release_id, generation=first.generation,
        now=world.ctx.now,
    )
    assert [r.channel_id for r in others] == channels[1:]
    assert {r.exchange_id for r in others} == {first.exchange_id}


def _request(channels: list[str], release_id: int, **kw: object) -> object:
    from flows.params import FleetRequest

    return FleetRequest(channel_ids=channels, release_id=release_id, wave_size=2,
                        max_parallel=2, operator="pytest", reason=f"fleet {release_id}", **kw)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every payload GET (ObjectStore.download_to) of the test, by object key."""
    seen: list[str] = []
    lock = threading.Lock()
    original = ObjectStore.download_to

    def counting(self: ObjectStore, key: str, *args: object, **kw: object) -> None:
        with lock:
            seen.append(key)
        original(self, key, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ObjectStore, "download_to", counting)
    return seen


def test_fleet_activates_every_channel_in_waves_with_one_download(
    prefect_api: str, world: World, downloads: list[str]
) -> None:
    channels = _fleet(world)
    _release(world, channels, 1)
    result = _run(_request(channels, 1))

    assert result.outcome == "activated" and result.vetoed == []
    assert result.waves == [channels[:1], channels[1:3], channels[3:]]
    assert [(o.channel_id, o.wave, o.result) for o in result.channels] == [
        (channels[0], 1, "activated"), (channels[1], 2, "activated"),
        (channels[2], 2, "activated"), (channels[3], 3, "activated"),
        (channels[4], 3, "activated"),
    ]
    for channel in channels:
        live = records.read_pointer(world.ctx, channel).record
        assert live.active.release_id == 1 and live.sequence == 1
        assert records.read_checks_at(world.ctx, channel, 1).result == "passed"
    # The pack's checks were measured once (by the canary); the others say whose figures they use.
    canary_outcomes = records.read_checks_at(world.ctx, channels[0], 1).figures["outcomes"]
    assert "measurement" not in {o["name"] for o in canary_outcomes}
    for channel in channels[1:]:
        shared = [o for o in records.read_checks_at(world.ctx, channel, 1).figures["outcomes"]
                  if o["name"] == "measurement"]
        assert len(shared) == 1 and f"measured by {channels[0]} sequence 1" in shared[0]["measured"]
    # One download of each payload object (exchange blob + pack triples), none per channel.
    assert len(downloads) == len(set(downloads)) == 2 == result.payload_downloads
    blobs = list((world.home / "cache" / "blobs" / "sha256").iterdir())
    assert len(blobs) == 2
    assert len(list((world.home / "cache" / "indexes").glob("*.sqlite"))) == 1
    assert [(r["channel"], r["release_id"], r["sequence"], r["checks"]) for r in result.skew] == [
        (c, 1, 1, "passed") for c in channels
    ]
    markdown = _artifacts(result.artifact_keys[0])
    assert markdown and "## Wave 3" in markdown[0].data and "activated" in markdown[0].data
    table = _artifacts(result.artifact_keys[1])[0].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["channel"] for r in rows] == channels and {r["release_id"] for r in rows} == {"1"}
    progress = _artifacts(result.artifact_keys[2])[0]
    assert float(progress.data) == 100.0
    assert progress.description == "wave 3 of 3 done: 5 of 5 channels live"

    # A second run of the same fleet finds every channel live and checked: nothing changes.
    again = _run(_request(channels, 1))
    assert {o.result for o in again.channels} == {"already_live"}
    assert len(downloads) == 2


def test_failed_canary_halts_rolls_back_there_and_vetoes_the_rest(
    prefect_api: str, world: World
) -> None:
    channels = _fleet(world)
    _release(world, channels, 1)
    assert _run(_request(channels, 1)).outcome == "activated"
    _release(world, channels, 2, expect=BROKEN)
    before = {c: records.read_pointer(world.ctx, c).raw for c in channels[1:]}

    result = _run(_request(channels, 2, revoke_vetoed=True))

    assert result.outcome == "halted" and result.halted_at_wave == 1
    canary = result.channels[0]
    assert (canary.channel_id, canary.result, canary.error_code) == (
        channels[0], "rolled_back", "check_failed")
    assert result.vetoed == channels[1:]
    assert all(o.result == "vetoed" for o in result.channels[1:])
    live = records.read_pointer(world.ctx, channels[0]).record
    assert (live.kind, live.active.release_id, live.sequence) == ("auto_rollback", 1, 3)
    assert records.read_quarantine(world.ctx, channels[0], 2) is not None
    # The other channels were never touched: same pointer, release 1 live.
    assert {c: records.read_pointer(world.ctx, c).raw for c in channels[1:]} == before
    assert result.veto_revocations == {c: "revoked" for c in channels[1:]}
    assert skew_summary(result.skew) == {"1": channels}
    assert result.skew[0]["kind"] == "auto_rollback"

    # The veto holds: a vetoed channel refuses the release; a re-run halts at the canary again.
    from flows.activate import activate
    from flows.params import ActivateRequest

    with pytest.raises(ReleaseRevoked):
        activate(ActivateRequest(channel_id=channels[1], release_id=2, operator="pytest",
                                 reason="try anyway"))
    rerun = _run(_request(channels, 2))
    assert rerun.outcome == "halted" and rerun.channels[0].error_code == "release_quarantined"
    assert {c: records.read_pointer(world.ctx, c).raw for c in channels[1:]} == before
    assert "halted at wave 1" in _artifacts(rerun.artifact_keys[0])[0].data
    progress = _artifacts(rerun.artifact_keys[2])[0]  # a halted fleet is not 100 % done
    assert float(progress.data) == 0.0
    assert progress.description == "halted at wave 1: 0 of 5 channels live, 4 vetoed"


def test_skew_report_reads_pointers_and_checks(world: World) -> None:
    channels = _fleet(world, 3)
    _release(world, channels, 1)
    _release(world, channels, 2)
    world.activate(1, channel=channels[0])
    world.activate(2, channel=channels[1])
    rows = skew_report(world.ctx, channels)
    assert [(r["channel"], r["release_id"], r["generation"], r["sequence"], r["checks"])
            for r in rows] == [(channels[0], 1, 1, 1, "passed"), (channels[1], 2, 1, 1, "passed"),
                               (channels[2], None, None, None, "nothing live")]
    assert skew_summary(rows) == {"1": [channels[0]], "2": [channels[1]], "none": [channels[2]]}


def test_publish_to_channels_refuses_other_generation_and_taken_ids(world: World) -> None:
    channels = _fleet(world, 3)
    first = world.publish(1, channel=channels[0])
    with pytest.raises(GenerationMismatch):
        publish_to_channels(world.store, world.ctx.trust_file, world.keys,
                            result_of_first_publish=first, channel_ids=channels, release_id=1,
                            generation=2, now=world.ctx.now)
    world.publish(1, channel=channels[2])  # a different build already holds id 1 there
    with pytest.raises(ReleaseIdSubstitutionBlocked):
        publish_to_channels(world.store, world.ctx.trust_file, world.keys,
                            result_of_first_publish=first, channel_ids=channels, release_id=1,
                            generation=1, now=world.ctx.now)


# --- what the channels of a fleet run share ---------------------------------------------------
@pytest.fixture
def gets(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every small-object GET (ObjectStore.get_bytes) of the test, counted by key."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()
    original = ObjectStore.get_bytes

    def counting(self: ObjectStore, key: str, **kw: object) -> tuple[bytes, str]:
        with lock:
            seen[key] += 1
        return original(self, key, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ObjectStore, "get_bytes", counting)
    return seen


def test_fleet_fetches_shared_manifests_once_and_reads_every_channels_own_index(
    prefect_api: str, world: World, gets: Counter[str]
) -> None:
    channels = _fleet(world, 4)
    _release(world, channels, 1)
    gets.clear()
    assert _run(_request(channels, 1)).outcome == "activated"
    live = records.read_pointer(world.ctx, channels[0]).record
    assert gets[layout.exchange_manifest(live.active.exchange_id)] == 1
    for pack_id in live.active.runtime_pack_ids:
        assert gets[layout.pack_manifest(pack_id)] == 1
    for channel in channels:  # each verified against its own signed index, read afresh
        assert gets[layout.channel_index(channel)] >= 1
        assert records.read_checks_at(world.ctx, channel, 1).result == "passed"


def test_a_channel_whose_index_names_other_content_is_verified_and_staged_on_its_own(
    prefect_api: str, world: World, downloads: list[str]
) -> None:
    channels = _fleet(world, 3)
    _release(world, channels[:2], 1)
    other = world.publish(1, channel=channels[2], rows=61)  # same release ID, other content
    result = _run(_request(channels, 1))

    assert result.outcome == "activated"
    assert [o.downloaded for o in result.channels] == [0, 0, 2]  # the fleet staged 2 objects
    assert len(downloads) == len(set(downloads)) == 4
    assert records.read_pointer(world.ctx, channels[2]).record.active.exchange_id == \
        other.exchange_id != records.read_pointer(
            world.ctx, channels[0]).record.active.exchange_id
    # Its checks were measured on its own pack, not reused from the canary's.
    outcomes = records.read_checks_at(world.ctx, channels[2], 1).figures["outcomes"]
    assert "measurement" not in {o["name"] for o in outcomes}


def test_a_shared_document_is_still_verified_by_each_channel(world: World) -> None:
    """Nothing is trusted from the memo: other bytes under a manifest's key are refused."""
    from kristal.verify.fetch import DocumentMemo, verify_release

    channels = _fleet(world, 2)
    _release(world, channels, 1)
    _release(world, channels, 2)
    memo = DocumentMemo()
    first = verify_release(world.ctx, channels[0], release_id=1, memo=memo)
    fetched = memo.fetches  # exchange, pack and report documents
    second = verify_release(world.ctx, channels[1], release_id=1, memo=memo)
    assert first.entry.exchange_id == second.entry.exchange_id
    assert fetched >= 2 and memo.fetches == fetched  # the second channel fetched none

    key = layout.exchange_manifest(first.entry.exchange_id)
    release_2 = verify_release(world.ctx, channels[0], release_id=2)
    poisoned = DocumentMemo()
    poisoned.get(key, lambda: world.store.get_bytes(
        layout.exchange_manifest(release_2.entry.exchange_id), max_bytes=1 << 20)[0])
    with pytest.raises(KristalError) as refused:
        verify_release(world.ctx, channels[1], release_id=1, memo=poisoned)
    assert refused.value.code == "release_id_substitution_blocked"  # not the ID it names


def test_skew_report_takes_known_checks_only_for_the_live_activation(
    world: World, gets: Counter[str]
) -> None:
    channels = _fleet(world, 2)
    _release(world, channels, 1)
    done = world.activate(1, channel=channels[0])
    gets.clear()
    rows = skew_report(world.ctx, channels, {done.activation_id: "passed",
                                             "not-live-anywhere": "failed"})
    assert [r["checks"] for r in rows] == ["passed", "nothing live"]
    assert gets[layout.checks(channels[0], 1)] == 0 and gets[layout.pointer(channels[0])] == 1
    assert skew_report(world.ctx, channels[:1], {"other-activation": "failed"})[0]["checks"] \
        == "passed"
    assert gets[layout.checks(channels[0], 1)] == 1


def test_fleet_dry_run_verifies_every_channel_and_switches_nothing(
    prefect_api: str, world: World
) -> None:
    from kristal.channel.governance import revoke

    channels = _fleet(world, 4)
    _release(world, channels, 1)
    assert _run(_request(channels[:1], 1)).outcome == "activated"
    revoke(world.ctx, world.keys.authority, channels[3], 1, "bad build here")
    before = {c: records.read_pointer(world.ctx, c).raw for c in channels}

    result = _run(_request(channels, 1, dry_run=True))

    assert result.outcome == "planned" and result.halted_at_wave is None
    assert [(o.channel_id, o.result) for o in result.channels] == [
        (channels[0], "already_live"), (channels[1], "planned"), (channels[2], "planned"),
        (channels[3], "refused")]
    assert result.channels[1].message == ("would activate release 1 (live now: nothing); its "
                                          "checks pass against the staged index")
    assert result.channels[3].error_code == "release_revoked"
    assert {c: records.read_pointer(world.ctx, c).raw for c in channels} == before
    assert "dry run: nothing switched" in _artifacts(result.artifact_keys[0])[0].data


def test_a_storage_hiccup_in_one_channel_retries_only_that_channel(
    prefect_api: str, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 503s on one channel's index outlast botocore's own retries: the wave task fails
    with storage_unavailable, Prefect retries it, and only that channel runs again."""
    from conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY
    from faultproxy import Action, FaultProxy

    channels = _fleet(world, 3)
    _release(world, channels, 1)
    with FaultProxy(world.ctx.store.config.endpoint_url, access_key=TEST_ACCESS_KEY,
                    secret_key=TEST_SECRET_KEY) as proxy:
        monkeypatch.setenv("KRISTAL_S3_ENDPOINT", proxy.url)
        proxy.add_rule(Action.STATUS, method="GET", key_contains=layout.channel_index(
            channels[2]), status=503, times=3)
        result = _run(_request(channels, 1))
        index_gets = {c: len(proxy.requests("GET", layout.channel_index(c))) for c in channels}

    assert result.outcome == "activated"
    assert [o.result for o in result.channels] == ["activated"] * 3
    assert index_gets[channels[1]] == 1 and index_gets[channels[2]] == 4  # 3 refused, 1 served
    for channel in channels:
        record = records.read_pointer(world.ctx, channel).record
        assert record.sequence == 1
        assert records.read_checks_at(world.ctx, channel, 1).result == "passed"
