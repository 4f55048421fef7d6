"""Signatures, thresholds, trust-file resolution and key files, with real Ed25519 keys."""

from __future__ import annotations

import base64
import copy
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kristal.errors import (
    IdentityMismatch,
    KeyExpired,
    KeyRevoked,
    KeyUnknown,
    ManifestSchemaInvalid,
    PathInvalid,
    SignatureInvalid,
    SignatureMissing,
    TrustRootMissing,
    UsageInvalid,
)
from kristal.formats.identity import DocKind, compute_id, with_identity
from kristal.trust.keys import generate_key, load_role_key, load_signing_key, public_key_b64url
from kristal.trust.roots import ChannelTrust, TrustedKey, TrustFile, load_trust_file
from kristal.trust.signing import (
    SignatureStatus,
    SigningKey,
    b64decode_any,
    b64url_encode,
    check_signatures,
    require_signatures,
    sign_document,
)

NOW = datetime(2026, 9, 16, 12, 0, tzinfo=UTC)
EX = DocKind.EXCHANGE


def make_key(key_id: str, *roles: str) -> SigningKey:
    return SigningKey(key_id, Ed25519PrivateKey.generate(), roles or ("publisher",))


def trusted(key: SigningKey, *roles: str, **window: Any) -> TrustedKey:
    return TrustedKey(
        key_id=key.key_id,
        public_key=public_key_b64url(key.private_key),
        roles=list(roles or key.roles),
        **window,
    )


def channel(*keys: TrustedKey, revoked: tuple[str, ...] = (), **thresholds: int) -> ChannelTrust:
    return ChannelTrust(
        keys=list(keys),
        revoked_key_ids=list(revoked),
        thresholds={k.replace("_", "-"): v for k, v in thresholds.items()},
    )


def exchange(**extra: Any) -> dict[str, Any]:
    return {
        "schema_version": "5.0",
        "artifact_type": "working_exchange",
        "content_hash": {"alg": "sha256", "value": "0" * 64},
        "assertions": [{"assertion_id": "s1", "subject": "a", "predicate": "p", "object": "b"}],
        **extra,
    }


def require(doc: dict[str, Any], trust: ChannelTrust, role: str = "publisher") -> str:
    return require_signatures(doc, EX, trust, role, now=NOW, what="exchange")


def statuses(doc: dict[str, Any], trust: ChannelTrust, role: str = "publisher") -> list[str]:
    return [c.status.value for c in check_signatures(doc, EX, trust, role, now=NOW)[1]]


@pytest.fixture
def publisher() -> SigningKey:
    return make_key("pub-1", "publisher")


# --- signing -----------------------------------------------------------------------------------
def test_sign_then_require_returns_the_recomputed_id(publisher: SigningKey) -> None:
    doc = exchange()
    signed = sign_document(doc, EX, publisher, now=NOW)
    assert signed["kristal_id"] == compute_id(doc, EX)
    assert signed["content_hash"]["value"] == compute_id(doc, EX).removeprefix("sha256:")
    assert "signatures" not in doc and "kristal_id" not in doc  # input untouched
    entry = signed["signatures"][0]
    assert entry == {
        "key_id": "pub-1",
        "alg": "ed25519",
        "signature": entry["signature"],
        "created_at": "2026-09-16T12:00:00Z",
    }
    assert "=" not in entry["signature"] and len(b64decode_any(entry["signature"])) == 64
    assert require(signed, channel(trusted(publisher))) == signed["kristal_id"]


def test_signing_never_changes_the_id(publisher: SigningKey) -> None:
    once = sign_document(exchange(), EX, publisher, now=NOW)
    twice = sign_document(once, EX, make_key("pub-2"), now=NOW)
    assert once["kristal_id"] == twice["kristal_id"] == compute_id(twice, EX)
    assert len(twice["signatures"]) == 2


def test_padded_standard_base64_signature_is_accepted(publisher: SigningKey) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    raw = b64decode_any(signed["signatures"][0]["signature"])
    signed["signatures"][0]["signature"] = base64.b64encode(raw).decode()
    assert require(signed, channel(trusted(publisher))) == signed["kristal_id"]


# --- refusals ----------------------------------------------------------------------------------
def test_tampered_content_with_stale_declared_id_is_identity_mismatch(
    publisher: SigningKey,
) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    signed["assertions"][0]["object"] = "tampered"
    with pytest.raises(IdentityMismatch) as info:
        require(signed, channel(trusted(publisher)))
    assert [c.status for c in info.value.checks] == [SignatureStatus.IDENTITY_MISMATCH]


