"""Channel-authority changes to the index: rollback authorizations, revocations, the floor.

Each is a signed, conditional change of the channel index (`channel_index.update_index`).
"""

from __future__ import annotations

from typing import Any

from kristal.channel.index import index_body, update_index
from kristal.context import Context
from kristal.errors import ChannelUnknown, ReleaseUnknown, UsageInvalid
from kristal.formats.channel_docs import ChannelIndex
from kristal.formats.identity import DocKind
from kristal.formats.models import validate_channel_id
from kristal.formats.time import parse_duration, rfc3339
from kristal.trust.signing import SigningKey, sign_document


def authorize(
    ctx: Context,
    authority: SigningKey,
    channel_id: str,
    release_id: int,
    reason: str,
    expires_in: str,
) -> dict[str, Any]:
    """Sign a rollback authorization for a published release and add it to the index."""
    validate_channel_id(channel_id)
    lifetime = parse_duration(expires_in)
    created: dict[str, Any] = {}

    def change(index: ChannelIndex | None) -> dict[str, Any]:
        if index is None:
            raise ChannelUnknown(f"{channel_id} has no index: nothing is published")
        entry = index.release(release_id)
        if entry is None:
            raise ReleaseUnknown(f"release {release_id} is not published in {channel_id}")
        moment = ctx.now()
        auth = sign_document(
            {
                "artifact_type": "rollback_authorization",
                "channel_id": channel_id,
                "target_release_id": release_id,
                "target_runtime_pack_ids": list(entry.runtime_pack_ids),
                "reason": reason,
                "issuer": authority.key_id,
                "issued_at": rfc3339(moment),
                "expires_at": rfc3339(moment + lifetime),
            },
            DocKind.ROLLBACK_AUTHORIZATION,
            authority,
            now=moment,
        )
        created.clear()
        created.update(auth)
        body = index_body(index)
        body["rollback_authorizations"].append(auth)
        return body

    update_index(ctx.store, channel_id, ctx.trust(channel_id), authority, change, now=ctx.now,
                 trusted=ctx.trusted)
    return created


def revoke(
    ctx: Context, authority: SigningKey, channel_id: str, release_id: int, reason: str
) -> ChannelIndex:
    def change(index: ChannelIndex | None) -> dict[str, Any]:
        if index is None:
            raise ChannelUnknown(f"{channel_id} has no index: nothing is published")
        if index.release(release_id) is None:
            raise ReleaseUnknown(f"release {release_id} is not published in {channel_id}")
        body = index_body(index)
        body["revoked"].append(
            {
                "target": {"release_id": release_id},
                "reason_code": reason,
                "effective_at": rfc3339(ctx.now()),
            }
        )
        return body

    return update_index(
        ctx.store, channel_id, ctx.trust(channel_id), authority, change, now=ctx.now,
        trusted=ctx.trusted,
    )


def set_floor(
    ctx: Context, authority: SigningKey, channel_id: str, release_id: int
) -> ChannelIndex:
    def change(index: ChannelIndex | None) -> dict[str, Any]:
        if index is None:
            raise ChannelUnknown(f"{channel_id} has no index: nothing is published")
        if release_id < 0:
            raise UsageInvalid("the floor is a release id >= 0")
        body = index_body(index)
        body["minimum_allowed_release_id"] = release_id
        return body

    return update_index(
        ctx.store, channel_id, ctx.trust(channel_id), authority, change, now=ctx.now,
        trusted=ctx.trusted,
    )
