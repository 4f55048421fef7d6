"""Staging: every payload of a verified release into the content-addressed cache, then the
local query index of each pack, without touching what is live.

Downloads stream and hash in one pass (`ObjectStore.download_to`), run in parallel, and land in
the cache by atomic rename; a cached blob is re-hashed before it is used for a switch. Every
declared object is verified (sha256 and size), but an Exchange's blobs (`data/assertions.jsonl`),
which the query layer never reads, may be hashed as they stream and not kept
(`KRISTAL_CACHE_EXCHANGE_BLOBS=0`: saves their disk space and the write, and a later staging,
a rollback's included, streams them again). A cached
query index counts only as a regular file built from this pack's triples (`usable_index`);
anything else there is removed and rebuilt, and no link under the cache is followed.
"""

from __future__ import annotations

import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kristal.config import cache_exchange_blobs
from kristal.context import Context
from kristal.errors import FileInventoryMissing, KristalError
from kristal.formats import layout
from kristal.formats.artifacts import (
    ExchangeManifest,
    FederationManifest,
    FileEntry,
    RuntimePackManifest,
)
from kristal.formats.channel_docs import ReleaseRef
from kristal.formats.identity import DocKind
from kristal.formats.layout import TRIPLES_PATH
from kristal.formats.models import M
from kristal.runtime.sqlite_index import PinnedReader, build_index
from kristal.store.blobcache import BlobCache, real_dir
from kristal.store.download import verify_in_flight
from kristal.verify.fetch import read_by_id
from kristal.verify.verifier import VerifiedRelease

DOWNLOAD_WORKERS = 4


Inventory = frozenset[tuple[str, str, int]]  # (object key, sha256, size) of every payload file


@dataclass
class StagedRelease:
    release_id: int
    pack_dbs: dict[str, Path]
    files: dict[str, Path] = field(default_factory=dict)  # what is kept in the cache
    bytes_total: int = 0
    downloaded: int = 0  # objects fetched from the store (kept or hashed in flight)
    inventory: Inventory = frozenset()
    hashed_in_flight: list[str] = field(default_factory=list)  # verified, not kept


def _inventory(release: VerifiedRelease) -> list[tuple[str, FileEntry]]:
    """(object key, entry) for every payload file of the release (Exchange blobs first)."""
    items: list[tuple[str, FileEntry]] = []
    for blob in release.exchange.blobs():
        items.append((layout.exchange_blob(release.entry.exchange_id, blob.path), blob))
    for shard_ref, shard in zip(
        release.federation.shards if release.federation else [],
        release.shard_exchanges,
        strict=False,
    ):
        for blob in shard.blobs():
            items.append((layout.exchange_blob(shard_ref.shard_manifest_hash, blob.path), blob))
    for pack in release.packs:
        for entry in pack.manifest.files:
            items.append((layout.pack_file(pack.pack_id, entry.path), entry))
    return items


def inventory_of(release: VerifiedRelease) -> Inventory:
    """What staging a release puts in the cache: equal inventories stage the same bytes."""
    return _as_inventory(_inventory(release))


def _as_inventory(items: list[tuple[str, FileEntry]]) -> Inventory:
    return frozenset((key, entry.sha256, entry.size_bytes) for key, entry in items)


def staged_by(staged: StagedRelease, release: VerifiedRelease, ctx: Context) -> bool:
    """Whether `staged` (this process, moments ago) already holds every file and query index
    of `release`, so staging it again would only re-hash the same files."""
    return inventory_of(release) <= staged.inventory and all(
        index_path(ctx, pack.pack_id) == staged.pack_dbs.get(pack.pack_id)
        and staged.pack_dbs[pack.pack_id].exists() for pack in release.packs)


def _fetch_one(
    store_ctx: Context, cache: BlobCache, key: str, entry: FileEntry, *, keep: bool
) -> tuple[Path | None, bool]:
    """(cached path or None when not kept, whether it came from the store)."""
    cached = cache.verified_path(entry.sha256, entry.size_bytes)
    if cached is not None:
        return cached, False
    if not keep:
        verify_in_flight(store_ctx.store, key, expected_sha256=entry.sha256,
                         expected_size=entry.size_bytes)
        return None, True

    def download(tmp: Path) -> None:
        store_ctx.store.download_to(
            key, tmp, expected_sha256=entry.sha256, expected_size=entry.size_bytes
        )

    return cache.fetch(entry.sha256, entry.size_bytes, download), True


def _read_by_queries(release: VerifiedRelease) -> frozenset[str]:
    """Object keys the query layer reads: every file of every pack (not the Exchanges')."""
    return frozenset(layout.pack_file(pack.pack_id, entry.path)
                     for pack in release.packs for entry in pack.manifest.files)