def test_tampered_content_with_refreshed_id_fails_the_signature(publisher: SigningKey) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    signed["assertions"][0]["object"] = "tampered"
    # An attacker can recompute the ID, but the signature covers the old one.
    forged = with_identity(signed, EX, content_hash=True)
    assert statuses(forged, channel(trusted(publisher))) == ["failed"]
    with pytest.raises(SignatureInvalid, match="pub-1"):
        require(forged, channel(trusted(publisher)))


def test_tampered_signature_is_signature_invalid(publisher: SigningKey) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    raw = bytearray(b64decode_any(signed["signatures"][0]["signature"]))
    raw[10] ^= 0x01
    signed["signatures"][0]["signature"] = b64url_encode(bytes(raw))
    assert statuses(signed, channel(trusted(publisher))) == ["failed"]
    with pytest.raises(SignatureInvalid, match=r"exchange sha256:[0-9a-f]{64}.*pub-1"):
        require(signed, channel(trusted(publisher)))


def test_signature_from_a_key_not_in_trust_is_key_unknown(publisher: SigningKey) -> None:
    stranger = make_key("stranger")
    signed = sign_document(exchange(), EX, stranger, now=NOW)
    assert statuses(signed, channel(trusted(publisher))) == ["missing_key"]
    with pytest.raises(KeyUnknown, match="stranger"):
        require(signed, channel(trusted(publisher)))


def test_same_key_id_with_a_different_key_is_a_failed_signature(publisher: SigningKey) -> None:
    impostor = SigningKey("pub-1", Ed25519PrivateKey.generate(), ("publisher",))
    signed = sign_document(exchange(), EX, impostor, now=NOW)
    with pytest.raises(SignatureInvalid):
        require(signed, channel(trusted(publisher)))


def test_revoked_key_is_key_revoked(publisher: SigningKey) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    trust = channel(trusted(publisher), revoked=("pub-1",))
    assert statuses(signed, trust) == ["policy_not_satisfied"]
    with pytest.raises(KeyRevoked, match="pub-1"):
        require(signed, trust)


def test_revoked_key_removed_from_keys_is_still_reported_revoked(publisher: SigningKey) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    with pytest.raises(KeyRevoked, match="pub-1"):
        require(signed, channel(trusted(make_key("other")), revoked=("pub-1",)))


@pytest.mark.parametrize(
    "window",
    [
        {"not_after": NOW - timedelta(seconds=1)},
        {"not_before": NOW + timedelta(days=1)},
    ],
    ids=["expired", "not-yet-valid"],
)
def test_key_outside_its_validity_window_is_key_expired(
    publisher: SigningKey, window: dict[str, datetime]
) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    trust = channel(trusted(publisher, **window))
    assert statuses(signed, trust) == ["expired"]
    with pytest.raises(KeyExpired, match="pub-1"):
        require(signed, trust)


def test_key_inside_its_validity_window_verifies(publisher: SigningKey) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    trust = channel(trusted(publisher, not_before=NOW, not_after=NOW + timedelta(days=1)))
    assert require(signed, trust) == signed["kristal_id"]


def test_wrong_role_is_policy_not_satisfied_and_signature_invalid() -> None:
    # Documented choice: a trusted key signing outside its roles reports `policy_not_satisfied`
    # per signature and the refusal is `signature_invalid` (no upstream policy error code).
    validator = make_key("val-1", "validator")
    signed = sign_document(exchange(), EX, validator, now=NOW)
    trust = channel(trusted(validator))
    assert statuses(signed, trust, "publisher") == ["policy_not_satisfied"]
    with pytest.raises(SignatureInvalid, match="val-1"):
        require(signed, trust, "publisher")
    assert require(signed, trust, "validator") == signed["kristal_id"]


@pytest.mark.parametrize(
    "signature",
    [
        b64url_encode(b"\x01" * 63),  # one byte short
        b64url_encode(b"\x01" * 65),
        "AA==",  # EX-003's placeholder
        "not base64 at all!",
        "****",
        "AAAA-AAA+AAA",  # mixed alphabets
        "A",  # dangling character
        "AB==",  # non-zero trailing bits
        "",
    ],
)
def test_malformed_signature_bytes_are_malformed_and_refused(
    publisher: SigningKey, signature: str
) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    signed["signatures"][0]["signature"] = signature
    assert statuses(signed, channel(trusted(publisher))) == ["malformed"]
    with pytest.raises(SignatureInvalid):
        require(signed, channel(trusted(publisher)))


