"""`kristalctl publish` against real SeaweedFS: what it writes reads back and verifies object by
object with nothing but the trust file, in the formats of DESIGN §2-§5; bad input and bad release
ids are refused before the channel index changes; index changes race safely (If-Match).
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from world import World

from kristal.channel.governance import authorize, revoke, set_floor
from kristal.channel.index import load_verified_index, read_index_bytes
from kristal.errors import KristalError
from kristal.formats import layout
from kristal.formats.artifacts import RuntimePackManifest
from kristal.formats.canonical import canonical_bytes, parse_json, sha256_hex
from kristal.formats.channel_docs import ChannelIndex
from kristal.formats.identity import DocKind, verify_identity
from kristal.formats.models import (
    BLOBS_EXT,
    EXPECTATIONS_EXT,
    GENERATION_EXT,
    QUERY_CONTRACT,
    SQLITE_PROFILE,
    parse_model,
)
from kristal.formats.time import parse_duration
from kristal.trust.signing import require_signatures
from kristal.verify.fetch import verify_release

UPSTREAM_PACK_REQUIRED = {
    "schema_version", "artifact_type", "runtime_pack_id", "runtime_pack_version", "created_at",
    "source_exchange_ref", "source_artifact_status", "compiler", "build", "policies",
    "reader_policy_refs", "query_contract_ref", "files", "integrity",
}


# --- helpers: read back and verify, independently of kristal.verify ----------------------------
def _get(world: World, key: str) -> bytes:
    return world.store.get_bytes(key, max_bytes=1 << 26)[0]


def _doc(world: World, key: str) -> dict[str, Any]:
    doc = parse_json(_get(world, key))
    assert isinstance(doc, dict)
    return doc


def _index(world: World, channel: str | None = None) -> ChannelIndex:
    channel = channel or world.channel
    raw = read_index_bytes(world.store, channel)
    assert raw is not None, "no channel index"
    return load_verified_index(raw[0], channel, world.ctx.trust(channel), now=world.ctx.now())


def _signed(world: World, doc: dict[str, Any], kind: DocKind, role: str) -> str:
    recomputed = verify_identity(doc, kind)
    signed = require_signatures(doc, kind, world.ctx.trust(world.channel), role,
                                now=world.ctx.now(), what=str(kind))
    assert signed == recomputed
    return recomputed


def _check_inventory(world: World, entries: list[dict[str, Any]], key_of: Any) -> None:
    assert entries, "empty inventory"
    for entry in entries:
        digest, size = world.store.stream_sha256(key_of(entry["path"]),
                                                 expected_size=entry["size_bytes"])
        assert (digest, size) == (entry["sha256"], entry["size_bytes"]), entry["path"]


def _lines(data: bytes) -> list[bytes]:
    assert data.endswith(b"\n")
    return [line + b"\n" for line in data[:-1].split(b"\n")]


def _assert_jcs_sorted(data: bytes, id_field: str) -> list[dict[str, str]]:
    rows = []
    keys = []
    for line in _lines(data):
        row = json.loads(line)
        assert canonical_bytes(row) + b"\n" == line, f"not JCS: {line!r}"
        rows.append(row)
        keys.append(tuple(row[f].encode() for f in ("subject", "predicate", "object", id_field)))
    assert keys == sorted(keys) and len(set(keys)) == len(keys), "not strictly sorted by bytes"
    return rows


def _verify_published(world: World, release_id: int) -> dict[str, Any]:
    """Every object of a release, fetched and checked on its own with the trust file only."""
    index = _index(world)
    entry = index.release(release_id)
    assert entry is not None
    exchange = _doc(world, layout.exchange_manifest(entry.exchange_id))
    assert _signed(world, exchange, DocKind.EXCHANGE, "publisher") == entry.exchange_id
    blobs = exchange["extensions"][BLOBS_EXT]
    if entry.federation_id is None:
        _check_inventory(world, blobs,
                         lambda p: layout.exchange_blob(entry.exchange_id, p))
    exchange_sha = sha256_hex(_get(world, layout.exchange_manifest(entry.exchange_id)))
    packs = []
    for pack_id in entry.runtime_pack_ids:
        pack = _doc(world, layout.pack_manifest(pack_id))
        assert _signed(world, pack, DocKind.RUNTIME_PACK, "publisher") == pack_id
        parse_model(RuntimePackManifest, pack, what="pack")
        assert pack["source_exchange_ref"]["exchange_id"] == entry.exchange_id
        assert pack["source_exchange_ref"]["exchange_manifest_hash"] == "sha256:" + exchange_sha
        _check_inventory(world, pack["files"],
                         lambda p, pid=pack_id: layout.pack_file(pid, p))
        packs.append(pack)
    targets = {entry.exchange_id, *entry.runtime_pack_ids}
    if entry.federation_id:
        targets.add(entry.federation_id)
    profiles = []
    for report_id in entry.validation_report_ids:
        report = _doc(world, layout.validation_report(report_id))
        assert _signed(world, report, DocKind.VALIDATION_REPORT, "validator") == report_id
        assert set(report["target_artifact_ids"]) == targets
        assert len(report["target_artifact_ids"]) == len(targets)
        assert report["result"] == "passed", report["findings"]
        profiles.append(report["profile"])
    required = world.ctx.trust(world.channel).required_profiles
    assert sorted(profiles) == sorted(required)
    return {"index": index, "entry": entry, "exchange": exchange, "packs": packs}


def _triples(world: World, pack_id: str) -> bytes:
    return _get(world, layout.pack_file(pack_id, "data/triples.jsonl"))


# --- what a publish writes ---------------------------------------------------------------------
def test_published_release_verifies_object_by_object_with_the_trust_file(world: World) -> None:
    result = world.publish(1, generation=4)
    got = _verify_published(world, 1)
    entry, exchange, pack = got["entry"], got["exchange"], got["packs"][0]
    assert (entry.exchange_id, entry.runtime_pack_ids) == (result.exchange_id,
                                                           result.runtime_pack_ids)
    assert got["index"].index_version == result.index_version == 1
    # Generation is signed into every part and bound by the index entry.
    assert entry.generation == exchange["extensions"][GENERATION_EXT] == 4
    assert pack["extensions"][GENERATION_EXT] == 4
    assert pack["profiles"] == [SQLITE_PROFILE]
    assert pack["query_contract_ref"]["contract_id"] == QUERY_CONTRACT
    triples_entry = pack["files"][0]
    assert (triples_entry["path"], triples_entry["role"], triples_entry["mime_type"]) == (
        "data/triples.jsonl", "other", "application/x-ndjson")
    assert exchange["content_hash"]["value"] == entry.exchange_id.removeprefix("sha256:")


def test_assertions_blob_is_jcs_lines_sorted_by_subject_predicate_assertion_id(
        world: World) -> None:
    result = world.publish(1, rows=90)
    exchange = _doc(world, layout.exchange_manifest(result.exchange_id))
    (blob,) = exchange["extensions"][BLOBS_EXT]
    rows = _assert_jcs_sorted(_get(world, layout.exchange_blob(result.exchange_id, blob["path"])),
                              "assertion_id")
    assert len(rows) == 90
    assert all(r["assertion_status"] == "sourced" and r["certainty_level"] == "high"
               for r in rows)


def test_triples_file_is_jcs_lines_sorted_and_maps_one_to_one_to_assertions(
        world: World) -> None:
    result = world.publish(1, rows=90)
    triples = _assert_jcs_sorted(_triples(world, result.runtime_pack_ids[0]), "statement_id")
    exchange = _doc(world, layout.exchange_manifest(result.exchange_id))
    blob = exchange["extensions"][BLOBS_EXT][0]
    assertions = [json.loads(x) for x in
                  _lines(_get(world, layout.exchange_blob(result.exchange_id, blob["path"])))]
    assert [(t["statement_id"], t["subject"], t["predicate"], t["object"]) for t in triples] == [
        (a["assertion_id"], a["subject"], a["predicate"], a["object"]) for a in assertions]
    assert all(set(t) == {"statement_id", "subject", "predicate", "object"} for t in triples)


def test_unicode_data_is_sorted_by_utf8_bytes_not_code_units(world: World) -> None:
    # U+FF21 (3 UTF-8 bytes) sorts after U+1F600 in UTF-16 code units but before it in UTF-8.
    data = world.home / "unicode.jsonl"
    rows = [("s1", "\U0001F600"), ("s2", "\uFF21"), ("s3", "z"), ("s4", "\u00e9")]
    data.write_text("".join(json.dumps({"statement_id": i, "subject": s, "predicate": "p",
                                        "object": "o"}) + "\n" for i, s in rows))
    result = world.publish(1, data=data)
    triples = _assert_jcs_sorted(_triples(world, result.runtime_pack_ids[0]), "statement_id")
    assert [t["subject"] for t in triples] == sorted((s for _, s in rows),
                                                     key=lambda s: s.encode())


def test_pack_follows_the_upstream_v5_model_with_14_required_fields(world: World) -> None:
    result = world.publish(1)
    pack = _doc(world, layout.pack_manifest(result.runtime_pack_ids[0]))
    required = {n for n, f in RuntimePackManifest.model_fields.items() if f.is_required()}
    assert required == UPSTREAM_PACK_REQUIRED and len(required) == 14
    assert set(pack) >= UPSTREAM_PACK_REQUIRED
    for name in sorted(UPSTREAM_PACK_REQUIRED):
        broken = {k: v for k, v in pack.items() if k != name}
        with pytest.raises(KristalError) as info:
            parse_model(RuntimePackManifest, broken, what="pack")
        assert info.value.code == "manifest_schema_invalid", name


def test_pack_with_unknown_top_level_field_is_manifest_schema_invalid(world: World) -> None:
    result = world.publish(1)
    pack = _doc(world, layout.pack_manifest(result.runtime_pack_ids[0]))
    with pytest.raises(KristalError) as info:
        parse_model(RuntimePackManifest, {**pack, "surprise": 1}, what="pack")
    assert info.value.code == "manifest_schema_invalid"
    assert "surprise" in info.value.message


def test_expectations_are_derived_without_an_expect_file(world: World) -> None:
    result = world.publish(1, rows=60)
    pack_id = result.runtime_pack_ids[0]
    pack = _doc(world, layout.pack_manifest(pack_id))
    expect = pack["extensions"][EXPECTATIONS_EXT]
    triples = [json.loads(x) for x in _lines(_triples(world, pack_id))]
    assert expect["row_count"] == len(triples) == 60
    assert (expect["latency_p95_ms"], expect["max_rss_mb"]) == (50, 512)
    # Three subject lookups (first, middle, last row in canonical order), counts and digests.
    subjects = [triples[p - 1]["subject"] for p in (1, 30, 60)]
    assert len(set(subjects)) == 3
    assert [q["pattern"] for q in expect["smoke_queries"]] == [
        {"s": s, "p": None, "o": None} for s in subjects]
    for query, subject in zip(expect["smoke_queries"], subjects, strict=True):
        rows = [t for t in triples if t["subject"] == subject]
        assert query["expect_count"] == len(rows)
        assert query["expect_sha256"] == hashlib.sha256(canonical_bytes(rows)).hexdigest()


def test_expectations_from_the_expect_file_are_signed_verbatim(world: World) -> None:
    given = {"row_count": 12345, "smoke_queries": [
        {"pattern": {"s": "entity:001", "p": "relation:1", "o": None}, "expect_count": 777,
         "expect_sha256": "ab" * 32},
        {"pattern": {"s": None, "p": None, "o": "nothing"}, "expect_count": 0,
         "expect_sha256": None}],
        "latency_p95_ms": 7.5, "max_rss_mb": 99}
    result = world.publish(1, expect=given)
    pack = _doc(world, layout.pack_manifest(result.runtime_pack_ids[0]))
    assert pack["extensions"][EXPECTATIONS_EXT] == given
    # The publisher signs what it is given; it is the check that fails later.
    _verify_published(world, 1)


def test_three_shards_publish_a_federation_root_that_verifies(world: World) -> None:
    result = world.publish(1, rows=120, shards=3, generation=2)
    assert result.federation_id is not None
    release = verify_release(world.ctx, world.channel, release_id=1)
    assert release.federation is not None and len(release.shard_exchanges) == 3
    assert release.entry.federation_id == result.federation_id
    _verify_published(world, 1)
    root = _doc(world, layout.federation_manifest(result.federation_id))
    assert _signed(world, root, DocKind.FEDERATION, "publisher") == result.federation_id
    assert root["extensions"][GENERATION_EXT] == 2
    union = []
    for ref in root["shards"]:
        shard = _doc(world, layout.exchange_manifest(ref["shard_manifest_hash"]))
        assert _signed(world, shard, DocKind.EXCHANGE, "publisher") == ref["shard_manifest_hash"]
        assert shard["extensions"][GENERATION_EXT] == 2
        blobs = shard["extensions"][BLOBS_EXT]
        _check_inventory(world, blobs,
                         lambda p, sid=ref["shard_manifest_hash"]: layout.exchange_blob(sid, p))
        shard_rows = _assert_jcs_sorted(
            _get(world, layout.exchange_blob(ref["shard_manifest_hash"], blobs[0]["path"])),
            "assertion_id")
        assert shard_rows, "an empty shard"
        union += [(a["assertion_id"], a["subject"], a["predicate"], a["object"])
                  for a in shard_rows]
    triples = _assert_jcs_sorted(_triples(world, result.runtime_pack_ids[0]), "statement_id")
    assert len(union) == len(set(union)) == 120
    assert sorted(union) == sorted((t["statement_id"], t["subject"], t["predicate"], t["object"])
                                   for t in triples)


# --- refusals ----------------------------------------------------------------------------------
def _publish_refused(world: World, code: str, release_id: int, **kw: Any) -> KristalError:
    before = read_index_bytes(world.store, world.channel)
    with pytest.raises(KristalError) as info:
        world.publish(release_id, **kw)
    assert info.value.code == code, info.value.line()
    assert read_index_bytes(world.store, world.channel) == before, "the index changed"
    return info.value


def test_republishing_an_existing_release_id_is_substitution_blocked(world: World) -> None:
    world.publish(1)
    world.publish(2)
    _publish_refused(world, "release_id_substitution_blocked", 2, rows=61)


def test_publishing_a_lower_release_id_is_downgrade_blocked(world: World) -> None:
    world.publish(5)
    _publish_refused(world, "release_id_downgrade_blocked", 3)


def _row(sid: str = "s", subject: str = "a", predicate: str = "p", obj: str = "o") -> str:
    return json.dumps({"statement_id": sid, "subject": subject, "predicate": predicate,
                       "object": obj}) + "\n"


GOOD = _row("s1", "a") + _row("s2", "b")
BAD_LINES = {
    "missing_field": (GOOD + '{"statement_id": "s3", "subject": "c", "predicate": "p"}\n',
                      "line 3"),
    "empty_string": (GOOD + _row("s3", "", "p", "o"), "line 3"),
    "non_string": (GOOD + '{"statement_id": "s3", "subject": 1, "predicate": "p", "object": "o"}\n',
                   "line 3"),
    "non_utf8": (GOOD.encode() + b'{"statement_id": "s3", "subject": "\xff", "predicate": "p",'
                 b' "object": "o"}\n', "line 3"),
    "not_json": (GOOD + "{not json\n", "line 3"),
    "duplicate_key": (GOOD + '{"statement_id": "s3", "statement_id": "s4", "subject": "c", '
                      '"predicate": "p", "object": "o"}\n', "line 3"),
    "top_level_array": (GOOD + '["s3", "c", "p", "o"]\n', "line 3"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_data_line_is_manifest_schema_invalid_with_its_line_number(
        world: World, case: str) -> None:
    text, where = BAD_LINES[case]
    data = world.home / f"bad-{case}.jsonl"
    world.home.mkdir(parents=True, exist_ok=True)
    data.write_bytes(text if isinstance(text, bytes) else text.encode())
    error = _publish_refused(world, "manifest_schema_invalid", 1, data=data)
    assert where in error.message, error.message
    assert list(world.store.list_keys("")) == [], "a refused publish wrote objects"


@pytest.mark.parametrize("layout_name, text, lines", [
    # Same subject and predicate: the input's line numbers of both copies.
    ("same_subject", _row("s1", "a") + _row("s2", "b") + _row("s1", "a", obj="o2"), ("3", "1")),
    # Different subjects, input not sorted: the input's lines, not the sorted file's.
    ("unsorted", _row("x9", "z") + _row("s1", "c") + _row("s2", "b") + _row("s1", "a"),
     ("4", "2")),
], ids=["same_subject", "unsorted"])
def test_duplicate_statement_id_names_its_input_line_numbers(
        world: World, layout_name: str, text: str, lines: tuple[str, str]) -> None:
    data = world.home / f"dup-{layout_name}.jsonl"
    world.home.mkdir(parents=True, exist_ok=True)
    data.write_text(text)
    error = _publish_refused(world, "manifest_schema_invalid", 1, data=data)
    assert "duplicate" in error.message or "repeated" in error.message
    assert f"line {lines[0]}" in error.message and lines[1] in error.message, error.message
    assert list(world.store.list_keys("")) == []


BAD_CHANNELS = [
    "Acme/test/eu", "acme/test", "acme/test/eu/x", "acme/-test/eu", "acme/te_st/eu",
    "acme/test/" + "e" * 64, "acme//eu", "../test/eu", "acme/test/eu\n", "acme/test/\u0661",
]


def test_channel_id_failing_its_pattern_is_path_invalid(world: World) -> None:
    for channel in BAD_CHANNELS:
        with pytest.raises(KristalError) as info:
            world.publish(1, channel=channel)
        assert info.value.code == "path_invalid", channel
    assert list(world.store.list_keys("")) == []


# --- index changes race safely -----------------------------------------------------------------
class _GatedStore:
    """Delegates to the real store; holds this thread's index write at a gate."""

    def __init__(self, store: Any, before_write: Any) -> None:
        self._store = store
        self._before_write = before_write
        self.index_writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _gate(self, key: str) -> None:
        if key.endswith("/index.json"):
            self.index_writes += 1
            if self.index_writes == 1:
                self._before_write()

    def put_if_absent(self, key: str, data: bytes) -> Any:
        self._gate(key)
        return self._store.put_if_absent(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> Any:
        self._gate(key)
        return self._store.put_if_match(key, data, etag)


def _race(world: World, first: int, second: int) -> dict[int, Any]:
    """Both publishers read the (absent) index; `first` writes it, then `second` writes."""
    second_read = threading.Event()
    first_done = threading.Event()

    def first_gate() -> None:
        assert second_read.wait(60)

    def second_gate() -> None:
        second_read.set()
        assert first_done.wait(60)

    stores = {first: _GatedStore(world.store, first_gate),
              second: _GatedStore(world.store, second_gate)}
    outcomes: dict[int, Any] = {}

    def run(release_id: int) -> None:
        from kristal.publish.publisher import publish

        try:
            outcomes[release_id] = publish(
                stores[release_id], world.ctx.trust(world.channel), world.keys,
                data=world.data(release_id), channel_id=world.channel, release_id=release_id,
                generation=1, now=world.ctx.now)
        except BaseException as exc:
            outcomes[release_id] = exc
        finally:
            if release_id == first:
                first_done.set()

    threads = [threading.Thread(target=run, args=(r,)) for r in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return outcomes | {"writes": {r: s.index_writes for r, s in stores.items()}}


def test_racing_publishers_both_land_via_if_match_retry(world: World) -> None:
    outcomes = _race(world, first=1, second=2)
    assert not isinstance(outcomes[1], BaseException), outcomes[1]
    assert not isinstance(outcomes[2], BaseException), outcomes[2]
    assert outcomes["writes"][2] >= 2, "the losing writer did not retry"
    index = _index(world)
    assert sorted(r.release_id for r in index.releases) == [1, 2]
    assert index.index_version == 2
    _verify_published(world, 1)
    _verify_published(world, 2)


def test_racing_lower_release_id_that_loses_is_downgrade_blocked(world: World) -> None:
    outcomes = _race(world, first=2, second=1)
    assert not isinstance(outcomes[2], BaseException), outcomes[2]
    assert isinstance(outcomes[1], KristalError)
    assert outcomes[1].code == "release_id_downgrade_blocked"
    index = _index(world)
    assert [r.release_id for r in index.releases] == [2] and index.index_version == 1


# --- governance changes of the index -----------------------------------------------------------
def _raw_index_doc(world: World) -> dict[str, Any]:
    return _doc(world, layout.channel_index(world.channel))


def test_authorize_revoke_and_floor_each_bump_index_version_and_re_sign(world: World) -> None:
    world.publish(1)
    world.publish(2)
    assert _index(world).index_version == 2
    auth = authorize(world.ctx, world.keys.authority, world.channel, 1, "bad release 2", "7d")
    index = _index(world)
    assert index.index_version == 3
    assert [a["authorization_id"] for a in index.rollback_authorizations] == [
        auth["authorization_id"]]
    assert _signed(world, auth, DocKind.ROLLBACK_AUTHORIZATION, "channel-authority") == (
        auth["authorization_id"])
    assert auth["target_release_id"] == 1
    assert auth["target_runtime_pack_ids"] == world.published[1].runtime_pack_ids
    from datetime import datetime

    issued = datetime.fromisoformat(auth["issued_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(auth["expires_at"].replace("Z", "+00:00"))
    assert expires - issued == timedelta(days=7)

    revoked = revoke(world.ctx, world.keys.authority, world.channel, 2, "bad-data")
    assert revoked.index_version == _index(world).index_version == 4
    assert [(r.target.release_id, r.reason_code) for r in _index(world).revoked] == [
        (2, "bad-data")]

    floored = set_floor(world.ctx, world.keys.authority, world.channel, 2)
    index = _index(world)
    assert floored.index_version == index.index_version == 5
    assert index.minimum_allowed_release_id == 2
    # Earlier changes survive later ones; the stored index is signed by the channel authority.
    assert len(index.rollback_authorizations) == 1 and len(index.revoked) == 1
    assert [r.release_id for r in index.releases] == [1, 2]
    doc = _raw_index_doc(world)
    assert _signed(world, doc, DocKind.CHANNEL_INDEX, "channel-authority") == doc["index_id"]


def test_governance_change_of_an_unpublished_release_changes_nothing(world: World) -> None:
    world.publish(1)
    before = read_index_bytes(world.store, world.channel)
    for call in (lambda: authorize(world.ctx, world.keys.authority, world.channel, 9, "r", "1d"),
                 lambda: revoke(world.ctx, world.keys.authority, world.channel, 9, "r")):
        with pytest.raises(KristalError) as info:
            call()
        assert info.value.code == "release_unknown"
    assert read_index_bytes(world.store, world.channel) == before


@pytest.mark.parametrize("text, expected", [
    ("30m", timedelta(minutes=30)), ("24h", timedelta(hours=24)), ("7d", timedelta(days=7)),
    ("P7D", timedelta(days=7)), ("PT12H", timedelta(hours=12)),
    ("P1DT2H30M", timedelta(days=1, hours=2, minutes=30)),
])
def test_authorization_expiry_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [
    "", "7", "7w", "-1d", "0d", "1.5h", "P", "PT", "P1Y", "7 days", "d7", "400d", "P7d", "PT0S",
    "\u0667d",
])
def test_bad_authorization_expiry_is_usage_invalid(text: str) -> None:
    with pytest.raises(KristalError) as info:
        parse_duration(text)
    assert info.value.code == "usage_invalid"


def test_authorize_with_bad_expiry_leaves_the_index_alone(world: World) -> None:
    world.publish(1)
    before = read_index_bytes(world.store, world.channel)
    with pytest.raises(KristalError) as info:
        authorize(world.ctx, world.keys.authority, world.channel, 1, "r", "forever")
    assert info.value.code == "usage_invalid"
    assert read_index_bytes(world.store, world.channel) == before


def test_written_data_file_is_unchanged_input(world: World) -> None:
    """Publishing never rewrites the operator's data file (it sorts a copy)."""
    data = world.data(1)
    before = data.read_bytes()
    world.publish(1, data=data)
    assert data.read_bytes() == before


def test_republishing_the_same_content_keeps_earlier_releases_verifiable(world: World) -> None:
    """Content-addressed manifests are write-once: release 2 of identical data adopts release 1's
    signed manifests instead of overwriting them (which would break release 1's pack binding)."""
    from kristal.verify.fetch import verify_release

    data = world.data(1)
    first = world.publish(1, data=data)
    exchange_key = layout.exchange_manifest(first.exchange_id)
    before = world.store.get_bytes(exchange_key, max_bytes=1 << 24)[0]
    second = world.publish(2, data=data)
    assert second.exchange_id == first.exchange_id
    assert second.runtime_pack_ids == first.runtime_pack_ids
    assert world.store.get_bytes(exchange_key, max_bytes=1 << 24)[0] == before
    for release_id in (1, 2):
        assert verify_release(world.ctx, world.channel, release_id=release_id).entry.release_id \
            == release_id


@pytest.mark.parametrize("shards", [0, 3])
def test_tiny_sort_runs_publish_the_same_release_and_still_refuse_repeats(
        world: World, monkeypatch: pytest.MonkeyPatch, shards: int) -> None:
    """KRISTAL_PUBLISH_RUN_ROWS=3 sorts the input in many runs on disk: same content IDs (so the
    same bytes, hashes and expectations) as one run in memory, and a repeat is still refused."""
    data = world.data(1, rows=200)
    first = world.publish(1, data=data, shards=shards)
    monkeypatch.setenv("KRISTAL_PUBLISH_RUN_ROWS", "3")
    second = world.publish(2, data=data, shards=shards)
    assert (second.exchange_id, second.runtime_pack_ids, second.federation_id) == (
        first.exchange_id, first.runtime_pack_ids, first.federation_id)
    assert second.failed_profiles == [] and second.row_count == 200
    text = _row("s1", "a") + _row("s2", "b") + _row("s3", "c") + _row("s1", "d")
    dup = world.home / f"dup-tiny-{shards}.jsonl"
    dup.write_text(text)
    error = _publish_refused(world, "manifest_schema_invalid", 3, data=dup, shards=shards)
    assert "line 4: duplicate statement_id 's1' (also on line 1)" in error.message, error.message
