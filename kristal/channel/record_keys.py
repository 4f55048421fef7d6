"""Activator signatures on channel records (DESIGN §3, §6): every pointer, history, checks and
quarantine record this system writes carries `record_id` and an `activator` signature over it,
and every read checks them against the local trust file before the record is used.

Key validity is judged at the record's `created_at` (a record outlives the key that signed it:
a rotated activator key must not make a channel's history unreadable); a revoked key never counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from kristal.errors import KristalError, PointerInvalid, UsageInvalid
from kristal.formats.bake_docs import BakeMeasurement, BakeVerdict
from kristal.formats.channel_docs import ActivationRecord, CheckRecord, QuarantineRecord
from kristal.formats.identity import DocKind
from kristal.store.s3 import ObjectStore
from kristal.trust.roots import ChannelTrust, TrustFile
from kristal.trust.signing import SigningKey, require_signatures, sign_document

ROLE = "activator"
R = TypeVar("R", ActivationRecord, CheckRecord, QuarantineRecord, BakeMeasurement, BakeVerdict)
AnyRecord = (ActivationRecord | CheckRecord | QuarantineRecord | BakeMeasurement | BakeVerdict)


@dataclass
class RecordKeys:
    """The trust file channel records are verified against, and (loaded on first use, only by
    a process that writes records) this process's activator key."""

    trust_file: TrustFile
    load_signer: Callable[[], SigningKey] | None = None
    _signer: SigningKey | None = field(default=None, repr=False)

    def trust(self, channel_id: str) -> ChannelTrust:
        return self.trust_file.for_channel(channel_id)

    def signer(self) -> SigningKey:
        if self._signer is None:
            if self.load_signer is None:
                raise UsageInvalid("this process has no activator key: it cannot write records")
            key = self.load_signer()
            if ROLE not in key.roles:
                raise UsageInvalid(f"key {key.key_id} is not an {ROLE} key")
            self._signer = key
        return self._signer


class ChannelAccess(Protocol):
    """What reading and writing channel records needs: the bucket and the record keys (a
    `Context` is one)."""

    @property
    def store(self) -> ObjectStore: ...

    @property
    def keys(self) -> RecordKeys: ...


def sign_record(keys: RecordKeys, record: R) -> R:
    """`record` with its `record_id` and this process's activator signature (replacing any)."""
    body = record.model_dump(mode="json")
    body.pop("record_id", None)
    body["signatures"] = []
    signed = sign_document(body, DocKind.CHANNEL_RECORD, keys.signer(), now=record.created_at)
    return type(record).model_validate(signed)


def verify_record(keys: RecordKeys, raw: dict[str, Any], record: AnyRecord, *,
                  what: str) -> None:
    """Raise `PointerInvalid` unless `raw` (the record exactly as stored) carries its
    `record_id` and enough valid activator signatures of its channel's trust entry."""
    if not isinstance(raw.get("record_id"), str):
        raise PointerInvalid(f"{what} of {record.channel_id} carries no record_id: it was not "
                             "written and signed by an activator", field="record_id")
    moment: datetime = record.created_at
    trust = keys.trust(record.channel_id)  # no entry for the channel: trust_root_missing
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise PointerInvalid(f"{what} of {record.channel_id}: created_at has no time zone",
                             field="created_at")
    try:
        require_signatures(raw, DocKind.CHANNEL_RECORD, trust, ROLE, now=moment, what=what)
    except KristalError as exc:
        raise PointerInvalid(f"{what} of {record.channel_id} is not a record an activator of "
                             f"this channel signed ({exc.code}: {exc.message})",
                             field="signatures") from None