@pytest.mark.parametrize(
    "entry",
    [
        "just a string",
        {"key_id": "pub-1", "alg": "ed25519", "signature": "x"},  # no created_at
        {"key_id": "pub-1", "alg": "ed25519", "signature": "x", "created_at": 1700000000},
        {"key_id": "pub-1", "alg": "ed25519", "signature": "x", "created_at": "2026-01-01T00:00"},
        {"key_id": 7, "alg": "ed25519", "signature": "x", "created_at": "2026-01-01T00:00:00Z"},
        {"key_id": "pub-1", "alg": "ed25519", "signature": "x",
         "created_at": "2026-01-01T00:00:00Z", "extra": 1},
    ],
)
def test_badly_shaped_signature_entry_is_malformed_not_a_crash(
    publisher: SigningKey, entry: Any
) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    signed["signatures"] = [entry]
    assert statuses(signed, channel(trusted(publisher))) == ["malformed"]
    with pytest.raises(SignatureInvalid):
        require(signed, channel(trusted(publisher)))


def test_unsupported_alg_is_refused(publisher: SigningKey) -> None:
    signed = sign_document(exchange(), EX, publisher, now=NOW)
    signed["signatures"][0]["alg"] = "rsa-pss"
    assert statuses(signed, channel(trusted(publisher))) == ["unsupported_alg"]
    with pytest.raises(SignatureInvalid):
        require(signed, channel(trusted(publisher)))


def test_unsigned_document_is_signature_missing(publisher: SigningKey) -> None:
    doc = with_identity(exchange(), EX, content_hash=True)
    with pytest.raises(SignatureMissing, match="exchange"):
        require(doc, channel(trusted(publisher)))
    with pytest.raises(SignatureMissing):
        require({**doc, "signatures": []}, channel(trusted(publisher)))


def test_signature_valid_for_another_artifact_is_refused(publisher: SigningKey) -> None:
    other = sign_document(exchange(scope="other"), EX, publisher, now=NOW)
    target = with_identity(exchange(), EX, content_hash=True)
    target["signatures"] = other["signatures"]
    assert statuses(target, channel(trusted(publisher))) == ["failed"]
    with pytest.raises(SignatureInvalid):
        require(target, channel(trusted(publisher)))


# --- thresholds ----------------------------------------------------------------------------------
def test_threshold_two_needs_two_distinct_keys(publisher: SigningKey) -> None:
    second = make_key("pub-2")
    trust = channel(trusted(publisher), trusted(second), publisher=2)
    once = sign_document(exchange(), EX, publisher, now=NOW)
    with pytest.raises(SignatureInvalid, match=r"needs 2 .* has 1"):
        require(once, trust)
    same_twice = sign_document(once, EX, publisher, now=NOW + timedelta(seconds=1))
    assert statuses(same_twice, trust) == ["verified", "verified"]
    with pytest.raises(SignatureInvalid, match="has 1"):
        require(same_twice, trust)
    both = sign_document(once, EX, second, now=NOW)
    assert require(both, trust) == once["kristal_id"]


def test_one_public_key_under_two_key_ids_counts_once(publisher: SigningKey) -> None:
    alias = SigningKey("pub-alias", publisher.private_key, ("publisher",))
    trust = channel(trusted(publisher), trusted(alias), publisher=2)
    doc = sign_document(sign_document(exchange(), EX, publisher, now=NOW), EX, alias, now=NOW)
    with pytest.raises(SignatureInvalid, match="has 1"):
        require(doc, trust)


def test_threshold_met_despite_an_extra_bad_signature(publisher: SigningKey) -> None:
    doc = sign_document(exchange(), EX, make_key("stranger"), now=NOW)
    doc = sign_document(doc, EX, publisher, now=NOW)
    assert statuses(doc, channel(trusted(publisher))) == ["missing_key", "verified"]
    assert require(doc, channel(trusted(publisher))) == doc["kristal_id"]


def test_thresholds_default_to_one_per_role_and_refuse_zero() -> None:
    trust = ChannelTrust(keys=[], thresholds={"publisher": 2})
    assert trust.thresholds == {"publisher": 2, "validator": 1, "channel-authority": 1,
                                "activator": 1}
    with pytest.raises(ValueError):
        ChannelTrust(keys=[], thresholds={"publisher": 0})
    with pytest.raises(ValueError):
        ChannelTrust(keys=[], thresholds={"auditor": 1})


