"""Models of the published artifacts (DESIGN §1, §5): Exchange, Runtime Pack, federation root
and validation report, with the payload inventories they list.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kristal.errors import FileInventoryMissing, PathInvalid
from kristal.formats.layout import TRIPLES_PATH
from kristal.formats.models import (
    BLOBS_EXT,
    FEDERATION_EXT,
    GENERATION_EXT,
    Hex64,
    NonEmpty,
    Open,
    Sha256Id,
    Strict,
    parse_model,
    validate_relative_path,
)
from kristal.formats.pack_schema import check_pack_schema
from kristal.formats.time import Rfc3339


# --- payload inventories ---------------------------------------------------------------------
class FileEntry(Strict):
    path: str
    role: NonEmpty  # a pack's roles are the upstream schema's enum (checked there)
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
# The upstream schema (`pack_schema`) is checked first; these models then accept everything it
# accepts (IDs may be bare hex there: identity and binding checks refuse those later), and
# refuse beyond it only unsafe or repeated payload paths (`path_invalid`).
class SourceExchangeRef(Strict):
    exchange_id: str
    artifact_type: Literal["working_exchange", "reference_exchange"]
    exchange_manifest_hash: str | None = None
    exchange_version: str | None = None
    scope: dict[str, Any] | None = None


class Compiler(Strict):
    name: NonEmpty
    version: NonEmpty
    git_commit: str | None = None
    build_platform: str | None = None


class Build(Strict):
    build_id: str
    deterministic: Literal[True]
    canonicalization_profile: Literal["kristal.v5:jcs-rfc8785"]
    canonicalization_version: Literal["1"]
    config_hash: str
    compile_status: Literal["succeeded", "failed", "partial"]
    validation_status: str | None = None
    recognition_status: str | None = None
    publication_status: Any = None
    activation_status: Any = None
    reason_codes: list[str] | None = None


class QueryContractRef(Strict):
    contract_id: NonEmpty
    contract_hash: str | None = None
    contract_version: str | None = None


class Integrity(Strict):
    hash_alg: Literal["sha256"]
    pack_hash: str | None = None
    manifest_hash: str | None = None


class RuntimePackManifest(Strict):
    schema_version: Literal["5.0"]
    artifact_type: Literal["runtime_pack_manifest"]
    runtime_pack_id: str
    runtime_pack_version: NonEmpty
    created_at: Rfc3339
    source_exchange_ref: SourceExchangeRef
    source_artifact_status: str
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

    @model_validator(mode="before")
    @classmethod
    def _upstream_schema(cls, data: Any) -> Any:
        check_pack_schema(data)  # raises ManifestSchemaInvalid with the JSON path
        return data

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, files: list[FileEntry]) -> list[FileEntry]:
        seen: set[str] = set()
        for entry in files:
            if entry.path in seen:
                raise PydanticCustomError("path_invalid", f"duplicate path {entry.path!r}")
            seen.add(entry.path)
        return files

    def generation(self) -> int | None:
        value = (self.extensions or {}).get(GENERATION_EXT)
        return value if isinstance(value, int) else None

    def triples(self) -> FileEntry:
        """The pack's triples file (its query index is built from it)."""
        entry = next((e for e in self.files if e.path == TRIPLES_PATH), None)
        if entry is None:
            raise FileInventoryMissing(
                f"runtime pack {self.runtime_pack_id} lists no {TRIPLES_PATH}")
        return entry


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


