"""The consumer's view: resolve the pointer once and pin that release for the whole session.

A `PinnedSession` never mixes releases: it holds one activation record and read-only handles
on that release's query indexes. The post-activation checks use this same reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kristal.channel import records
from kristal.context import Context
from kristal.errors import RollbackTargetMissing
from kristal.formats import layout
from kristal.formats.artifacts import RuntimePackManifest
from kristal.formats.channel_docs import ActivationRecord
from kristal.formats.identity import DocKind
from kristal.runtime.sqlite_index import PinnedReader
from kristal.runtime.staging import index_path, usable_index
from kristal.verify.fetch import read_by_id


@dataclass
class PinnedSession:
    record: ActivationRecord
    readers: dict[str, PinnedReader] = field(default_factory=dict)

    def query(
        self,
        s: str | None = None,
        p: str | None = None,
        o: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, str]]:
        """Triple-pattern query over the pinned release (its first pack answers)."""
        first = self.record.active.runtime_pack_ids[0]
        return self.readers[first].query(s, p, o, limit=limit)

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()

    def __enter__(self) -> PinnedSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def pack_sources(ctx: Context, pack_ids: list[str]) -> dict[str, str]:
    """The triples sha256 each pack's index must be built from, from its manifest by ID."""
    return {p: read_by_id(ctx.store, layout.pack_manifest(p), DocKind.RUNTIME_PACK,
                          RuntimePackManifest).triples().sha256 for p in pack_ids}


def open_pinned(ctx: Context, channel_id: str, *, stage_missing: bool = True,
                sources: dict[str, str] | None = None) -> PinnedSession:
    """Pin the live release: its indexes, each bound to its pack's triples (`sources`, read
    from the pack manifests when not given), staged first when missing or not usable."""
    state = records.read_pointer(ctx, channel_id)
    if state.record is None:
        raise RollbackTargetMissing(f"channel {channel_id} has no active release")
    record = state.record
    pack_ids = list(record.active.runtime_pack_ids)
    if sources is None or set(sources) != set(pack_ids):
        sources = pack_sources(ctx, pack_ids)
    dbs = {p: index_path(ctx, p) for p in pack_ids}
    if stage_missing and not all(usable_index(db, sources[p]) for p, db in dbs.items()):
        # A consumer on a fresh machine: verify and stage exactly the pinned release.
        from kristal.runtime.staging import stage_release
        from kristal.verify.fetch import verify_release

        release = verify_release(ctx, channel_id, release_id=record.active.release_id)
        stage_release(ctx, release)
    return PinnedSession(record, {p: PinnedReader(db, source_sha256=sources[p])
                                  for p, db in dbs.items()})
