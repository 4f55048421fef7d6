"""Hostile documents in the bucket or on the command line: each is refused with its code, by the
`activate` flow, before anything is written (the channel's objects and its index stay as they
were), plus property tests of the strict JSON parser, the canonical form and the payload-path
rule.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from world import World

from kristal.channel import records
from kristal.channel.index import read_index_bytes
from kristal.errors import KristalError, ManifestSchemaInvalid, PathInvalid
from kristal.formats import layout
from kristal.formats.artifacts import RuntimePackManifest
from kristal.formats.canonical import canonical_bytes, canonical_sha256, parse_json
from kristal.formats.identity import DocKind, check_id
from kristal.formats.models import parse_model, validate_relative_path
from kristal.trust.signing import require_signatures, sign_document

MiB = 1024 * 1024


def _index_raw(world: World) -> bytes | None:
    raw = read_index_bytes(world.store, world.channel)
    return raw[0] if raw else None


def _refused(world: World, release_id: int, codes: str | tuple[str, ...]) -> KristalError:
    """Activation is refused with `codes`; no channel object and not the index changed."""
    codes = (codes,) if isinstance(codes, str) else codes
    before, index_before = world.snapshot(), _index_raw(world)
    with pytest.raises(KristalError) as info:
        world.activate(release_id)
    assert info.value.code in codes, info.value.line()
    assert world.snapshot() == before, "a refused activation changed the channel"
    assert _index_raw(world) == index_before, "a refused activation changed the index"
    return info.value


def _resign_index_raw(world: World, mutate: Any) -> None:
    """Write a channel index validly signed by the channel authority, bypassing every model."""
    key = layout.channel_index(world.channel)
    doc = world.read_json(key)
    for name in ("index_id", "signatures"):
        doc.pop(name)
    doc["index_version"] += 1
    mutate(doc)
    world.write_json(key, sign_document(doc, DocKind.CHANNEL_INDEX, world.keys.authority,
                                        now=world.ctx.now()))


@pytest.fixture
def published(world: World) -> World:
    world.publish(1)
    return world


# --- size, duplicates, numbers, nesting, encoding, shape ----------------------------------------
def test_oversize_manifest_in_the_bucket_is_refused_without_downloading_it(
        published: World) -> None:
    world = published
    key = world.manifest_key(1, "pack")
    world.store.put_bytes(key, b"{" + b" " * (64 * MiB) + b"}")
    started = time.monotonic()
    with pytest.raises(ManifestSchemaInvalid):
        world.store.get_bytes(key, max_bytes=16 * MiB)
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    error = _refused(world, 1, "manifest_schema_invalid")
    assert "16777216" in error.message or "allowed" in error.message, error.message
    assert time.monotonic() - started < 10.0


HOSTILE_JSON: dict[str, bytes] = {
    "duplicate_keys": b'{"schema_version": "5.0", "schema_version": "5.0"}',
    "nan": b'{"a": NaN}',
    "infinity": b'{"a": Infinity}',
    "negative_infinity": b'{"a": -Infinity}',
    "float_overflow": b'{"a": 1e400}',
    "huge_integer": b'{"a": ' + str(10**30).encode() + b"}",
    "integer_beyond_2_53": b'{"a": 9007199254740993}',
    "deep_nesting": b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
    "deep_object_nesting": b'{"a": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b"}",
    "non_utf8": b'{"a": "\xff\xfe"}',
    "utf16": '{"a": 1}'.encode("utf-16"),
    "top_level_array": b"[]",
    "top_level_string": b'"sha256:00"',
    "empty": b"",
    "trailing_garbage": b'{"a": 1} {"b": 2}',
}


@pytest.mark.parametrize("case", sorted(HOSTILE_JSON))
def test_hostile_json_is_refused_by_the_strict_parser(case: str) -> None:
    data = HOSTILE_JSON[case]
    if case in ("top_level_array", "top_level_string"):
        assert not isinstance(parse_json(data), dict)  # valid JSON; the caller refuses the shape
        return
    with pytest.raises(ManifestSchemaInvalid):
        parse_json(data)


def test_hostile_json_manifests_in_the_bucket_are_refused_before_anything_is_written(
        published: World) -> None:
    world = published
    for part in ("pack", "exchange"):
        key = world.manifest_key(1, part)
        original = world.store.get_bytes(key, max_bytes=16 * MiB)[0]
        for case, data in sorted(HOSTILE_JSON.items()):
            world.store.put_bytes(key, data)
            try:
                _refused(world, 1, "manifest_schema_invalid")
            except AssertionError as exc:
                raise AssertionError(f"{part} manifest {case}: {exc}") from None
        world.store.put_bytes(key, original)


def test_hostile_index_document_is_refused(published: World) -> None:
    world = published
    key = layout.channel_index(world.channel)
    original = world.store.get_bytes(key, max_bytes=16 * MiB)[0]
    for case, data in sorted(HOSTILE_JSON.items()):
        world.store.put_bytes(key, data)
        with pytest.raises(KristalError) as info:
            world.activate(1)
        assert info.value.code == "manifest_schema_invalid", (case, info.value.line())
        assert world.snapshot() == {}
    world.store.put_bytes(key, original)


# --- IDs failing their pattern --------------------------------------------------------------------
HEX = "ab" * 32
BAD_IDS = {
    "uppercase_hex": "sha256:" + HEX.upper(),
    "short_hex": "sha256:" + HEX[:63],
    "long_hex": "sha256:" + HEX + "0",
    "trailing_newline": "sha256:" + HEX + "\n",
    "leading_space": " sha256:" + HEX,
    "arabic_indic_digits": "sha256:" + "\u0661" * 64,
    "fullwidth_digits": "sha256:" + "\uff11" * 64,
    "nul": "sha256:" + HEX[:63] + "\x00",
    "no_prefix": HEX,
    "other_alg": "sha512:" + HEX,
    "path_traversal": "sha256:../../" + HEX[:58],
}


@pytest.mark.parametrize("case", sorted(BAD_IDS))
def test_bad_id_is_path_invalid_before_any_key_is_built(case: str) -> None:
    bad = BAD_IDS[case]
    for build in (layout.exchange_manifest, layout.pack_manifest, layout.federation_manifest,
                  layout.validation_report):
        with pytest.raises(PathInvalid):
            build(bad)
    with pytest.raises(PathInvalid):
        check_id(bad)


def test_bad_id_in_a_signed_index_entry_is_manifest_schema_invalid_as_the_index_schema_refuses_it(
        published: World) -> None:
    """The index model pins every ID's pattern, so a validly signed index that carries a bad ID
    is refused as a document (manifest_schema_invalid) before any key is built from it."""
    world = published
    for case, bad in sorted(BAD_IDS.items()):
        for field in ("exchange_id", "runtime_pack_ids", "validation_report_ids"):
            def mutate(doc: dict[str, Any], field: str = field, bad: str = bad) -> None:
                entry = doc["releases"][0]
                entry[field] = bad if field == "exchange_id" else [bad]

            key = layout.channel_index(world.channel)
            original = world.store.get_bytes(key, max_bytes=16 * MiB)[0]
            _resign_index_raw(world, mutate)
            try:
                _refused(world, 1, "manifest_schema_invalid")
            except AssertionError as exc:
                raise AssertionError(f"{case} in {field}: {exc}") from None
            world.store.put_bytes(key, original)


# --- payload paths ------------------------------------------------------------------------------
BAD_PATHS = {
    "dotdot": "../../etc/passwd",
    "dotdot_inside": "data/../../x",
    "dot_segment": "data/./triples.jsonl",
    "absolute": "/etc/passwd",
    "backslash": "data\\triples.jsonl",
    "empty_segment": "a//b",
    "trailing_slash": "data/",
    "control_char": "data/tri\x01ples.jsonl",
    "newline": "data/triples.jsonl\n",
    "nul": "data/\x00",
    "c1_control": "data/\x85x",
    "drive_letter": "C:/Windows/x",
    "drive_relative": "C:x",
    "archive": "data.tar.gz",
    "zip": "data/pack.zip",
    "empty": "",
}


def _valid_pack(world: World) -> dict[str, Any]:
    return world.read_json(world.manifest_key(1, "pack"))


def test_bad_files_path_is_path_invalid_in_the_pack_model(published: World) -> None:
    pack = _valid_pack(published)
    parse_model(RuntimePackManifest, pack, what="pack")  # the valid one passes
    for case, path in sorted(BAD_PATHS.items()):
        broken = copy.deepcopy(pack)
        broken["files"][0]["path"] = path
        with pytest.raises(KristalError) as info:
            parse_model(RuntimePackManifest, broken, what="pack")
        # The upstream schema itself refuses an empty path (minLength 1); the rest is ours.
        expected = "manifest_schema_invalid" if case == "empty" else "path_invalid"
        assert info.value.code == expected, (case, info.value.line())
        with pytest.raises(PathInvalid):
            validate_relative_path(path)


@pytest.mark.parametrize("path", ["/etc/passwd", "data.tar.gz", "a//b", "C:\\x"])
def test_bad_files_path_in_a_validly_signed_pack_is_refused_end_to_end(
        published: World, path: str) -> None:
    world = published
    doc = _valid_pack(world)
    for name in ("runtime_pack_id", "signatures"):
        doc.pop(name)
    doc["files"][0]["path"] = path
    signed = sign_document(doc, DocKind.RUNTIME_PACK, world.keys.publisher, now=world.ctx.now())
    world.write_json(layout.pack_manifest(signed["runtime_pack_id"]), signed)
    world.rewrite_entry(1, runtime_pack_ids=[signed["runtime_pack_id"]])
    _refused(world, 1, "path_invalid")


def test_bad_blob_path_in_a_validly_signed_exchange_is_refused(published: World) -> None:
    world = published
    doc = world.read_json(world.manifest_key(1, "exchange"))
    for name in ("kristal_id", "signatures", "content_hash"):
        doc.pop(name)
    doc["content_hash"] = {"alg": "sha256", "value": "0" * 64}
    doc["extensions"]["kristal.activate/blobs"][0]["path"] = "../escape.jsonl"
    signed = sign_document(doc, DocKind.EXCHANGE, world.keys.publisher, now=world.ctx.now())
    world.write_json(layout.exchange_manifest(signed["kristal_id"]), signed)
    world.rewrite_entry(1, exchange_id=signed["kristal_id"])
    # The pack still names the old exchange; whichever check runs first, it must refuse.
    _refused(world, 1, ("path_invalid", "source_exchange_mismatch"))


# --- signatures ----------------------------------------------------------------------------------
def _exchange(world: World, release_id: int) -> dict[str, Any]:
    return world.read_json(world.manifest_key(release_id, "exchange"))


def _with_signature(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["signatures"][0].update(changes)
    return doc


def _require(world: World, doc: dict[str, Any]) -> None:
    require_signatures(doc, DocKind.EXCHANGE, world.ctx.trust(world.channel), "publisher",
                       now=world.ctx.now(), what="exchange")


SIGNATURE_CASES = {
    "too_short": lambda s: {"signature": base64.urlsafe_b64encode(s[:63]).decode().rstrip("=")},
    "too_long": lambda s: {"signature": base64.urlsafe_b64encode(s + b"\0").decode()},
    "empty": lambda s: {"signature": ""},
    "not_base64": lambda s: {"signature": "!!!!" + base64.urlsafe_b64encode(s).decode()[4:]},
    "alg_rsa": lambda s: {"alg": "rsa"},
    "alg_missing_case": lambda s: {"alg": "Ed25519"},
    "signature_not_a_string": lambda s: {"signature": 12},
    "hex_instead_of_base64": lambda s: {"signature": s.hex()},
}


def test_malformed_signature_is_signature_invalid(published: World) -> None:
    world = published
    doc = _exchange(world, 1)
    _require(world, doc)  # the original verifies
    raw = base64.urlsafe_b64decode(doc["signatures"][0]["signature"] + "==")
    for case, make in sorted(SIGNATURE_CASES.items()):
        with pytest.raises(KristalError) as info:
            _require(world, _with_signature(doc, **make(raw)))
        assert info.value.code == "signature_invalid", (case, info.value.line())


def test_signature_of_another_artifact_is_signature_invalid_end_to_end(world: World) -> None:
    world.publish(1)
    world.publish(2)
    one, two = _exchange(world, 1), _exchange(world, 2)
    two["signatures"] = one["signatures"]
    with pytest.raises(KristalError) as info:
        _require(world, two)
    assert info.value.code == "signature_invalid"
    world.write_json(world.manifest_key(2, "exchange"), two)
    _refused(world, 2, "signature_invalid")


def test_malformed_signature_in_the_bucket_is_refused_end_to_end(published: World) -> None:
    world = published
    doc = _with_signature(_exchange(world, 1), alg="rsa")
    world.write_json(world.manifest_key(1, "exchange"), doc)
    _refused(world, 1, "signature_invalid")


# --- the pointer and its history -----------------------------------------------------------------
def _pointer_cases(world: World) -> dict[str, bytes]:
    return {
        "wrong_types": json.dumps({"sequence": "x"}).encode(),
        "array": b"[]",
        "not_json": b"{",
        "non_utf8": b"\xff",
        "duplicate_keys": b'{"sequence": 1, "sequence": 2}',
        "empty_object": b"{}",
    }


def test_hand_written_pointer_with_a_bad_shape_is_pointer_invalid(published: World) -> None:
    world = published
    key = layout.pointer(world.channel)
    for case, data in _pointer_cases(world).items():
        world.store.put_bytes(key, data)
        with pytest.raises(KristalError) as info:
            records.read_pointer(world.ctx, world.channel)
        assert info.value.code == "pointer_invalid", (case, info.value.line())
        before = world.snapshot()
        with pytest.raises(KristalError) as info:
            world.activate(1)
        assert info.value.code == "pointer_invalid", (case, info.value.line())
        assert world.snapshot() == before


def test_oversize_pointer_is_pointer_invalid(published: World) -> None:
    world = published
    world.store.put_bytes(layout.pointer(world.channel), b'{"pad": "' + b"x" * (2 * MiB) + b'"}')
    with pytest.raises(KristalError) as info:
        records.read_pointer(world.ctx, world.channel)
    assert info.value.code == "pointer_invalid", info.value.line()


@pytest.fixture
def live(published: World) -> World:
    published.activate(1, via="plain")  # set-up
    return published


def _next_record(record: dict[str, Any], prev_sha: str) -> dict[str, Any]:
    nxt = copy.deepcopy(record)
    nxt.update(sequence=record["sequence"] + 1, activation_id=str(uuid.uuid4()),
               previous=record["active"], previous_sequence=record["sequence"],
               prev_record_sha256=prev_sha, kind="activate")
    return nxt


def _chain_breaks(world: World) -> list[int]:
    """The sequences whose prev_record_sha256 is not the JCS hash of the record before."""
    breaks = []
    previous: dict[str, Any] | None = None
    for sequence in range(1, 100):
        key = layout.history(world.channel, sequence)
        if world.store.head(key) is None:
            break
        raw = world.read_json(key)
        expected = canonical_sha256(previous) if previous is not None else None
        if raw["prev_record_sha256"] != expected:
            breaks.append(sequence)
        previous = raw
    return breaks


def test_history_written_by_activation_forms_an_intact_chain(live: World) -> None:
    world = live
    first = world.read_json(layout.history(world.channel, 1))
    assert first["prev_record_sha256"] is None
    world.write_json(layout.history(world.channel, 2), _next_record(first, canonical_sha256(first)))
    assert _chain_breaks(world) == []


def test_history_record_breaking_the_chain_is_refused(live: World) -> None:
    world = live
    first = world.read_json(layout.history(world.channel, 1))
    world.write_json(layout.history(world.channel, 2), _next_record(first, "sha256:" + "0" * 64))
    assert _chain_breaks(world) == [2]  # the test's own check sees the break
    from kristal.channel.history import history

    with pytest.raises(KristalError) as info:
        history(world.ctx, world.channel)
    assert info.value.code == "pointer_invalid"


# --- properties ----------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_parse_json_raises_only_manifest_schema_invalid_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(ManifestSchemaInvalid):
        parse_json(data)


JSON_TEXT_ALPHABET = st.sampled_from(list('{}[]",:0123456789.eE+-tfnrulasNI \\/u\x00\xff'))


@settings(max_examples=300, deadline=None)
@given(st.lists(JSON_TEXT_ALPHABET, max_size=80).map("".join))
def test_parse_json_raises_only_manifest_schema_invalid_on_json_like_text(text: str) -> None:
    with contextlib.suppress(ManifestSchemaInvalid):
        parse_json(text.encode("utf-8", "surrogatepass"))


# Doubles at or above 2**53 canonicalize to integer literals the parser refuses by design
# (they are outside the exact integer range), so the round trip is over the exact range.
json_values = st.recursive(
    st.none() | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-(2.0**52), max_value=2.0**52)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=120, deadline=None)
@given(json_values)
def test_canonical_bytes_round_trip_through_the_strict_parser(value: Any) -> None:
    try:
        once = canonical_bytes(value)
    except ManifestSchemaInvalid:
        return  # e.g. lone surrogates: no UTF-8 form, refused rather than guessed
    assert canonical_bytes(parse_json(once)) == once


path_alphabet = st.sampled_from([*"ab./\\\x00\x01\x1f\x7f\x85 -_:C", "..", "é"])


@settings(max_examples=300, deadline=None)
@given(st.lists(path_alphabet, max_size=12).map("".join))
def test_validate_relative_path_never_accepts_a_dangerous_path(path: str) -> None:
    try:
        accepted = validate_relative_path(path)
    except PathInvalid:
        return
    assert accepted == path
    segments = path.split("/")
    assert ".." not in segments and "." not in segments
    assert "\\" not in path and "" not in segments and not path.startswith("/")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in path)
    assert ".." not in path or all(s not in ("..", ".") for s in segments)
