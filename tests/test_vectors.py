"""Every upstream vector in shared/vectors: canonical bytes, IDs, declared-hash and payload
integrity, and the Ed25519 signature vectors (both encodings; the seed reproduces the bytes).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kristal.errors import FileHashMismatch, FileInventoryMissing, IdentityMismatch
from kristal.formats.canonical import canonical_bytes, parse_json, sha256_hex
from kristal.formats.identity import (
    DocKind,
    canonical_target_bytes,
    compute_id,
    digest_bytes,
    verify_identity,
)
from kristal.trust.signing import b64decode_any, b64url_encode

VECTORS_DIR = Path(__file__).resolve().parents[2] / "shared" / "vectors"


def _load(name: str) -> dict[str, Any]:
    path = VECTORS_DIR / name
    if not path.is_file():
        pytest.fail(f"test vector file {path} is missing (expected the shared/vectors checkout)")
    return json.loads(path.read_text(encoding="utf-8"))


def _vectors(name: str) -> list[Any]:
    # Load at collection time so each vector is its own test case, named by its id.
    path = VECTORS_DIR / name
    if not path.is_file():
        return [pytest.param(name, id=f"{name}-missing")]  # `_vector` turns this into a failure
    return [pytest.param(v, id=v["id"]) for v in json.loads(path.read_text("utf-8"))["vectors"]]


def _vector(vector: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(vector, str):
        _load(vector)  # fails, naming the missing file
    assert isinstance(vector, dict)
    return vector


def test_every_vector_file_is_present_and_covered() -> None:
    found = sorted(p.name for p in VECTORS_DIR.glob("*.json")) if VECTORS_DIR.is_dir() else []
    assert found == ["exchange.json", "jcs.json", "runtime-pack.json", "signatures.json"], (
        f"vector files in {VECTORS_DIR}: {found}; a new file needs tests here"
    )


# --- JCS ------------------------------------------------------------------------------------
@pytest.mark.parametrize("vector", _vectors("jcs.json"))
def test_jcs_vector(vector: dict[str, Any] | str) -> None:
    vector = _vector(vector)
    canonical = canonical_bytes(parse_json(vector["input_json"]))
    assert canonical == vector["expected_canonical"].encode("utf-8")
    assert "sha256:" + sha256_hex(canonical) == vector["expected_sha256"]


# --- Exchange identity -------------------------------------------------------------------------
@pytest.mark.parametrize("vector", _vectors("exchange.json"))
def test_exchange_vector(vector: dict[str, Any] | str) -> None:
    vector = _vector(vector)
    doc = vector["input"]
    assert canonical_target_bytes(doc, DocKind.EXCHANGE) == vector["expected_canonical"].encode()
    assert compute_id(doc, DocKind.EXCHANGE) == vector["expected_kristal_id"]
    if vector["expect_declared_hash_integrity"] == "pass":
        assert verify_identity(doc, DocKind.EXCHANGE) == vector["expected_kristal_id"]
    else:
        assert vector["expect_declared_hash_integrity"] == "fail"
        with pytest.raises(IdentityMismatch):
            verify_identity(doc, DocKind.EXCHANGE)


def test_exchange_relations() -> None:
    data = _load("exchange.json")
    by_id = {v["id"]: v["input"] for v in data["vectors"]}
    assert data["relations"], "exchange.json declares no relations"
    for relation in data["relations"]:
        left = compute_id(by_id[relation["left"]], DocKind.EXCHANGE)
        right = compute_id(by_id[relation["right"]], DocKind.EXCHANGE)
        assert relation["expect"] == "same_id", f"unknown relation {relation}"
        assert left == right, relation["id"]


def test_exchange_signatures_do_not_change_the_id_but_tampering_does() -> None:
    by_id = {v["id"]: v for v in _load("exchange.json")["vectors"]}
    assert by_id["EX-003"]["input"]["signatures"], "EX-003 should carry a signature envelope"
    assert by_id["EX-004"]["expected_kristal_id"] != by_id["EX-004"]["input"]["kristal_id"]


# --- Runtime Pack identity and payload integrity -----------------------------------------------
def check_payloads(manifest: dict[str, Any], payloads: dict[str, bytes]) -> None:
    """Every `files[]` entry has its payload with the declared size and bare-hex sha256."""
    for entry in manifest["files"]:
        data = payloads.get(entry["path"])
        if data is None:
            raise FileInventoryMissing(f"payload {entry['path']} is missing", field=entry["path"])
        if len(data) != entry["size_bytes"]:
            raise FileHashMismatch(
                f"{entry['path']} is {len(data)} bytes, manifest says {entry['size_bytes']}",
                field=entry["path"],
            )
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise FileHashMismatch(f"{entry['path']} sha256 differs", field=entry["path"])
    unlisted = set(payloads) - {e["path"] for e in manifest["files"]}
    if unlisted:
        raise FileInventoryMissing(f"payloads not in files[]: {sorted(unlisted)}")


@pytest.mark.parametrize("vector", _vectors("runtime-pack.json"))
def test_runtime_pack_vector(vector: dict[str, Any] | str) -> None:
    vector = _vector(vector)
    doc = vector["input"]
    kind = DocKind.RUNTIME_PACK
    assert canonical_target_bytes(doc, kind) == vector["expected_canonical"].encode("utf-8")
    assert compute_id(doc, kind) == vector["expected_runtime_pack_id"]
    assert verify_identity(doc, kind) == vector["expected_runtime_pack_id"]

    payloads = {p: base64.b64decode(b, validate=True) for p, b in vector["payloads_base64"].items()}
    if vector["expect_payload_integrity"] == "pass":
        check_payloads(doc, payloads)
    else:
        assert vector["expect_payload_integrity"] == "fail"
        with pytest.raises(FileHashMismatch):
            check_payloads(doc, payloads)


def test_runtime_pack_unsigned_fields_do_not_change_the_id() -> None:
    doc = dict(_load("runtime-pack.json")["vectors"][0]["input"])
    before = compute_id(doc, DocKind.RUNTIME_PACK)
    doc["created_at"] = "2030-01-01T00:00:00Z"
    doc["integrity"] = {**doc["integrity"], "pack_hash": "sha256:" + "0" * 64}
    assert compute_id(doc, DocKind.RUNTIME_PACK) == before


# --- Ed25519 signatures -------------------------------------------------------------------------
@pytest.mark.parametrize("vector", _vectors("signatures.json"))
def test_signature_vector(vector: dict[str, Any] | str) -> None:
    vector = _vector(vector)
    public_raw = b64decode_any(vector["public_key_raw_base64url"])
    public_key = Ed25519PublicKey.from_public_bytes(public_raw)
    pem_key = serialization.load_pem_public_key(vector["public_key_pem"].encode())
    assert pem_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == public_raw

    message = bytes.fromhex(vector["signing_input_hex"])
    assert message == digest_bytes(vector["artifact_id"])
    exchanges = {v["expected_kristal_id"] for v in _load("exchange.json")["vectors"]}
    assert vector["artifact_id"] in exchanges

    # Both spellings decode to the same 64 bytes and verify; the one the vector "uses" too.
    url = b64decode_any(vector["signature_base64url"])
    padded = b64decode_any(vector["signature_base64_padded"])
    assert url == padded and len(url) == 64
    used = b64decode_any(vector[vector.get("use", "signature_base64url")])
    assert vector["expect"] == "verified"
    public_key.verify(used, message)

    private_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["private_seed_hex"]))
    assert private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    ) == public_raw
    # Ed25519 is deterministic: the seed reproduces the vector's signature exactly.
    assert b64url_encode(private_key.sign(message)) == vector["signature_base64url"]