# --- property: sign/verify round trip, any one-character change breaks it ----------------------
_RESERVED = {"kristal_id", "content_hash", "signatures", "attestations"}
_keys = st.text(max_size=8).filter(lambda k: k not in _RESERVED)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)
_PROPERTY_KEY = make_key("prop-1")
_PROPERTY_TRUST = channel(trusted(_PROPERTY_KEY))


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list
    ) else []
    return [p for k, v in items for p in _string_paths(v, (*path, k))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.dictionaries(_keys, _json, max_size=6), anchor=st.text(min_size=1, max_size=8),
       data=st.data())
def test_property_sign_verify_round_trips_and_one_char_change_breaks_it(
    body: dict[str, Any], anchor: str, data: st.DataObject
) -> None:
    doc = {**body, "anchor": anchor}  # at least one string value to change
    signed = sign_document(doc, EX, _PROPERTY_KEY, now=NOW)
    assert require(signed, _PROPERTY_TRUST) == compute_id(doc, EX)

    paths = _string_paths({k: v for k, v in signed.items() if k not in _RESERVED})
    path = data.draw(st.sampled_from(paths))
    tampered = copy.deepcopy(signed)
    node: Any = tampered
    for step in path[:-1]:
        node = node[step]
    old: str = node[path[-1]]
    if old:
        i = data.draw(st.integers(0, len(old) - 1))
        node[path[-1]] = old[:i] + ("x" if old[i] != "x" else "y") + old[i + 1 :]
    else:
        node[path[-1]] = "x"
    with pytest.raises(IdentityMismatch):
        require(tampered, _PROPERTY_TRUST)
    refreshed = with_identity(tampered, EX, content_hash=True)
    with pytest.raises(SignatureInvalid):
        require(refreshed, _PROPERTY_TRUST)


# --- encodings ----------------------------------------------------------------------------------
@given(st.binary(max_size=80))
def test_b64_round_trips_both_spellings(raw: bytes) -> None:
    assert b64decode_any(b64url_encode(raw)) == raw
    assert b64decode_any(base64.b64encode(raw).decode()) == raw


# --- trust file resolution -----------------------------------------------------------------------
def _entry(tag: str) -> dict[str, Any]:
    key = make_key(tag)
    return {"keys": [{"key_id": tag, "public_key": public_key_b64url(key.private_key),
                      "roles": ["publisher"]}]}


def _resolved(trust: TrustFile, channel_id: str) -> str:
    return trust.for_channel(channel_id).keys[0].key_id


def test_trust_resolution_most_specific_entry_wins() -> None:
    trust = TrustFile.model_validate({"channels": {
        "*": _entry("star"),
        "acme/*": _entry("acme"),
        "acme/prod/*": _entry("acme-prod"),
        "acme/prod/eu-west-1": _entry("exact"),
    }})
    assert _resolved(trust, "acme/prod/eu-west-1") == "exact"
    assert _resolved(trust, "acme/prod/us-east-1") == "acme-prod"
    assert _resolved(trust, "acme/staging/eu-west-1") == "acme"
    assert _resolved(trust, "other/prod/eu-west-1") == "star"
    # "acme/*" must not match a tenant that merely starts with "acme".
    assert _resolved(trust, "acmex/prod/eu") == "star"


def test_trust_entries_are_not_merged() -> None:
    trust = TrustFile.model_validate({"channels": {
        "*": {**_entry("star"), "revoked_key_ids": ["x"], "required_profiles": ["schema"]},
        "acme/*": _entry("acme"),
    }})
    chosen = trust.for_channel("acme/prod/eu")
    assert [k.key_id for k in chosen.keys] == ["acme"]
    assert chosen.revoked_key_ids == []
    assert chosen.required_profiles == ["schema", "ordering", "row-count", "source-binding"]


def test_no_matching_trust_entry_is_trust_root_missing() -> None:
    trust = TrustFile.model_validate({"channels": {"acme/*": _entry("acme")}})
    with pytest.raises(TrustRootMissing, match="other/prod/eu"):
        trust.for_channel("other/prod/eu")
    with pytest.raises(PathInvalid):
        trust.for_channel("../etc/passwd")


@pytest.mark.parametrize("selector", ["acme*", "acme/prod", "a/b/c/*", "*/prod/*", "ACME/*", ""])
def test_unmatchable_trust_selectors_are_refused(selector: str) -> None:
    with pytest.raises(ValueError):
        TrustFile.model_validate({"channels": {selector: _entry("k")}})


