"""Channel-authority changes to the index: rollback authorizations, revocations, the floor.

Each is a signed, conditional change of the channel index (`channel_index.update_index`).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from kristal.channel.index import index_body, update_index
from kristal.context import Context
from kristal.errors import RollbackTargetMissing, UsageInvalid
from kristal.formats.channel_docs import ChannelIndex
from kristal.formats.identity import DocKind
from kristal.formats.models import validate_channel_id
from kristal.trust.signing import SigningKey, sign_document

_SHORT = re.compile(r"^([0-9]+)([smhd])$")
_ISO = re.compile(r"^P(?:([0-9]+)D)?(?:T(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+)S)?)?$")


def parse_duration(text: str) -> timedelta:
    """`30m`, `24h`, `7d`, or ISO 8601 (`P7D`, `PT12H`, `P1DT2H30M`)."""
    if not text.isascii():
        raise UsageInvalid(f"duration {text!r} must be written in ASCII")
    if match := _SHORT.fullmatch(text.strip()):
        value, unit = int(match.group(1)), match.group(2)
        delta = {
            "s": timedelta(seconds=value),
            "m": timedelta(minutes=value),
            "h": timedelta(hours=value),
            "d": timedelta(days=value),
        }[unit]
    elif (match := _ISO.fullmatch(text.strip())) and text.strip() not in ("P", "PT"):
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    else:
        raise UsageInvalid(f"duration {text!r} is not like 30m, 24h, 7d or ISO 8601 (P7D)")
    if delta <= timedelta(0) or delta > timedelta(days=366):
        raise UsageInvalid(f"duration {text!r} must be positive and at most a year")
    return delta


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


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
        entry = index.release(release_id) if index else None
        if entry is None:
            raise RollbackTargetMissing(f"release {release_id} is not published in {channel_id}")
        moment = ctx.now()
        auth = sign_document(
            {
                "artifact_type": "rollback_authorization",
                "channel_id": channel_id,
                "target_release_id": release_id,
                "target_runtime_pack_ids": list(entry.runtime_pack_ids),
                "reason": reason,
                "issuer": authority.key_id,
                "issued_at": _rfc3339(moment),
                "expires_at": _rfc3339(moment + lifetime),
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

    update_index(ctx.store, channel_id, ctx.trust(channel_id), authority, change, now=ctx.now)
    return created


def revoke(
    ctx: Context, authority: SigningKey, channel_id: str, release_id: int, reason: str
) -> ChannelIndex:
    def change(index: ChannelIndex | None) -> dict[str, Any]:
        if index is None or index.release(release_id) is None:
            raise RollbackTargetMissing(f"release {release_id} is not published in {channel_id}")
        body = index_body(index)
        body["revoked"].append(
            {
                "target": {"release_id": release_id},
                "reason_code": reason,
                "effective_at": _rfc3339(ctx.now()),
            }
        )
        return body

    return update_index(
        ctx.store, channel_id, ctx.trust(channel_id), authority, change, now=ctx.now
    )


def set_floor(
    ctx: Context, authority: SigningKey, channel_id: str, release_id: int
) -> ChannelIndex:
    def change(index: ChannelIndex | None) -> dict[str, Any]:
        if index is None:
            raise RollbackTargetMissing(f"{channel_id} has no index yet")
        if release_id < 0:
            raise UsageInvalid("the floor is a release id >= 0")
        body = index_body(index)
        body["minimum_allowed_release_id"] = release_id
        return body

    return update_index(
        ctx.store, channel_id, ctx.trust(channel_id), authority, change, now=ctx.now
    )
