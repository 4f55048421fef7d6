"""The local trust file (DESIGN §3): which keys may sign what, per channel, and how many must.

Rules: the trust file is local configuration, never read from the bucket being verified; the most
specific entry matching a channel applies (exact id > longest prefix glob > `*`), nothing merged.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from kristal.errors import ManifestSchemaInvalid, TrustRootMissing
from kristal.formats.bake_docs import BakePolicy
from kristal.formats.canonical import parse_json
from kristal.formats.models import CHANNEL_PART_PATTERN, parse_model, validate_channel_id
from kristal.formats.time import Rfc3339

Role = Literal["publisher", "validator", "channel-authority", "activator"]
ROLES: tuple[Role, ...] = ("publisher", "validator", "channel-authority", "activator")
DEFAULT_REQUIRED_PROFILES: tuple[str, ...] = ("schema", "ordering", "row-count", "source-binding")

KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PART = CHANNEL_PART_PATTERN
# An entry names one channel exactly, or a prefix of whole parts followed by `/*`, or `*`.
_CHANNEL_SELECTOR = re.compile(rf"^(\*|{_PART}/\*|{_PART}/{_PART}/\*|{_PART}/{_PART}/{_PART})$")
_B64_CHARS = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")


# --- encodings shared by trust roots and signatures ------------------------------------------
def b64url_encode(data: bytes) -> str:
    """base64url without padding: what we emit everywhere (DESIGN §3)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode_any(text: str) -> bytes:
    """Decode base64url without padding or padded standard base64; refuse anything else.

    Strict on purpose: garbage characters, mixed alphabets, bad padding and non-zero trailing bits
    raise `ValueError`, so one byte string has exactly one accepted spelling per alphabet.
    """
    if not isinstance(text, str) or not _B64_CHARS.fullmatch(text):
        raise ValueError("not base64: characters outside the base64/base64url alphabets")
    if ("-" in text or "_" in text) and ("+" in text or "/" in text):
        raise ValueError("not base64: mixes the base64 and base64url alphabets")
    body = text.rstrip("=")
    if "=" in text and len(text) % 4 != 0:
        raise ValueError("not base64: padding does not complete a 4-character group")
    if len(body) % 4 == 1:
        raise ValueError("not base64: truncated (length leaves a dangling character)")
    standard = body.replace("-", "+").replace("_", "/")
    try:
        data = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None
    # Reject non-canonical trailing bits (e.g. "AB==" for b"\x00"): one spelling per value.
    if base64.b64encode(data).decode("ascii").rstrip("=") != standard:
        raise ValueError("not base64: non-zero trailing bits")
    return data


KeyId = Annotated[StrictStr, Field(pattern=KEY_ID_PATTERN.pattern)]


