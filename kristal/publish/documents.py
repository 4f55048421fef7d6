"""The documents a publish writes, built and signed: the Exchange (its assertions blob, or a
shard of a federation), the Runtime Pack manifest with its expectations, and the write-once
upload of content-addressed manifests (a republish adopts the stored, signed bytes).
"""

from __future__ import annotations

import hashlib
import platform
import uuid
from datetime import datetime
from typing import Any

from kristal import __version__
from kristal.errors import IdentityMismatch, ObjectNotFound
from kristal.formats.canonical import canonical_bytes, parse_json, sha256_hex
from kristal.formats.expectations import Expectations
from kristal.formats.identity import ID_RULES, DocKind, compute_id, with_identity
from kristal.formats.models import (
    BLOBS_EXT,
    EXPECTATIONS_EXT,
    FEDERATION_EXT,
    GENERATION_EXT,
    QUERY_CONTRACT,
    SQLITE_PROFILE,
)
from kristal.formats.time import rfc3339
from kristal.store.s3 import ObjectStore, WriteStatus
from kristal.trust.signing import SigningKey, sign_document

ASSERTIONS_PATH = "data/assertions.jsonl"


def shard_of(subject: str, shards: int) -> int:
    """The shard of a subject's rows (split by subject hash, so a subject stays whole)."""
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "big") % shards


def assertion_of(row: dict[str, str]) -> dict[str, str]:
    return {
        "assertion_id": row["statement_id"],
        "subject": row["subject"],
        "predicate": row["predicate"],
        "object": row["object"],
        "assertion_status": "sourced",
        "certainty_level": "high",
    }


def exchange_doc(
    blob: dict[str, Any] | None,
    generation: int,
    scope: dict[str, Any],
    federation_id: str | None = None,
) -> dict[str, Any]:
    extensions: dict[str, Any] = {GENERATION_EXT: generation, BLOBS_EXT: [blob] if blob else []}
    if federation_id:
        extensions[FEDERATION_EXT] = federation_id
    return {
        "schema_version": "5.0",
        "artifact_type": "working_exchange",
        "exchange_version": "5.0",
        "artifact_status": "working",
        "canonicalization_profile": "kristal.v5:jcs-rfc8785",
        "canonicalization_version": "1",
        "scope": scope,
        "validation_refs": [],
        "authority_recognition_refs": [],
        "reader_policy_refs": [],
        "extensions": extensions,
    }


def adopt_existing(store: ObjectStore, key: str, doc: dict[str, Any],
                   kind: DocKind) -> dict[str, Any]:
    """Content-addressed manifests are write-once: when the bucket already holds a document with
    this ID (an earlier release of the same content), publish that one's bytes instead, so the
    packs that name its manifest hash keep verifying."""
    try:
        data, _etag = store.get_bytes(key, max_bytes=16 * 1024 * 1024)
    except ObjectNotFound:
        return doc
    existing = parse_json(data, what=key)
    id_field = ID_RULES[kind].id_field
    if not isinstance(existing, dict) or compute_id(existing, kind) != doc[id_field]:
        raise IdentityMismatch(f"{key} holds a document that does not hash to {doc[id_field]}")
    return existing


def put_once(store: ObjectStore, key: str, data: bytes) -> None:
    """Write a content-addressed object if absent; an identical copy already there is fine."""
    outcome = store.put_if_absent(key, data)
    if outcome.status is WriteStatus.WRITTEN:
        return
    existing, _etag = store.get_bytes(key, max_bytes=max(len(data), 1) * 2)
    if existing != data:
        raise IdentityMismatch(f"{key} already holds other bytes; publish again to adopt them")


def sign_exchange(doc: dict[str, Any], key: SigningKey, now: datetime) -> dict[str, Any]:
    return sign_document(
        with_identity(doc, DocKind.EXCHANGE, content_hash=True), DocKind.EXCHANGE, key, now=now
    )


# What the `kristal.runtime/sqlite/1` pack is, in the upstream schema's terms (DESIGN §7).
PACK_POLICIES: dict[str, Any] = {
    "data_ordering": {
        "policy": "subject_predicate_object_statement_id_asc",
        "notes": "by the UTF-8 bytes of subject, predicate, object, statement_id"},
    "row_grouping": {
        "policy": "fixed_rows_100k",
        "notes": "nominal: one JSONL file, indexed whole by the activator's SQLite index"},
    "membership_filter": {"kind": "none"},
    "bitmap": {"format": "roaring", "run_optimize": False,
               "notes": "nominal: the pack ships no bitmap index"},
}


def pack_doc(
    exchange_id: str,
    exchange_manifest_sha256: str,
    triples_entry: dict[str, Any],
    generation: int,
    expectations: Expectations,
    now: datetime,
) -> dict[str, Any]:
    config = {"profile": SQLITE_PROFILE, "contract": QUERY_CONTRACT,
              "ordering": PACK_POLICIES["data_ordering"]["policy"]}
    return {
        "schema_version": "5.0",
        "artifact_type": "runtime_pack_manifest",
        "runtime_pack_version": "5.0.0",
        "created_at": rfc3339(now),
        "source_exchange_ref": {
            "exchange_id": exchange_id,
            "artifact_type": "working_exchange",
            "exchange_manifest_hash": "sha256:" + exchange_manifest_sha256,
            "exchange_version": "5.0",
        },
        "source_artifact_status": "working",
        "compiler": {
            "name": "kristal-activate",
            "version": __version__,
            "build_platform": f"{platform.system().lower()}-{platform.machine()}",
        },
        "build": {
            "build_id": f"build:{uuid.uuid4()}",
            "deterministic": True,
            "canonicalization_profile": "kristal.v5:jcs-rfc8785",
            "canonicalization_version": "1",
            "config_hash": "sha256:" + sha256_hex(canonical_bytes(config)),
            "compile_status": "succeeded",
        },
        "policies": PACK_POLICIES,
        "reader_policy_refs": [],
        "query_contract_ref": {"contract_id": QUERY_CONTRACT, "contract_version": "1"},
        "files": [triples_entry],
        "integrity": {"hash_alg": "sha256"},
        "profiles": [SQLITE_PROFILE],
        "extensions": {
            GENERATION_EXT: generation,
            EXPECTATIONS_EXT: expectations.model_dump(mode="json"),
        },
    }


