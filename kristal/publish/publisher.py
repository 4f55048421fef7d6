"""`kristalctl publish`: a triples file in, a signed release in the bucket and the channel index.

Builds the Exchange (assertions blob) or K shard Exchanges under a federation root, a Runtime
Pack of profile `kristal.runtime/sqlite/1` with its check expectations, the validation reports
the channel requires (real checks over the files written), signs each with its role, uploads
data before manifests and manifests before the index entry that makes the release visible.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import platform
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kristal import __version__
from kristal.channel.index import index_body, read_index_bytes, update_index
from kristal.errors import (
    IdentityMismatch,
    ManifestSchemaInvalid,
    ProfileUnsupported,
    ReleaseIdDowngradeBlocked,
    ReleaseIdSubstitutionBlocked,
    UsageInvalid,
)
from kristal.formats import layout
from kristal.formats.artifacts import ExchangeManifest, FederationManifest, RuntimePackManifest
from kristal.formats.canonical import canonical_bytes, parse_json, sha256_hex
from kristal.formats.channel_docs import ChannelIndex
from kristal.formats.expectations import Expectations
from kristal.formats.identity import ID_RULES, DocKind, compute_id, with_identity
from kristal.formats.models import (
    BLOBS_EXT,
    EXPECTATIONS_EXT,
    FEDERATION_EXT,
    GENERATION_EXT,
    QUERY_CONTRACT,
    SQLITE_PROFILE,
    parse_model,
    validate_channel_id,
)
from kristal.publish.datagen import sort_triples_file
from kristal.runtime.checks import derive_expectations
from kristal.runtime.sqlite_index import build_index
from kristal.store.s3 import ObjectNotFound, ObjectStore, WriteStatus
from kristal.trust.roots import ChannelTrust
from kristal.trust.signing import SigningKey, sign_document

TRIPLES_PATH = "data/triples.jsonl"
ASSERTIONS_PATH = "data/assertions.jsonl"
KNOWN_PROFILES = ("schema", "ordering", "row-count", "source-binding")
REPORT_LIFETIME = timedelta(days=365)


@dataclass(frozen=True)
class PublisherKeys:
    publisher: SigningKey
    validator: SigningKey
    authority: SigningKey


def load_publisher_keys(key_dir: Path) -> PublisherKeys:
    """The three signing keys `publish` needs, one per role, from `KRISTAL_KEY_DIR`."""
    from kristal.trust.keys import load_role_key

    return PublisherKeys(publisher=load_role_key(key_dir, "publisher"),
                         validator=load_role_key(key_dir, "validator"),
                         authority=load_role_key(key_dir, "channel-authority"))


@dataclass(frozen=True)
class PublishResult:
    channel_id: str
    release_id: int
    generation: int
    exchange_id: str
    runtime_pack_ids: list[str]
    federation_id: str | None
    validation_report_ids: list[str]
    index_version: int
    row_count: int
    failed_profiles: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def jcs_line(row: dict[str, str]) -> bytes:
    """JCS bytes + LF of an object whose keys are ASCII and whose values are strings.

    For such objects `json.dumps(sort_keys, ensure_ascii=False)` produces RFC 8785 exactly
    (same key order, same string escapes), and it is ~30x faster than a general JCS encoder.
    """
    return (
        json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
    ).encode()


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open("rb") as handle:
        for line in handle:
            yield json.loads(line)


def _file_entry(path: Path, rel: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {
        "path": rel,
        "role": "other",
        "sha256": digest.hexdigest(),
        "size_bytes": size,
        "mime_type": "application/x-ndjson",
    }


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _shard_of(subject: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "big") % shards


def _assertion(row: dict[str, str]) -> dict[str, str]:
    return {
        "assertion_id": row["statement_id"],
        "subject": row["subject"],
        "predicate": row["predicate"],
        "object": row["object"],
        "assertion_status": "sourced",
        "certainty_level": "high",
    }


def write_assertion_blobs(triples: Path, out_dir: Path, shards: int) -> list[Path]:
    """One pass over sorted triples; each shard's blob stays sorted since filtering keeps order."""
    count = max(shards, 1)
    paths = [out_dir / f"assertions-{i:03d}.jsonl" for i in range(count)]
    handles = [p.open("wb") for p in paths]
    try:
        for row in _rows(triples):
            index = _shard_of(row["subject"], count) if count > 1 else 0
            handles[index].write(jcs_line(_assertion(row)))
    finally:
        for handle in handles:
            handle.close()
    return paths


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


