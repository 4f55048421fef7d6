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
from kristal.errors import (
    ChannelUnknown,
    FileInventoryMissing,
    ManifestSchemaInvalid,
    ObjectNotFound,
)
from kristal.formats import layout
from kristal.formats.artifacts import FederationManifest
from kristal.formats.canonical import parse_json
from kristal.formats.identity import DocKind, verify_identity
from kristal.formats.models import M, parse_model
from kristal.once_per_key import OncePerKey
from kristal.store.s3 import ObjectStore
from kristal.verify.verifier import MAX_MANIFEST_BYTES, ReleaseVerifier, VerifiedRelease

FETCH_WORKERS = 8


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


def _fetch(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key, max_bytes=MAX_MANIFEST_BYTES)[0]
    except ObjectNotFound:
        return None


def fetch_optional(store: ObjectStore, key: str,
                   memo: DocumentMemo | None = None) -> bytes | None:
    """The bytes of a content-addressed document (bounded), None for a missing object (a
    missing report is judged by the verifier). The one fetch of manifests and reports."""
    if memo is None:
        return _fetch(store, key)
    return memo.get(key, lambda: _fetch(store, key))


def fetch_required(store: ObjectStore, key: str, memo: DocumentMemo | None = None) -> bytes:
    raw = fetch_optional(store, key, memo)
    if raw is None:
        raise FileInventoryMissing(f"{key} is missing from the bucket")
    return raw


def read_by_id(store: ObjectStore, key: str, kind: DocKind, model: type[M]) -> M:
    """A document read by its content-addressed key, its ID recomputed (so its content is the
    one the ID names) and its shape validated. No signatures or policy: for documents a
    verified record or index already names (the inventory of what was live, reverify)."""
    raw = parse_json(fetch_required(store, key), max_bytes=MAX_MANIFEST_BYTES, what=key)
    if not isinstance(raw, dict):
        raise ManifestSchemaInvalid(f"{key} is not a JSON object")
    verify_identity(raw, kind)
    return parse_model(model, raw, what=key)


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
    trusted = ctx.trusted
    remembered = trusted.highest(channel_id) if trusted is not None else 0
    verifier = ReleaseVerifier(
        channel_id, ctx.trust(channel_id), now=ctx.now(),
        min_index_version=max(min_index_version, remembered),
    )
    raw_index = read_index_bytes(ctx.store, channel_id)
    if raw_index is None:
        raise ChannelUnknown(f"channel {channel_id} has no index: nothing is published")
    index = verifier.update_index(raw_index[0])
    if trusted is not None:
        trusted.remember(channel_id, index.index_version)
    entry = verifier.select_release(release_id, exchange_id=exchange_id, pack_ids=pack_ids)

    get, get_optional = fetch_required, fetch_optional
    with ThreadPoolExecutor(max_workers=FETCH_WORKERS) as pool:
        exchange_f = pool.submit(get, ctx.store, layout.exchange_manifest(entry.exchange_id), memo)
        root_f = (pool.submit(get, ctx.store, layout.federation_manifest(entry.federation_id), memo)
                  if entry.federation_id else None)
        pack_fs = [pool.submit(get, ctx.store, layout.pack_manifest(p), memo)
                   for p in entry.runtime_pack_ids]
        report_fs = [pool.submit(get_optional, ctx.store, layout.validation_report(r), memo)
                     for r in entry.validation_report_ids]
        verifier.update_exchange(exchange_f.result())
        raw_root = root_f.result() if root_f else None
        shard_bytes: list[bytes] = []
        if raw_root is not None:
            # Only to learn which shards to fetch: the verifier judges the root's bytes.
            root = parse_model(FederationManifest, parse_json(raw_root, what="federation root"),
                               what="federation root")
            shard_fs = [pool.submit(get, ctx.store, layout.exchange_manifest(s.shard_manifest_hash),
                                    memo) for s in root.shards]
            shard_bytes = [f.result() for f in shard_fs]
        verifier.update_federation(raw_root, shard_bytes)
        verifier.update_packs([f.result() for f in pack_fs])
        verifier.update_reports([raw for f in report_fs if (raw := f.result()) is not None])
    return verifier.finish()