# --- the trust file --------------------------------------------------------------------------
class TrustedKey(BaseModel):
    """One trusted Ed25519 public key, the roles it may sign for, and its validity window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: KeyId
    public_key: StrictStr
    roles: list[Role] = Field(min_length=1)
    not_before: Rfc3339 | None = None
    not_after: Rfc3339 | None = None

    @field_validator("public_key")
    @classmethod
    def _raw_32_bytes(cls, value: str) -> str:
        if len(b64decode_any(value)) != 32:
            raise ValueError("must be the raw 32-byte Ed25519 public key, base64url")
        return value

    @model_validator(mode="after")
    def _window_ordered(self) -> TrustedKey:
        if self.not_before and self.not_after and self.not_before > self.not_after:
            raise ValueError(f"key {self.key_id}: not_before is after not_after")
        return self

    def raw_public_key(self) -> bytes:
        return b64decode_any(self.public_key)

    def valid_at(self, now: datetime) -> bool:
        if self.not_before is not None and now < self.not_before:
            return False
        return self.not_after is None or now <= self.not_after


def _default_thresholds() -> dict[Role, int]:
    return dict.fromkeys(ROLES, 1)


class ApprovalPolicy(BaseModel):
    """A channel's rules for a downgrade's human approval (trust-file entry `approval`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    required: bool = False  # every downgrade waits for an approval, asked for or not
    four_eyes: bool = False  # the approver may not be the operator who asked for it
    timeout: StrictStr = "1h"  # no decision by then: rejected, and recorded as such


class ChannelTrust(BaseModel):
    """The trust roots of one channel entry: keys, revocations, thresholds, required profiles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: list[TrustedKey]
    revoked_key_ids: list[StrictStr] = Field(default_factory=list)
    thresholds: dict[Role, Annotated[StrictInt, Field(ge=1)]] = Field(
        default_factory=_default_thresholds
    )
    required_profiles: list[StrictStr] = Field(
        default_factory=lambda: list(DEFAULT_REQUIRED_PROFILES)
    )
    # Channel policy: does a failed nightly re-verification roll the channel back, or only alert?
    reverify_rollback: bool = False
    # How long a release must hold up live before it counts as known-good (None: the default
    # for the channel's environment, `bake_docs.default_policy`).
    bake: BakePolicy | None = None
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)

    @field_validator("thresholds")
    @classmethod
    def _every_role_has_a_threshold(cls, value: dict[Role, int]) -> dict[Role, int]:
        # A role the file leaves out keeps the default of one signature, never zero.
        return {**_default_thresholds(), **value}

    @field_validator("keys")
    @classmethod
    def _unique_key_ids(cls, value: list[TrustedKey]) -> list[TrustedKey]:
        seen: set[str] = set()
        for key in value:
            if key.key_id in seen:
                raise ValueError(f"key_id {key.key_id} is listed twice")
            seen.add(key.key_id)
        return value

    def key(self, key_id: str) -> TrustedKey | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def is_revoked(self, key_id: str) -> bool:
        return key_id in self.revoked_key_ids

    def threshold(self, role: str) -> int:
        return self.thresholds[role]  # type: ignore[index]


class TrustFile(BaseModel):
    """`{"channels": {selector: ChannelTrust}}`; selectors are a channel id, `prefix/*` or `*`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: dict[StrictStr, ChannelTrust]

    @field_validator("channels")
    @classmethod
    def _selectors_well_formed(cls, value: dict[str, ChannelTrust]) -> dict[str, ChannelTrust]:
        # A selector that can never match (a typo, a mid-string glob) would silently fall
        # through to a broader entry: refuse it instead.
        for selector in value:
            if not _CHANNEL_SELECTOR.fullmatch(selector):
                raise ValueError(
                    f"channel selector {selector!r} is not <tenant>/<env>/<region>, "
                    "a whole-part prefix ending in /* (acme/*, acme/prod/*), or *"
                )
        return value

    def for_channel(self, channel_id: str) -> ChannelTrust:
        """The single most specific entry for `channel_id`; `TrustRootMissing` if none matches."""
        validate_channel_id(channel_id)
        if channel_id in self.channels:
            return self.channels[channel_id]
        best: tuple[int, str] | None = None
        for selector in self.channels:
            if selector == "*":
                rank = 0
            elif selector.endswith("/*") and channel_id.startswith(selector[:-1]):
                rank = selector.count("/")  # number of whole parts before the `*`
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, selector)
        if best is None:
            raise TrustRootMissing(
                f"the trust file has no entry for channel {channel_id} (no prefix/* or * either)",
                field="channels",
            )
        return self.channels[best[1]]


def load_trust_file(path: Path) -> TrustFile:
    """Read and strictly validate the local trust file named by `KRISTAL_TRUST_FILE`."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TrustRootMissing(f"trust file {path} does not exist") from None
    except OSError as exc:
        raise TrustRootMissing(f"trust file {path} cannot be read: {exc.strerror}") from None
    raw = parse_json(data, what=f"trust file {path}")
    if not isinstance(raw, dict):
        raise ManifestSchemaInvalid(f"trust file {path}: <root>: must be a JSON object")
    return parse_model(TrustFile, raw, what=f"trust file {path}")
