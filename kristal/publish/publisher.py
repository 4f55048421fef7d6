"""`kristalctl publish`: a triples file in, a signed release in the bucket and the channel index.

Builds the Exchange (assertions blob) or K shard Exchanges under a federation root, a Runtime
Pack of profile `kristal.runtime/sqlite/1` with its check expectations, the validation reports
the channel requires (checks over the files as one pass wrote and hashed them), signs each with
its role, uploads data before manifests and manifests before the index entry that makes the
release visible.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kristal.channel.index import index_body, read_index_bytes, update_index
from kristal.errors import (
    ProfileUnsupported,
    ReleaseIdDowngradeBlocked,
    ReleaseIdSubstitutionBlocked,
    UsageInvalid,
)
from kristal.formats import layout
from kristal.formats.artifacts import ExchangeManifest, FederationManifest, RuntimePackManifest
from kristal.formats.canonical import canonical_bytes, parse_json, sha256_hex
from kristal.formats.channel_docs import ChannelIndex
from kristal.formats.expectations import ExpectationsGiven
from kristal.formats.identity import DocKind, with_identity
from kristal.formats.layout import TRIPLES_PATH
from kristal.formats.models import (
    GENERATION_EXT,
    parse_model,
    validate_channel_id,
)
from kristal.formats.time import rfc3339
from kristal.publish.documents import (
    ASSERTIONS_PATH,
    adopt_existing,
    exchange_doc,
    pack_doc,
    put_once,
    sign_exchange,
)
from kristal.publish.release_data import write_release_data
from kristal.publish.validation import (
    KNOWN_PROFILES,
    PROFILE_CHECKS,
    ReleaseFiles,
    validation_report,
)
from kristal.store.s3 import ObjectStore
from kristal.trust.roots import ChannelTrust
from kristal.trust.signing import SigningKey, sign_document
from kristal.verify.trusted_state import TrustedVersions


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
    trusted: TrustedVersions | None = None,
    run_rows: int | None = None,
) -> PublishResult:
    """Publish `data` as release `release_id`; `run_rows` bounds the rows sorted in memory at a
    time (default `KRISTAL_PUBLISH_RUN_ROWS`, else 250,000)."""
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
            ExpectationsGiven,
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
        # One pass: parse and sort the input, write the triples and the assertions, hashing
        # each file and gathering what validation and the expectations need as it goes.
        written = write_release_data(data, tmp, shards if shards > 1 else 1, run_rows=run_rows)
        triples, blobs = written.triples, written.blobs
        uploads: list[tuple[str, Path]] = []
        documents: list[tuple[dict[str, Any], type[Any], str]] = []

        federation: dict[str, Any] | None = None
        shard_docs: list[dict[str, Any]] = []
        if shards > 1:
            for i, (blob_path, entry) in enumerate(
                    zip(blobs, written.blob_entries, strict=True)):
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
                "created_at": rfc3339(moment),
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
            exchange = sign_exchange(
                exchange_doc(written.blob_entries[0], generation, {"domain": "kristal-activate"}),
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

        triples_entry = written.triples_entry
        row_count = written.row_count
        expectations = written.expectations
        if given_expectations is not None:  # the fields it names; the rest as derived
            expectations = given_expectations.over(expectations)
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

        ctx = ReleaseFiles(triples, blobs, exchange, exchange_sha256, [pack], documents,
                           row_count, written.facts)
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
            "published_at": rfc3339(moment),
        }
        if federation:
            release["federation_id"] = federation["federation_id"]

        def add_release(index: ChannelIndex | None) -> dict[str, Any]:
            check_release_id_free(index, release_id)
            body = index_body(index)
            body["releases"].append(release)
            return body

        new_index = update_index(store, channel_id, trust, keys.authority, add_release, now=now,
                                 trusted=trusted)
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
