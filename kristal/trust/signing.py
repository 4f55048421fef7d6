"""Ed25519 signatures over an artifact's recomputed ID (DESIGN §3).

The signed message is the 32 raw digest bytes of the ID recomputed from the document, never the
declared one. Signatures live in the top-level `signatures[]` and are outside the hash target, so
signing never changes the ID. A threshold counts distinct public keys, not signature entries.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from kristal.errors import (
    IdentityMismatch,
    KeyExpired,
    KeyRevoked,
    KeyUnknown,
    ManifestSchemaInvalid,
    SignatureInvalid,
    SignatureMissing,
    UsageInvalid,
)
from kristal.formats.identity import ID_RULES, DocKind, digest_bytes, verify_identity, with_identity
from kristal.formats.time import Rfc3339, rfc3339, utc_now
from kristal.trust.roots import ROLES, ChannelTrust, b64decode_any, b64url_encode

__all__ = [
    "ALG",
    "ROLE_FOR_KIND",
    "Signature",
    "SignatureCheck",
    "SignatureStatus",
    "SigningKey",
    "b64decode_any",
    "b64url_encode",
    "check_signatures",
    "require_signatures",
    "sign_document",
]

ALG = "ed25519"
SIGNATURE_BYTES = 64

# Who signs what (DESIGN §3); callers pass the role explicitly, this is the usual choice.
ROLE_FOR_KIND: dict[DocKind, str] = {
    DocKind.EXCHANGE: "publisher",
    DocKind.RUNTIME_PACK: "publisher",
    DocKind.FEDERATION: "publisher",
    DocKind.VALIDATION_REPORT: "validator",
    DocKind.CHANNEL_INDEX: "channel-authority",
    DocKind.ROLLBACK_AUTHORIZATION: "channel-authority",
    DocKind.CHANNEL_RECORD: "activator",
}


class SignatureStatus(StrEnum):
    """Upstream v5 per-signature outcomes."""

    VERIFIED = "verified"
    FAILED = "failed"
    MISSING_KEY = "missing_key"
    EXPIRED = "expired"
    MALFORMED = "malformed"
    IDENTITY_MISMATCH = "identity_mismatch"
    UNSUPPORTED_ALG = "unsupported_alg"
    POLICY_NOT_SATISFIED = "policy_not_satisfied"


class Signature(BaseModel):
    """One entry of a document's top-level `signatures[]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: StrictStr
    alg: StrictStr
    signature: StrictStr
    created_at: Rfc3339


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private_key: Ed25519PrivateKey
    roles: tuple[str, ...]


@dataclass(frozen=True)
class SignatureCheck:
    key_id: str
    status: SignatureStatus
    detail: str


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise UsageInvalid("`now` must be a timezone-aware datetime")


def sign_document(
    doc: dict[str, Any], kind: DocKind, key: SigningKey, *, now: datetime | None = None
) -> dict[str, Any]:
    """Return a copy of `doc` with its ID set and `key`'s signature appended to `signatures[]`.

    A `content_hash` already present is refreshed too, so the copy always verifies.
    """
    moment = now or utc_now()
    _require_aware(moment)
    existing = doc.get("signatures", [])
    if not isinstance(existing, list):
        raise ManifestSchemaInvalid(f"{kind} `signatures` is not a list", field="signatures")
    signed = with_identity(copy.deepcopy(doc), kind, content_hash="content_hash" in doc)
    artifact_id: str = signed[ID_RULES[kind].id_field]
    signature = key.private_key.sign(digest_bytes(artifact_id))
    signed["signatures"] = [
        *existing,
        {
            "key_id": key.key_id,
            "alg": ALG,
            "signature": b64url_encode(signature),
            "created_at": rfc3339(moment),
        },
    ]
    return signed


def _entry_key_id(entry: Any) -> str:
    key_id = entry.get("key_id") if isinstance(entry, dict) else None
    return key_id if isinstance(key_id, str) else "<none>"