def index_path(ctx: Context, pack_id: str) -> Path:
    """Where a pack's query index lives; the directory is a real one (a symlink is refused)."""
    directory = ctx.settings.cache_dir / "indexes"
    real_dir(ctx.settings.cache_dir)
    real_dir(directory)
    return directory / f"{pack_id.removeprefix('sha256:')}.sqlite"


def usable_index(db: Path, source_sha256: str) -> bool:
    """Whether `db` is a query index built from exactly these triples, in this index format,
    and a regular file. Anything else found there (a link, a directory, a decoy, a stale
    format) is removed, so that the caller builds it again."""
    try:
        st = os.lstat(db)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode):
        try:
            with PinnedReader(db, source_sha256=source_sha256):
                return True
        except KristalError:
            pass
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(db, ignore_errors=True)  # never follows links inside
    else:
        db.unlink(missing_ok=True)  # a link itself, never its target
    return False


def stage_release(ctx: Context, release: VerifiedRelease, *,
                  keep_unread: bool | None = None) -> StagedRelease:
    """Verify every payload of `release` and stage what the query layer reads, then build each
    pack's query index; `keep_unread` keeps the Exchange blobs in the cache too (default:
    `KRISTAL_CACHE_EXCHANGE_BLOBS`, on: a rollback then re-hashes them locally instead of
    downloading them again)."""
    if keep_unread is None:
        keep_unread = cache_exchange_blobs()
    items = _inventory(release)
    read = _read_by_queries(release)
    staged = StagedRelease(release_id=release.entry.release_id, pack_dbs={},
                           inventory=_as_inventory(items))
    with ThreadPoolExecutor(max_workers=DOWNLOAD_WORKERS) as pool:
        futures = {key: pool.submit(_fetch_one, ctx, ctx.cache, key, entry,
                                    keep=keep_unread or key in read)
                   for key, entry in items}
        fresh: list[Path] = []
        for key, future in futures.items():
            path, downloaded = future.result()
            staged.downloaded += int(downloaded)
            if path is None:
                staged.hashed_in_flight.append(key)
                continue
            staged.files[key] = path
            if downloaded:
                fresh.append(path)
    # Durable before anything can switch to it (the downloads themselves do not fsync).
    ctx.cache.flush(fresh)
    staged.bytes_total = sum(entry.size_bytes for _key, entry in items)
    for pack in release.packs:
        triples = pack.manifest.triples()
        db = index_path(ctx, pack.pack_id)
        if not usable_index(db, triples.sha256):
            source = staged.files[layout.pack_file(pack.pack_id, TRIPLES_PATH)]
            build_index(source, db, source_sha256=triples.sha256)
        staged.pack_dbs[pack.pack_id] = db
    return staged


def record_inventory(ctx: Context, ref: ReleaseRef) -> list[tuple[str, FileEntry]]:
    """The payload inventory of a release named by a record, read from its manifests by ID.

    No policy here (the release may be revoked since): only that the manifests hash to the IDs
    the record names, so the inventory is the one that was live.
    """
    def manifest(key: str, kind: DocKind, model: type[M]) -> M:
        return read_by_id(ctx.store, key, kind, model)

    exchange = manifest(layout.exchange_manifest(ref.exchange_id), DocKind.EXCHANGE,
                        ExchangeManifest)
    items = [(layout.exchange_blob(ref.exchange_id, b.path), b) for b in exchange.blobs()]
    if ref.federation_id:
        root = manifest(layout.federation_manifest(ref.federation_id), DocKind.FEDERATION,
                        FederationManifest)
        for shard_ref in root.shards:
            shard = manifest(layout.exchange_manifest(shard_ref.shard_manifest_hash),
                             DocKind.EXCHANGE, ExchangeManifest)
            items += [(layout.exchange_blob(shard_ref.shard_manifest_hash, b.path), b)
                      for b in shard.blobs()]
    for pack_id in ref.runtime_pack_ids:
        pack = manifest(layout.pack_manifest(pack_id), DocKind.RUNTIME_PACK, RuntimePackManifest)
        items += [(layout.pack_file(pack_id, e.path), e) for e in pack.files]
    return items


def confirm_restorable(ctx: Context, ref: ReleaseRef) -> None:
    """The objects of a release (the one live now) are still in the bucket with their sizes."""

    def head(item: tuple[str, FileEntry]) -> str | None:
        key, entry = item
        info = ctx.store.head(key)
        if info is None:
            return f"{key} is missing"
        if info.size != entry.size_bytes:
            return f"{key} is {info.size} bytes, its manifest says {entry.size_bytes}"
        return None

    try:
        inventory = record_inventory(ctx, ref)
    except KristalError as exc:
        raise FileInventoryMissing(
            f"release {ref.release_id} (live now) is no longer restorable: {exc.line()}"
        ) from None
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = [p for p in pool.map(head, inventory) if p]
    if problems:
        raise FileInventoryMissing(
            f"release {ref.release_id} (live now) is no longer restorable: "
            + "; ".join(problems[:3])
        )
