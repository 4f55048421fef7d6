"""Fetches a release's documents from the store and feeds them to `ReleaseVerifier` in order.

Manifests are fetched in parallel once the index entry names them; verification itself stays
in `kristal.verify`, which never does I/O. A `DocumentMemo` lets many channels of one fleet
run share the fetch of the same content-addressed documents.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kristal.channel.index import read_index_bytes
from kristal.context import Context
from kristal.errors import FileInventoryMissing, RollbackTargetMissing
from kristal.formats import layout
from kristal.once_per_key import OncePerKey
from kristal.store.s3 import ObjectNotFound
from kristal.verify.verifier import MAX_MANIFEST_BYTES, ReleaseVerifier, VerifiedRelease


class DocumentMemo:
    """The bytes of content-addressed documents (manifests, reports), each fetched once.

    Sharing them between channels is safe because nothing is trusted from the memo: each
    channel's verifier re-derives every document's ID, compares it with the ID its own signed
    index names, and checks the signatures against its own trust. Only fetched bytes are kept
    (a missing object or an error is not), and concurrent callers of one key wait for the one
    fetch in flight. Never use it for mutable objects (index, pointer, history).
    """

    def __init__(self) -> None:
        self._docs: OncePerKey[str, bytes | None] = OncePerKey(keep=lambda raw: raw is not None)

    @property
    def fetches(self) -> int:
        return self._docs.computed

    def get(self, key: str, fetch: Callable[[], bytes | None]) -> bytes | None:
        return self._docs.get(key, fetch)[0]


def _fetch(ctx: Context, key: str) -> bytes | None:
    try:
        return ctx.store.get_bytes(key, max_bytes=MAX_MANIFEST_BYTES)[0]
    except ObjectNotFound:
        return None


def _get_optional(ctx: Context, key: str, memo: DocumentMemo | None = None) -> bytes | None:
    """None for a missing object: a missing report is judged by the verifier."""
    if memo is None:
        return _fetch(ctx, key)
    return memo.get(key, lambda: _fetch(ctx, key))


def _get(ctx: Context, key: str, memo: DocumentMemo | None = None) -> bytes:
    raw = _get_optional(ctx, key, memo)
    if raw is None:
        raise FileInventoryMissing(f"{key} is missing from the bucket")
    return raw


def verify_release(
    ctx: Context,
    channel_id: str,
    *,
    release_id: int | None = None,
    exchange_id: str | None = None,
    pack_ids: list[str] | None = None,
    min_index_version: int = 0,
    memo: DocumentMemo | None = None,
) -> VerifiedRelease:
    """Verify one release of a channel: its signed index, then every document it names.

    `memo` shares content-addressed fetches between channels (a fleet run); the channel's index
    is always read afresh.
    """
    verifier = ReleaseVerifier(
        channel_id, ctx.trust(channel_id), now=ctx.now(), min_index_version=min_index_version
    )
    raw_index = read_index_bytes(ctx.store, channel_id)
    if raw_index is None:
        raise RollbackTargetMissing(f"channel {channel_id} has no index: nothing is published")
    verifier.update_index(raw_index[0])
    entry = verifier.select_release(release_id, exchange_id=exchange_id, pack_ids=pack_ids)

    with ThreadPoolExecutor(max_workers=8) as pool:
        exchange_f = pool.submit(_get, ctx, layout.exchange_manifest(entry.exchange_id), memo)
        root_f = (
            pool.submit(_get, ctx, layout.federation_manifest(entry.federation_id), memo)
            if entry.federation_id
            else None
        )
        pack_fs = [
            pool.submit(_get, ctx, layout.pack_manifest(p), memo) for p in entry.runtime_pack_ids
        ]
        report_fs = [
            pool.submit(_get_optional, ctx, layout.validation_report(r), memo)
            for r in entry.validation_report_ids
        ]
        verifier.update_exchange(exchange_f.result())
        raw_root = root_f.result() if root_f else None
        shard_bytes: list[bytes] = []
        if raw_root is not None:
            from kristal.formats.artifacts import FederationManifest
            from kristal.formats.canonical import parse_json
            from kristal.formats.models import parse_model

            root = parse_model(
                FederationManifest,
                parse_json(raw_root, what="federation root"),
                what="federation root",
            )
            shard_fs = [
                pool.submit(_get, ctx, layout.exchange_manifest(s.shard_manifest_hash), memo)
                for s in root.shards
            ]
            shard_bytes = [f.result() for f in shard_fs]
        verifier.update_federation(raw_root, shard_bytes)
        verifier.update_packs([f.result() for f in pack_fs])
        verifier.update_reports([raw for f in report_fs if (raw := f.result()) is not None])
    return verifier.finish()
