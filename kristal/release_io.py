"""Fetches a release's documents from the store and feeds them to `ReleaseVerifier` in order.

Manifests are fetched in parallel once the index entry names them; verification itself stays
in `kristal.verify`, which never does I/O.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from kristal import layout
from kristal.channel_index import read_index_bytes
from kristal.context import Context
from kristal.errors import FileInventoryMissing, RollbackTargetMissing
from kristal.objectstore import ObjectNotFound
from kristal.verify import MAX_MANIFEST_BYTES, ReleaseVerifier, VerifiedRelease


def _get(ctx: Context, key: str) -> bytes:
    try:
        return ctx.store.get_bytes(key, max_bytes=MAX_MANIFEST_BYTES)[0]
    except ObjectNotFound:
        raise FileInventoryMissing(f"{key} is missing from the bucket") from None


def _get_optional(ctx: Context, key: str) -> bytes | None:
    try:
        return ctx.store.get_bytes(key, max_bytes=MAX_MANIFEST_BYTES)[0]
    except ObjectNotFound:
        return None  # a missing report is judged by the verifier: validation_report_missing


def verify_release(
    ctx: Context,
    channel_id: str,
    *,
    release_id: int | None = None,
    exchange_id: str | None = None,
    pack_ids: list[str] | None = None,
    min_index_version: int = 0,
) -> VerifiedRelease:
    verifier = ReleaseVerifier(
        channel_id, ctx.trust(channel_id), now=ctx.now(), min_index_version=min_index_version
    )
    raw_index = read_index_bytes(ctx.store, channel_id)
    if raw_index is None:
        raise RollbackTargetMissing(f"channel {channel_id} has no index: nothing is published")
    verifier.update_index(raw_index[0])
    entry = verifier.select_release(release_id, exchange_id=exchange_id, pack_ids=pack_ids)

    with ThreadPoolExecutor(max_workers=8) as pool:
        exchange_f = pool.submit(_get, ctx, layout.exchange_manifest(entry.exchange_id))
        root_f = (
            pool.submit(_get, ctx, layout.federation_manifest(entry.federation_id))
            if entry.federation_id
            else None
        )
        pack_fs = [pool.submit(_get, ctx, layout.pack_manifest(p)) for p in entry.runtime_pack_ids]
        report_fs = [
            pool.submit(_get_optional, ctx, layout.validation_report(r))
            for r in entry.validation_report_ids
        ]
        verifier.update_exchange(exchange_f.result())
        raw_root = root_f.result() if root_f else None
        shard_bytes: list[bytes] = []
        if raw_root is not None:
            from kristal.canonical import parse_json
            from kristal.models import FederationManifest, parse_model

            root = parse_model(
                FederationManifest,
                parse_json(raw_root, what="federation root"),
                what="federation root",
            )
            shard_fs = [
                pool.submit(_get, ctx, layout.exchange_manifest(s.shard_manifest_hash))
                for s in root.shards
            ]
            shard_bytes = [f.result() for f in shard_fs]
        verifier.update_federation(raw_root, shard_bytes)
        verifier.update_packs([f.result() for f in pack_fs])
        verifier.update_reports([raw for f in report_fs if (raw := f.result()) is not None])
    return verifier.finish()
