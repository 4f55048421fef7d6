"""Pydantic v2 models for every document that crosses a boundary (DESIGN §1, §5, §6).

`parse_model` is the only way raw JSON becomes a model: a document that does not validate is
refused with `manifest_schema_invalid` naming the first field that failed. Identity and
signatures are always computed over the raw dict, never over a re-serialized model.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from kristal.errors import ManifestSchemaInvalid, PathInvalid

Sha256Id = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NonEmpty = Annotated[str, Field(min_length=1)]

CHANNEL_PART = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SHARD_MAJOR = re.compile(r"^(\d+)\.")

GENERATION_EXT = "kristal.activate/generation"
BLOBS_EXT = "kristal.activate/blobs"
FEDERATION_EXT = "kristal.activate/federation_id"
EXPECTATIONS_EXT = "kristal.activate/expectations"
SQLITE_PROFILE = "kristal.runtime/sqlite/1"
QUERY_CONTRACT = "kristal.v5:query:triple-pattern@1"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], raw: Any, *, what: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        error = PathInvalid if first["type"] == "path_invalid" else ManifestSchemaInvalid
        raise error(f"{what}: {loc}: {first['msg']}", field=loc) from None


def validate_relative_path(path: str) -> str:
    """A payload path: relative, `/`-separated; no `..`, backslash, control char, empty segment."""
    if not isinstance(path, str) or not path:
        raise PathInvalid("empty path")
    shown = repr(path)[:100]
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise PathInvalid(f"absolute path {shown}")
    if "\\" in path:
        raise PathInvalid(f"backslash in path {shown}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0x80 <= ord(ch) <= 0x9F for ch in path):
        raise PathInvalid(f"control character in path {shown}")
    if len(path.encode("utf-8")) > 1024:
        raise PathInvalid(f"path longer than 1024 bytes {shown}")
    for segment in path.split("/"):
        if segment == "":
            raise PathInvalid(f"empty segment in path {shown}")
        if segment in (".", ".."):
            raise PathInvalid(f"'{segment}' segment in path {shown}")
    # Packs are loose files: an archive would be unpacked outside our checks.
    if re.search(r"\.(tar|tgz|zip|gz|bz2|xz|zst|7z|rar)$", path, re.IGNORECASE):
        raise PathInvalid(f"archive in pack inventory {shown}: packs are loose files")
    return path


def validate_channel_id(channel_id: str) -> str:
    parts = channel_id.split("/") if isinstance(channel_id, str) else []
    if len(parts) != 3 or not all(CHANNEL_PART.fullmatch(p) for p in parts):
        raise PathInvalid(
            f"channel {str(channel_id)[:100]!r} is not <tenant>/<environment>/<region>, "
            "each [a-z0-9][a-z0-9-]{0,62}",
            field="channel_id",
        )
    return channel_id


# --- payload inventories ---------------------------------------------------------------------
class FileEntry(Strict):
    path: str
    role: Literal[
        "parquet_data",
        "index",
        "bitmap",
        "membership_filter",
        "dictionary",
        "metadata",
        "statistics",
        "other",
    ]
    sha256: Hex64
    size_bytes: int = Field(ge=0)
    mime_type: str | None = None

    @field_validator("path")
    @classmethod
    def _safe_path(cls, value: str) -> str:
        try:
            return validate_relative_path(value)
        except PathInvalid as exc:
            raise PydanticCustomError("path_invalid", exc.message) from None


class Signed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    signatures: list[dict[str, Any]] = Field(default_factory=list)


# --- Exchange (upstream v5, reduced to what we read; unknown fields are carried) --------------
class ContentHash(Strict):
    alg: Literal["sha256"]
    value: Hex64


class Assertion(Open):
    assertion_id: NonEmpty
    subject: NonEmpty
    predicate: NonEmpty
    object: NonEmpty
    assertion_status: str
    certainty_level: str


class ExchangeManifest(Open):
    schema_version: str = Field(pattern=r"^5\.\d+$")
    artifact_type: Literal["working_exchange", "reference_exchange"]
    exchange_version: str
    kristal_id: Sha256Id
    content_hash: ContentHash | None = None
    artifact_status: Literal["working", "reference", "candidate", "deprecated"]
    canonicalization_profile: Literal["kristal.v5:jcs-rfc8785"]
    canonicalization_version: Literal["1"]
    scope: dict[str, Any]
    assertions: list[Assertion] = Field(default_factory=list)
    validation_refs: list[Any] = Field(default_factory=list)
    authority_recognition_refs: list[Any] = Field(default_factory=list)
    reader_policy_refs: list[Any] = Field(default_factory=list)
    extensions: dict[str, Any] = Field(default_factory=dict)
    signatures: list[dict[str, Any]] = Field(default_factory=list)

    def blobs(self) -> list[FileEntry]:
        raw = self.extensions.get(BLOBS_EXT, [])
        return [parse_model(FileEntry, entry, what="exchange blob") for entry in raw]

    def generation(self) -> int | None:
        value = self.extensions.get(GENERATION_EXT)
        return value if isinstance(value, int) else None

    def federation_id(self) -> str | None:
        value = self.extensions.get(FEDERATION_EXT)
        return value if isinstance(value, str) else None


# --- Runtime Pack (upstream v5: 14 required fields, additionalProperties false) --------------
class SourceExchangeRef(Strict):
    exchange_id: Sha256Id
    artifact_type: Literal["working_exchange", "reference_exchange"]
    exchange_manifest_hash: Sha256Id
    exchange_version: str


class Compiler(Strict):
    name: NonEmpty
    version: NonEmpty
    git_commit: str | None = None
    build_platform: str | None = None


class Build(Strict):
    build_id: str | None = None
    deterministic: bool
    canonicalization_profile: Literal["kristal.v5:jcs-rfc8785"]
    canonicalization_version: Literal["1"]
    config_hash: Sha256Id
    compile_status: Literal["succeeded", "failed", "partial"]


class QueryContractRef(Strict):
    contract_id: NonEmpty
    contract_version: NonEmpty


class Integrity(Strict):
    hash_alg: Literal["sha256"]
    pack_hash: str | None = None
    manifest_hash: str | None = None


class RuntimePackManifest(Strict):
    schema_version: str = Field(pattern=r"^5\.\d+$")
    artifact_type: Literal["runtime_pack_manifest"]
    runtime_pack_id: Sha256Id
    runtime_pack_version: NonEmpty
    created_at: datetime
    source_exchange_ref: SourceExchangeRef
    source_artifact_status: Literal["working", "reference", "candidate", "deprecated"]
    compiler: Compiler
    build: Build
    policies: dict[str, Any]
    reader_policy_refs: list[Any]
    query_contract_ref: QueryContractRef
    files: list[FileEntry] = Field(min_length=1)
    integrity: Integrity
    profiles: list[str] | None = None
    validation_refs: list[Any] | None = None
    authority_recognition_refs: list[Any] | None = None
    query_capabilities: dict[str, Any] | None = None
    signatures: list[dict[str, Any]] | None = None
    extensions: dict[str, Any] | None = None

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, files: list[FileEntry]) -> list[FileEntry]:
        seen: set[str] = set()
        for entry in files:
            if entry.path in seen:
                raise ValueError(f"duplicate path {entry.path!r}")
            seen.add(entry.path)
        return files

    def generation(self) -> int | None:
        value = (self.extensions or {}).get(GENERATION_EXT)
        return value if isinstance(value, int) else None


# --- Federation root --------------------------------------------------------------------------
class ShardRef(Strict):
    shard_id: NonEmpty
    scope: dict[str, Any]
    artifact_status: str
    shard_manifest_ref: str
    shard_manifest_hash: Sha256Id


class FederationManifest(Strict):
    schema_version: str = Field(pattern=r"^\d+\.\d+$")
    artifact_type: Literal["exchange_federation_manifest"]
    federation_id: Sha256Id
    manifest_id: str | None = None
    created_at: datetime | None = None
    shards: list[ShardRef] = Field(min_length=1)
    extensions: dict[str, Any] = Field(default_factory=dict)
    signatures: list[dict[str, Any]] = Field(default_factory=list)

    def generation(self) -> int | None:
        value = self.extensions.get(GENERATION_EXT)
        return value if isinstance(value, int) else None


# --- Validation report ------------------------------------------------------------------------
class Finding(Strict):
    check_id: NonEmpty
    status: Literal["passed", "failed", "warning"]
    message: str


class ValidationReport(Strict):
    artifact_type: Literal["validation_report"] = "validation_report"
    validation_report_id: Sha256Id
    profile: NonEmpty
    target_artifact_ids: list[Sha256Id] = Field(min_length=1)
    result: Literal["passed", "failed"]
    findings: list[Finding]
    validator: NonEmpty
    created_at: datetime
    expires_at: datetime
    signatures: list[dict[str, Any]] = Field(default_factory=list)


# --- Channel index ----------------------------------------------------------------------------
class ReleaseEntry(Strict):
    release_id: int = Field(ge=1)
    generation: int = Field(ge=0)
    exchange_id: Sha256Id
    runtime_pack_ids: list[Sha256Id] = Field(min_length=1)
    federation_id: Sha256Id | None = None
    validation_report_ids: list[Sha256Id]
    published_at: datetime


class RevocationTarget(Strict):
    release_id: int | None = None
    artifact_id: Sha256Id | None = None


class Revocation(Strict):
    target: RevocationTarget
    reason_code: NonEmpty
    effective_at: datetime


class RollbackAuthorization(Strict):
    artifact_type: Literal["rollback_authorization"] = "rollback_authorization"
    authorization_id: Sha256Id
    channel_id: str
    target_release_id: int = Field(ge=1)
    target_runtime_pack_ids: list[Sha256Id] = Field(min_length=1)
    reason: NonEmpty
    issuer: NonEmpty
    issued_at: datetime
    expires_at: datetime
    signatures: list[dict[str, Any]] = Field(default_factory=list)


class ChannelIndex(Strict):
    artifact_type: Literal["channel_index"] = "channel_index"
    index_id: Sha256Id
    channel_id: str
    index_version: int = Field(ge=1)
    releases: list[ReleaseEntry]
    minimum_allowed_release_id: int = Field(ge=0)
    revoked: list[Revocation] = Field(default_factory=list)
    rollback_authorizations: list[dict[str, Any]] = Field(default_factory=list)
    expires_at: datetime
    updated_at: datetime | None = None
    signatures: list[dict[str, Any]] = Field(default_factory=list)

    def release(self, release_id: int) -> ReleaseEntry | None:
        return next((r for r in self.releases if r.release_id == release_id), None)

    def revocation_for(self, release: ReleaseEntry, now: datetime) -> Revocation | None:
        """The revocation in effect at `now` naming this release or any of its artifacts."""
        artifact_ids = {release.exchange_id, *release.runtime_pack_ids}
        if release.federation_id:
            artifact_ids.add(release.federation_id)
        for rev in self.revoked:
            if rev.effective_at > now:
                continue
            if rev.target.release_id == release.release_id:
                return rev
            if rev.target.artifact_id is not None and rev.target.artifact_id in artifact_ids:
                return rev
        return None


# --- Activation record (upstream v9 kristal_activation, extended) -----------------------------
class ReleaseRef(Strict):
    release_id: int
    generation: int
    exchange_id: Sha256Id
    runtime_pack_ids: list[Sha256Id]
    federation_id: Sha256Id | None = None

    @classmethod
    def of(cls, entry: ReleaseEntry) -> ReleaseRef:
        return cls(
            release_id=entry.release_id,
            generation=entry.generation,
            exchange_id=entry.exchange_id,
            runtime_pack_ids=list(entry.runtime_pack_ids),
            federation_id=entry.federation_id,
        )


class LastKnownGood(Strict):
    sequence: int
    release_id: int


ActivationKind = Literal["activate", "rollback", "auto_rollback", "downgrade"]


class ActivationRecord(Strict):
    schema_version: Literal["9.0"] = "9.0"
    artifact_type: Literal["kristal_activation"] = "kristal_activation"
    channel_id: str
    sequence: int = Field(ge=1)
    activation_id: str = Field(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )
    kind: ActivationKind
    active: ReleaseRef
    previous: ReleaseRef | None
    previous_sequence: int | None = None
    last_known_good: LastKnownGood | None
    highest_activated_release_id: int
    index_version: int
    rollback_mode: bool
    forced: bool
    operator: NonEmpty
    reason: NonEmpty
    correlation_id: NonEmpty
    flow_run_id: str | None
    created_at: datetime
    evidence: dict[str, Any]
    prev_record_sha256: Sha256Id | None


class CheckRecord(Strict):
    artifact_type: Literal["kristal_activation_checks"] = "kristal_activation_checks"
    channel_id: str
    sequence: int
    activation_id: str
    release_id: int
    result: Literal["passed", "failed"]
    reason: str
    figures: dict[str, Any]
    previous_figures: dict[str, Any] | None
    created_at: datetime


class QuarantineRecord(Strict):
    artifact_type: Literal["kristal_quarantine"] = "kristal_quarantine"
    channel_id: str
    release_id: int
    reason: str
    sequence: int
    activation_id: str
    created_at: datetime
