"""Reading and changing a channel's signed index (DESIGN §5).

Every change (publish, authorize, revoke, floor) is read, verified, changed, re-signed by the
channel authority and written with `If-Match` on the ETag of that read (`If-None-Match: *` when
the index is created); a lost race re-reads and re-applies the change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kristal.errors import ManifestSchemaInvalid, ObjectNotFound, PointerConflict
from kristal.formats import layout
from kristal.formats.canonical import canonical_bytes, parse_json
from kristal.formats.channel_docs import ChannelIndex
from kristal.formats.identity import DocKind, verify_identity
from kristal.formats.models import parse_model
from kristal.formats.time import rfc3339
from kristal.store.s3 import ObjectStore, WriteStatus
from kristal.trust.roots import ChannelTrust

if TYPE_CHECKING:
    from kristal.verify.trusted_state import TrustedVersions
from kristal.trust.signing import SigningKey, require_signatures, sign_document

MAX_INDEX_BYTES = 16 * 1024 * 1024
DEFAULT_INDEX_LIFETIME = timedelta(days=90)
UPDATE_ATTEMPTS = 8


@dataclass(frozen=True)
class IndexRead:
    raw_bytes: bytes
    etag: str
    index: ChannelIndex


def read_index_bytes(store: ObjectStore, channel_id: str) -> tuple[bytes, str] | None:
    try:
        return store.get_bytes(layout.channel_index(channel_id), max_bytes=MAX_INDEX_BYTES)
    except ObjectNotFound:
        return None


def load_verified_index(
    raw: bytes, channel_id: str, trust: ChannelTrust, *, now: datetime
) -> ChannelIndex:
    """The index in `raw`, verified as readers and writers both need it: strict JSON, its
    shape, its `index_id`, the channel-authority signatures (threshold) and its channel.
    Expiry and replay are the reader's rules (`ReleaseVerifier.update_index`)."""
    return verify_index(raw, channel_id, trust, now=now)[0]


def verify_index(
    raw: bytes, channel_id: str, trust: ChannelTrust, *, now: datetime
) -> tuple[ChannelIndex, str]:
    """`load_verified_index`, with the verified `index_id`."""
    doc = parse_json(raw, max_bytes=MAX_INDEX_BYTES, what="channel index")
    if not isinstance(doc, dict):
        raise ManifestSchemaInvalid("channel index is not a JSON object")
    index = parse_model(ChannelIndex, doc, what="channel index")
    verify_identity(doc, DocKind.CHANNEL_INDEX)
    index_id = require_signatures(
        doc, DocKind.CHANNEL_INDEX, trust, "channel-authority", now=now, what="channel index"
    )
    if index.channel_id != channel_id:
        raise ManifestSchemaInvalid(
            f"channel index is for {index.channel_id!r}, not {channel_id!r}", field="channel_id")
    return index, index_id


def update_index(
    store: ObjectStore,
    channel_id: str,
    trust: ChannelTrust,
    authority: SigningKey,
    change: Callable[[ChannelIndex | None], dict[str, Any]],
    *,
    now: Callable[[], datetime],
    lifetime: timedelta = DEFAULT_INDEX_LIFETIME,
    trusted: TrustedVersions | None = None,
) -> ChannelIndex:
    """Apply `change` (current index or None -> new body without ID/signatures) and commit it.

    `change` may raise a coded error to refuse; it is re-run on the fresh index after a lost race.
    """
    store.ensure_conditional_writes()
    for _attempt in range(UPDATE_ATTEMPTS):
        current = read_index_bytes(store, channel_id)
        index = load_verified_index(current[0], channel_id, trust, now=now()) if current else None
        body = change(index)
        moment = now()
        body.update(
            artifact_type="channel_index",
            channel_id=channel_id,
            index_version=(index.index_version + 1) if index else 1,
            updated_at=rfc3339(moment),
            expires_at=rfc3339(moment + lifetime),
        )
        body.pop("index_id", None)
        body.pop("signatures", None)
        signed = sign_document(body, DocKind.CHANNEL_INDEX, authority, now=moment)
        new_index = parse_model(ChannelIndex, signed, what="new channel index")
        data = canonical_bytes(signed)
        key = layout.channel_index(channel_id)
        outcome = (
            store.put_if_match(key, data, current[1]) if current else store.put_if_absent(key, data)
        )
        if outcome.status is WriteStatus.WRITTEN or (
                outcome.status is WriteStatus.UNKNOWN
                and (after := read_index_bytes(store, channel_id)) is not None
                and after[0] == data):
            if trusted is not None:
                trusted.remember(channel_id, new_index.index_version)
            return new_index
        time.sleep(0.05 * (_attempt + 1))
    raise PointerConflict(
        f"channel index of {channel_id} kept changing under us ({UPDATE_ATTEMPTS} attempts)"
    )


def index_body(index: ChannelIndex | None) -> dict[str, Any]:
    """A mutable JSON body of the current index, or an empty one."""
    if index is None:
        return {
            "releases": [],
            "minimum_allowed_release_id": 0,
            "revoked": [],
            "rollback_authorizations": [],
        }
    body = index.model_dump(mode="json", exclude_none=True)
    return body