def test_load_trust_file(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    with pytest.raises(TrustRootMissing):
        load_trust_file(path)
    good = {"channels": {"*": {**_entry("k"), "thresholds": {"publisher": 1}}}}
    good["channels"]["*"]["keys"][0]["not_after"] = "2030-01-01T00:00:00Z"
    path.write_text(json.dumps(good))
    loaded = load_trust_file(path)
    assert loaded.for_channel("a/b/c").keys[0].not_after == datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda k: k.update(public_key="AAAA"), "public_key"),
        (lambda k: k.update(public_key="%%%"), "public_key"),
        (lambda k: k.update(roles=["admin"]), "roles"),
        (lambda k: k.update(not_after="2030-01-01"), "not_after"),
        (lambda k: k.update(not_after=1893456000), "not_after"),
        (lambda k: k.update(surprise=True), "surprise"),
    ],
)
def test_bad_trust_file_is_manifest_schema_invalid_naming_the_field(
    tmp_path: Path, mutate: Any, field: str
) -> None:
    doc = {"channels": {"*": _entry("k")}}
    mutate(doc["channels"]["*"]["keys"][0])
    path = tmp_path / "trust.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestSchemaInvalid, match=field) as info:
        load_trust_file(path)
    assert field in (info.value.field or "")


def test_trust_file_with_duplicate_json_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    path.write_text('{"channels": {"*": {"keys": []}, "*": {"keys": []}}}')
    with pytest.raises(ManifestSchemaInvalid, match="duplicate"):
        load_trust_file(path)


# --- key files -----------------------------------------------------------------------------------
def test_generate_key_writes_0600_pem_and_pub_json(tmp_path: Path) -> None:
    entry = generate_key("publisher", "pub-1", tmp_path)
    pem, pub = tmp_path / "pub-1.pem", tmp_path / "pub-1.pub.json"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert json.loads(pub.read_text()) == {
        "key_id": "pub-1", "public_key": entry.public_key, "roles": ["publisher"],
    }
    key = load_signing_key(tmp_path, "pub-1")
    assert key.roles == ("publisher",)
    assert public_key_b64url(key.private_key) == entry.public_key
    signed = sign_document(exchange(), EX, key, now=NOW)
    assert require(signed, ChannelTrust(keys=[entry])) == signed["kristal_id"]


def test_generate_key_refuses_to_overwrite(tmp_path: Path) -> None:
    generate_key("publisher", "pub-1", tmp_path)
    before = (tmp_path / "pub-1.pem").read_bytes()
    with pytest.raises(UsageInvalid, match="overwrite"):
        generate_key("validator", "pub-1", tmp_path)
    assert (tmp_path / "pub-1.pem").read_bytes() == before


@pytest.mark.parametrize("key_id", ["", "-lead", "a/b", "../x", "a b", "x" * 129])
def test_generate_key_refuses_bad_key_ids(tmp_path: Path, key_id: str) -> None:
    with pytest.raises(UsageInvalid):
        generate_key("publisher", key_id, tmp_path)


def test_generate_key_refuses_unknown_roles(tmp_path: Path) -> None:
    with pytest.raises(UsageInvalid, match="role"):
        generate_key("admin", "k", tmp_path)


def test_load_role_key_picks_the_lowest_key_id_for_the_role(tmp_path: Path) -> None:
    generate_key("publisher", "pub-b", tmp_path)
    generate_key("publisher", "pub-a", tmp_path)
    generate_key("validator", "val-1", tmp_path)
    assert load_role_key(tmp_path, "publisher").key_id == "pub-a"
    assert load_role_key(tmp_path, "validator").key_id == "val-1"
    with pytest.raises(UsageInvalid, match="no channel-authority key"):
        load_role_key(tmp_path, "channel-authority")
    with pytest.raises(UsageInvalid):
        load_role_key(tmp_path / "absent", "publisher")


def test_load_signing_key_refuses_a_mismatched_pub_json(tmp_path: Path) -> None:
    generate_key("publisher", "pub-1", tmp_path)
    generate_key("publisher", "pub-2", tmp_path)
    pub = tmp_path / "pub-1.pub.json"
    pub.write_text((tmp_path / "pub-2.pub.json").read_text().replace("pub-2", "pub-1"))
    with pytest.raises(UsageInvalid, match="does not describe"):
        load_signing_key(tmp_path, "pub-1")
