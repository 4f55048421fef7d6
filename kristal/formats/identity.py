"""Content identity of Kristal documents (DESIGN §2, upstream v5 exact).

ID = "sha256:" + hex(SHA-256(JCS(hash target))). The hash target is the document minus its own
ID field, minus `content_hash`, minus every `signatures`/`attestations` key at any depth, minus
the kind's extra exclusions (JSON pointers).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kristal.errors import IdentityMismatch, ManifestSchemaInvalid, PathInvalid
from kristal.formats.canonical import canonical_bytes, sha256_hex

ID_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
HEX64_PATTERN = re.compile(r"^[0-9a-f]{64}$")
_STRIPPED_AT_ANY_DEPTH = frozenset({"signatures", "attestations"})


class DocKind(StrEnum):
    EXCHANGE = "exchange"
    RUNTIME_PACK = "runtime-pack"
    FEDERATION = "federation"
    VALIDATION_REPORT = "validation-report"
    CHANNEL_INDEX = "channel-index"
    ROLLBACK_AUTHORIZATION = "rollback-authorization"
    CHANNEL_RECORD = "channel-record"


@dataclass(frozen=True)
class IdRule:
    id_field: str
    excluded_pointers: tuple[str, ...] = ()


ID_RULES: dict[DocKind, IdRule] = {
    DocKind.EXCHANGE: IdRule("kristal_id"),
    DocKind.RUNTIME_PACK: IdRule(
        "runtime_pack_id",
        (
            "/created_at",
            "/build/build_id",
            "/compiler/build_platform",
            "/integrity/pack_hash",
            "/integrity/manifest_hash",
        ),
    ),
    DocKind.FEDERATION: IdRule("federation_id", ("/manifest_id", "/created_at")),
    DocKind.VALIDATION_REPORT: IdRule("validation_report_id"),
    DocKind.CHANNEL_INDEX: IdRule("index_id"),
    DocKind.ROLLBACK_AUTHORIZATION: IdRule("authorization_id"),
    DocKind.CHANNEL_RECORD: IdRule("record_id"),
}


def check_id(value: object, what: str = "id") -> str:
    """Refuse anything that is not a full lowercase `sha256:<64 hex>` ID (before any I/O)."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        shown = repr(value)[:90]
        raise PathInvalid(
            f"{what} {shown} is not of the form sha256:<64 lowercase hex>", field=what
        )
    return value


def _strip_any_depth(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_any_depth(v) for k, v in value.items() if k not in _STRIPPED_AT_ANY_DEPTH}
    if isinstance(value, list):
        return [_strip_any_depth(v) for v in value]
    return value


def _drop_pointer(doc: dict[str, Any], pointer: str) -> None:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    node: Any = doc
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def hash_target(doc: dict[str, Any], kind: DocKind) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ManifestSchemaInvalid(f"{kind} document is not a JSON object")
    rule = ID_RULES[kind]
    target = copy.deepcopy(doc)
    target.pop(rule.id_field, None)
    target.pop("content_hash", None)
    for pointer in rule.excluded_pointers:
        _drop_pointer(target, pointer)
    stripped: dict[str, Any] = _strip_any_depth(target)
    return stripped


def canonical_target_bytes(doc: dict[str, Any], kind: DocKind) -> bytes:
    return canonical_bytes(hash_target(doc, kind))


def compute_id(doc: dict[str, Any], kind: DocKind) -> str:
    return "sha256:" + sha256_hex(canonical_target_bytes(doc, kind))


def digest_bytes(artifact_id: str) -> bytes:
    """The 32 raw bytes an Ed25519 signature covers (DESIGN §3)."""
    check_id(artifact_id)
    return bytes.fromhex(artifact_id.removeprefix("sha256:"))


def verify_identity(doc: dict[str, Any], kind: DocKind) -> str:
    """Recompute the ID; refuse a declared ID or `content_hash.value` that differs."""
    rule = ID_RULES[kind]
    recomputed = compute_id(doc, kind)
    declared = doc.get(rule.id_field)
    if declared is not None and declared != recomputed:
        raise IdentityMismatch(
            f"{kind} declares {rule.id_field}={str(declared)[:80]} but its content hashes to "
            f"{recomputed}",
            field=rule.id_field,
        )
    content_hash = doc.get("content_hash")
    if (
        isinstance(content_hash, dict)
        and "value" in content_hash
        and content_hash.get("value") != recomputed.removeprefix("sha256:")
    ):
        raise IdentityMismatch(
            f"{kind} content_hash.value does not equal its recomputed ID {recomputed}",
            field="content_hash",
        )
    return recomputed


def with_identity(
    doc: dict[str, Any], kind: DocKind, *, content_hash: bool = False
) -> dict[str, Any]:
    """Return a copy of `doc` with its ID field (and optionally `content_hash`) filled in."""
    out = dict(doc)
    new_id = compute_id(out, kind)
    out[ID_RULES[kind].id_field] = new_id
    if content_hash:
        out["content_hash"] = {"alg": "sha256", "value": new_id.removeprefix("sha256:")}
    return out