def pack_doc(
    exchange_id: str,
    exchange_manifest_sha256: str,
    triples_entry: dict[str, Any],
    generation: int,
    expectations: Expectations,
    now: datetime,
) -> dict[str, Any]:
    config = {"profile": SQLITE_PROFILE, "contract": QUERY_CONTRACT, "ordering": "spo-bytes"}
    return {
        "schema_version": "5.0",
        "artifact_type": "runtime_pack_manifest",
        "runtime_pack_version": "5.0.0",
        "created_at": _rfc3339(now),
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
        "policies": {"data_ordering": {"policy": "subject_predicate_statement_id_utf8_asc"}},
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


# --- validation profiles: real checks over what was written ----------------------------------
def _order_key(row: dict[str, str], id_field: str) -> tuple[bytes, bytes, bytes]:
    return (row["subject"].encode(), row["predicate"].encode(), row[id_field].encode())


def _check_schema(ctx: _ReleaseFiles) -> list[dict[str, str]]:
    findings = []
    for doc, model, what in ctx.documents:
        try:
            parse_model(model, doc, what=what)
            findings.append({"check_id": f"schema:{what}", "status": "passed", "message": "valid"})
        except ManifestSchemaInvalid as exc:
            findings.append(
                {"check_id": f"schema:{what}", "status": "failed", "message": exc.message}
            )
    return findings


def _check_ordering(ctx: _ReleaseFiles) -> list[dict[str, str]]:
    findings = []
    sources = [(ctx.triples, "statement_id", "triples")]
    sources += [(p, "assertion_id", f"assertions[{i}]") for i, p in enumerate(ctx.assertion_blobs)]
    for path, id_field, what in sources:
        previous: tuple[bytes, bytes, bytes] | None = None
        bad = ""
        for line_no, row in enumerate(_rows(path), start=1):
            current = _order_key(row, id_field)
            if previous is not None and current <= previous:
                bad = f"line {line_no} is not after line {line_no - 1}"
                break
            previous = current
        findings.append(
            {
                "check_id": f"ordering:{what}",
                "status": "failed" if bad else "passed",
                "message": bad or "strictly increasing by subject, predicate, id bytes",
            }
        )
    return findings


def _check_row_count(ctx: _ReleaseFiles) -> list[dict[str, str]]:
    with ctx.triples.open("rb") as handle:
        pack_rows = sum(1 for _ in handle)
    exchange_rows = 0
    for blob in ctx.assertion_blobs:
        with blob.open("rb") as handle:
            exchange_rows += sum(1 for _ in handle)
    ok = pack_rows == exchange_rows == ctx.row_count
    return [
        {
            "check_id": "row-count:pack-vs-exchange",
            "status": "passed" if ok else "failed",
            "message": f"pack {pack_rows} rows, exchange {exchange_rows} assertions",
        }
    ]


def _check_source_binding(ctx: _ReleaseFiles) -> list[dict[str, str]]:
    findings = []
    for pack in ctx.packs:
        ref = pack["source_exchange_ref"]
        ok = (
            ref["exchange_id"] == ctx.exchange["kristal_id"]
            and ref["exchange_manifest_hash"] == "sha256:" + ctx.exchange_sha256
        )
        findings.append(
            {
                "check_id": "source-binding:manifest",
                "status": "passed" if ok else "failed",
                "message": f"pack {pack['runtime_pack_id']} names {ref['exchange_id']}",
            }
        )
    # Row by row: the pack's triples are exactly the Exchange's assertions (all shards merged).
    merged = heapq.merge(
        *(_rows(b) for b in ctx.assertion_blobs), key=lambda r: _order_key(r, "assertion_id")
    )
    mismatch = ""
    pack_rows = _rows(ctx.triples)
    for line_no, assertion in enumerate(merged, start=1):
        row = next(pack_rows, None)
        if row is None or _assertion(row) != assertion:
            mismatch = f"pack row {line_no} differs from the exchange's assertion {line_no}"
            break
    if not mismatch and next(pack_rows, None) is not None:
        mismatch = "pack has rows the exchange does not"
    findings.append(
        {
            "check_id": "source-binding:rows",
            "status": "failed" if mismatch else "passed",
            "message": mismatch or "every pack row is an assertion of the exchange",
        }
    )
    return findings


PROFILE_CHECKS: dict[str, Callable[[_ReleaseFiles], list[dict[str, str]]]] = {
    "schema": _check_schema,
    "ordering": _check_ordering,
    "row-count": _check_row_count,
    "source-binding": _check_source_binding,
}


@dataclass
class _ReleaseFiles:
    triples: Path
    assertion_blobs: list[Path]
    exchange: dict[str, Any]
    exchange_sha256: str
    packs: list[dict[str, Any]]
    documents: list[tuple[dict[str, Any], type[Any], str]]
    row_count: int


def validation_report(
    profile: str, targets: list[str], findings: list[dict[str, str]], key: SigningKey, now: datetime
) -> dict[str, Any]:
    failed = any(f["status"] == "failed" for f in findings)
    doc = {
        "artifact_type": "validation_report",
        "profile": profile,
        "target_artifact_ids": targets,
        "result": "failed" if failed else "passed",
        "findings": findings,
        "validator": key.key_id,
        "created_at": _rfc3339(now),
        "expires_at": _rfc3339(now + REPORT_LIFETIME),
    }
    return sign_document(doc, DocKind.VALIDATION_REPORT, key, now=now)


# --- the publish operation --------------------------------------------------------------------
def check_release_id_free(index: ChannelIndex | None, release_id: int) -> None:
    if index is None:
        return
    if index.release(release_id) is not None:
        raise ReleaseIdSubstitutionBlocked(
            f"release {release_id} is already published in {index.channel_id}; release ids are "
            "never reused"
        )
    highest = max((r.release_id for r in index.releases), default=0)
    if release_id <= highest:
        raise ReleaseIdDowngradeBlocked(
            f"release {release_id} is not above the channel's highest published release {highest}"
        )


def publish(
    store: ObjectStore,
    trust: ChannelTrust,
    keys: PublisherKeys,
    *,
    data: Path,
    channel_id: str,
    release_id: int,
    generation: int,
    expect_file: Path | None = None,
    shards: int = 0,
    now: Callable[[], datetime],
    workdir: Path | None = None,
) -> PublishResult:
    validate_channel_id(channel_id)
    if release_id < 1 or generation < 0 or not 0 <= shards <= 256:
        raise UsageInvalid("release id >= 1, generation >= 0 and 0 <= shards <= 256 are required")
    if not data.is_file():
        raise UsageInvalid(f"data file {data} does not exist")
    unknown = [p for p in trust.required_profiles if p not in PROFILE_CHECKS]
    if unknown:
        raise ProfileUnsupported(
            f"the channel requires validation profiles {unknown} this "
            f"publisher cannot check (known: {list(KNOWN_PROFILES)})"
        )
    given_expectations = None
    if expect_file is not None:
        given_expectations = parse_model(
            Expectations,
            parse_json(expect_file.read_bytes(), what="expect file"),
            what="expect file",
        )
    # Refuse early (the index change re-checks under its conditional write).
    current = read_index_bytes(store, channel_id)
    if current is not None:
        from kristal.channel.index import load_verified_index

        check_release_id_free(
            load_verified_index(current[0], channel_id, trust, now=now()), release_id
        )

    moment = now()
    tmp = Path(tempfile.mkdtemp(prefix="kristal-publish-", dir=workdir))
    try:
        triples = tmp / "triples.jsonl"
        sort_triples_file(data, triples)
        blobs = write_assertion_blobs(triples, tmp, shards if shards > 1 else 1)
        uploads: list[tuple[str, Path]] = []
        documents: list[tuple[dict[str, Any], type[Any], str]] = []

        federation: dict[str, Any] | None = None
        shard_docs: list[dict[str, Any]] = []
        if shards > 1:
            for i, blob_path in enumerate(blobs):
                entry = _file_entry(blob_path, ASSERTIONS_PATH)
                shard = sign_exchange(
                    exchange_doc(
                        entry,
                        generation,
                        {"domain": "kristal-activate", "shard": f"{i:03d}/{shards:03d}"},
                    ),
                    keys.publisher,
                    moment,
                )
                shard = adopt_existing(store, layout.exchange_manifest(shard["kristal_id"]), shard,
                                       DocKind.EXCHANGE)
                shard_docs.append(shard)
                uploads.append(
                    (layout.exchange_blob(shard["kristal_id"], ASSERTIONS_PATH), blob_path)
                )
                documents.append((shard, ExchangeManifest, f"shard-{i:03d}"))
            root = {
                "schema_version": "5.0",
                "artifact_type": "exchange_federation_manifest",
                "manifest_id": f"federation:{uuid.uuid4()}",
                "created_at": _rfc3339(moment),
                "shards": [
                    {
                        "shard_id": f"shard-{i:03d}",
                        "scope": s["scope"],
                        "artifact_status": "working",
                        "shard_manifest_ref": layout.exchange_manifest(s["kristal_id"]),
                        "shard_manifest_hash": s["kristal_id"],
                    }
                    for i, s in enumerate(shard_docs)
                ],
                "extensions": {GENERATION_EXT: generation},
            }
            federation = sign_document(root, DocKind.FEDERATION, keys.publisher, now=moment)
            federation = adopt_existing(
                store, layout.federation_manifest(federation["federation_id"]), federation,
                DocKind.FEDERATION)
            documents.append((federation, FederationManifest, "federation-root"))
            exchange = sign_exchange(
                exchange_doc(
                    None,
                    generation,
                    {"domain": "kristal-activate", "federated": True},
                    federation["federation_id"],
                ),
                keys.publisher,
                moment,
            )
        else:
            entry = _file_entry(blobs[0], ASSERTIONS_PATH)
            exchange = sign_exchange(
                exchange_doc(entry, generation, {"domain": "kristal-activate"}),
                keys.publisher,
                moment,
            )
            uploads.append(
                (layout.exchange_blob(exchange["kristal_id"], ASSERTIONS_PATH), blobs[0])
            )
        exchange = adopt_existing(store, layout.exchange_manifest(exchange["kristal_id"]),
                                  exchange, DocKind.EXCHANGE)
        documents.append((exchange, ExchangeManifest, "exchange"))
        exchange_bytes = canonical_bytes(exchange)
        exchange_sha256 = sha256_hex(exchange_bytes)

        triples_entry = _file_entry(triples, TRIPLES_PATH)
        db_path = tmp / "index.sqlite"
        row_count = build_index(triples, db_path, source_sha256=triples_entry["sha256"])
        expectations = given_expectations or derive_expectations(db_path)
        pack = sign_document(
            with_identity(
                pack_doc(
                    exchange["kristal_id"],
                    exchange_sha256,
                    triples_entry,
                    generation,
                    expectations,
                    moment,
                ),
                DocKind.RUNTIME_PACK,
            ),
            DocKind.RUNTIME_PACK,
            keys.publisher,
            now=moment,
        )
        pack = adopt_existing(store, layout.pack_manifest(pack["runtime_pack_id"]), pack,
                              DocKind.RUNTIME_PACK)
        documents.append((pack, RuntimePackManifest, "runtime-pack"))
        uploads.append((layout.pack_file(pack["runtime_pack_id"], TRIPLES_PATH), triples))

        ctx = _ReleaseFiles(triples, blobs, exchange, exchange_sha256, [pack], documents, row_count)
        targets = [exchange["kristal_id"], pack["runtime_pack_id"]]
        if federation:
            targets.append(federation["federation_id"])
        reports = [
            validation_report(p, targets, PROFILE_CHECKS[p](ctx), keys.validator, moment)
            for p in trust.required_profiles
        ]
        failed_profiles = [r["profile"] for r in reports if r["result"] == "failed"]

        # Data first, then manifests, then reports; the index entry last makes it visible.
        for key, path in uploads:
            store.upload_file(key, path)
        for shard in shard_docs:
            put_once(store, layout.exchange_manifest(shard["kristal_id"]), canonical_bytes(shard))
        if federation:
            put_once(store, layout.federation_manifest(federation["federation_id"]),
                     canonical_bytes(federation))
        put_once(store, layout.exchange_manifest(exchange["kristal_id"]), exchange_bytes)
        put_once(store, layout.pack_manifest(pack["runtime_pack_id"]), canonical_bytes(pack))
        for report in reports:
            put_once(store, layout.validation_report(report["validation_report_id"]),
                     canonical_bytes(report))

        release = {
            "release_id": release_id,
            "generation": generation,
            "exchange_id": exchange["kristal_id"],
            "runtime_pack_ids": [pack["runtime_pack_id"]],
            "validation_report_ids": [r["validation_report_id"] for r in reports],
            "published_at": _rfc3339(moment),
        }
        if federation:
            release["federation_id"] = federation["federation_id"]

        def add_release(index: ChannelIndex | None) -> dict[str, Any]:
            check_release_id_free(index, release_id)
            body = index_body(index)
            body["releases"].append(release)
            return body

        new_index = update_index(store, channel_id, trust, keys.authority, add_release, now=now)
        return PublishResult(
            channel_id=channel_id,
            release_id=release_id,
            generation=generation,
            exchange_id=exchange["kristal_id"],
            runtime_pack_ids=[pack["runtime_pack_id"]],
            federation_id=federation["federation_id"] if federation else None,
            validation_report_ids=release["validation_report_ids"],
            index_version=new_index.index_version,
            row_count=row_count,
            failed_profiles=failed_profiles,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