def _check_one(
    entry: Any, digest: bytes, trust: ChannelTrust, role: str, now: datetime
) -> SignatureCheck:
    key_id = _entry_key_id(entry)
    try:
        sig = Signature.model_validate(entry)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "entry"
        return SignatureCheck(key_id, SignatureStatus.MALFORMED, f"{where}: {first['msg']}")
    # Key-level verdicts come first: they hold whatever the signature bytes are.
    if trust.is_revoked(key_id):
        return SignatureCheck(key_id, SignatureStatus.POLICY_NOT_SATISFIED, "key is revoked")
    trusted = trust.key(key_id)
    if trusted is None:
        return SignatureCheck(key_id, SignatureStatus.MISSING_KEY, "key is not in the trust roots")
    if role not in trusted.roles:
        return SignatureCheck(
            key_id,
            SignatureStatus.POLICY_NOT_SATISFIED,
            f"key may sign as {', '.join(trusted.roles)}, not as {role}",
        )
    if not trusted.valid_at(now):
        window = f"{trusted.not_before or '-inf'} .. {trusted.not_after or '+inf'}"
        return SignatureCheck(
            key_id, SignatureStatus.EXPIRED, f"key is valid {window}, not at {rfc3339(now)}"
        )
    if sig.alg != ALG:
        return SignatureCheck(
            key_id, SignatureStatus.UNSUPPORTED_ALG, f"alg {sig.alg[:40]!r} is not {ALG}"
        )
    try:
        raw = b64decode_any(sig.signature)
    except ValueError as exc:
        return SignatureCheck(key_id, SignatureStatus.MALFORMED, str(exc))
    if len(raw) != SIGNATURE_BYTES:
        detail = f"signature is {len(raw)} bytes, not {SIGNATURE_BYTES}"
        return SignatureCheck(key_id, SignatureStatus.MALFORMED, detail)
    try:
        Ed25519PublicKey.from_public_bytes(trusted.raw_public_key()).verify(raw, digest)
    except InvalidSignature:
        return SignatureCheck(
            key_id, SignatureStatus.FAILED, "signature does not verify over the recomputed ID"
        )
    return SignatureCheck(key_id, SignatureStatus.VERIFIED, "verified")


def check_signatures(
    doc: dict[str, Any], kind: DocKind, trust: ChannelTrust, role: str, *, now: datetime
) -> tuple[str, list[SignatureCheck]]:
    """Recompute the ID and judge every signature entry for `role` at `now`.

    A declared ID that differs from the recomputed one raises `IdentityMismatch`; its `checks`
    attribute then reports every signature as `identity_mismatch` (none of them counts).
    """
    _require_aware(now)
    if role not in ROLES:
        raise UsageInvalid(f"unknown signing role {role!r}; expected one of {', '.join(ROLES)}")
    entries = doc.get("signatures", []) if isinstance(doc, dict) else []
    if not isinstance(entries, list):
        entries = [entries]  # judged (as malformed) rather than crashing on it
    try:
        artifact_id = verify_identity(doc, kind)
    except IdentityMismatch as exc:
        exc.checks = [  # type: ignore[attr-defined]
            SignatureCheck(_entry_key_id(e), SignatureStatus.IDENTITY_MISMATCH, exc.message)
            for e in entries
        ]
        raise
    digest = digest_bytes(artifact_id)
    return artifact_id, [_check_one(e, digest, trust, role, now) for e in entries]


def require_signatures(
    doc: dict[str, Any],
    kind: DocKind,
    trust: ChannelTrust,
    role: str,
    *,
    now: datetime,
    what: str,
) -> str:
    """Return the recomputed ID if enough distinct trusted `role` keys signed it; else raise.

    The error is the most specific one that explains the shortfall: `signature_missing`,
    `key_revoked`, `key_expired`, `key_unknown` (only unknown keys), else `signature_invalid`
    (bad bytes, wrong role, unsupported alg, malformed, too few distinct keys).
    """
    artifact_id, checks = check_signatures(doc, kind, trust, role, now=now)
    needed = trust.threshold(role)
    verified_keys = {
        trust.key(c.key_id).raw_public_key()  # type: ignore[union-attr]
        for c in checks
        if c.status is SignatureStatus.VERIFIED
    }
    if len(verified_keys) >= needed:
        return artifact_id

    subject = f"{what} {artifact_id}"
    if not checks:
        raise SignatureMissing(f"{subject} carries no signatures ({role} signature required)")
    summary = "; ".join(f"{c.key_id}: {c.status.value} ({c.detail})" for c in checks)
    shortfall = (
        f"{subject} needs {needed} verified {role} signature(s) from distinct keys, "
        f"has {len(verified_keys)} [{summary}]"
    )
    revoked = [c.key_id for c in checks if trust.is_revoked(c.key_id)]
    expired = [c.key_id for c in checks if c.status is SignatureStatus.EXPIRED]
    unknown = [c.key_id for c in checks if c.status is SignatureStatus.MISSING_KEY]
    if revoked:
        raise KeyRevoked(f"{subject} is signed by revoked key {', '.join(revoked)}; {shortfall}",
                         field="signatures")
    if expired:
        raise KeyExpired(
            f"{subject} is signed by key {', '.join(expired)} outside its validity window; "
            f"{shortfall}",
            field="signatures",
        )
    if len(unknown) == len(checks):
        raise KeyUnknown(
            f"{subject} is signed only by key(s) not trusted for this channel: "
            f"{', '.join(unknown)}; {shortfall}",
            field="signatures",
        )
    raise SignatureInvalid(shortfall, field="signatures")
