"""The data files of a release, written in one pass over the sorted input: the pack's
`data/triples.jsonl` and the Exchange's assertions blob (one per shard), each hashed and sized
as it is written, with the facts the validation profiles and the derived expectations need.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kristal.formats.expectations import Expectations
from kristal.formats.layout import TRIPLES_PATH
from kristal.publish.documents import ASSERTIONS_PATH, shard_of
from kristal.publish.external_sort import Row, SortedTriples, sort_runs
from kristal.runtime.checks import expectations_of

_FLUSH_ROWS: Final = 8192
# json's own string encoder (the C one): with ensure_ascii off it escapes exactly what RFC 8785
# escapes, the same way, so the lines below are the JCS of each row (keys in sorted order);
# tests pin this against `canonical_bytes`.
_enc = json.encoder.encode_basestring


@dataclass
class StreamFacts:
    """What the writer saw, for the row-level validation profiles: per file (the triples first,
    then each assertions blob) its line count and the first line not after its predecessor."""

    lines: list[int]
    first_disorder: list[int | None]
    assertions_per_row: bool  # each pack row was written with exactly its one assertion


@dataclass
class ReleaseData:
    triples: Path
    triples_entry: dict[str, Any]
    blobs: list[Path]
    blob_entries: list[dict[str, Any]]
    row_count: int
    facts: StreamFacts
    expectations: Expectations


class _Output:
    """One JSONL file written in batches, hashed and sized on the way."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = path.open("wb")
        self.digest = hashlib.sha256()
        self.size = 0
        self.lines = 0
        self.batch: list[str] = []
        self.disorder: int | None = None
        self.previous: Row | tuple[()] = ()
        # (first row, byte offset) of each flushed batch: finds a row's line later without
        # keeping offsets per row.
        self.marks: list[tuple[int, int]] = []

    def flush(self) -> None:
        if not self.batch:
            return
        data = "".join(self.batch).encode("utf-8")
        self.marks.append((self.lines, self.size))
        self.digest.update(data)
        self.handle.write(data)
        self.size += len(data)
        self.lines += len(self.batch)
        self.batch.clear()

    def close(self) -> None:
        self.flush()
        self.handle.close()

    def entry(self, rel: str) -> dict[str, Any]:
        return {"path": rel, "role": "other", "sha256": self.digest.hexdigest(),
                "size_bytes": self.size, "mime_type": "application/x-ndjson"}


def write_release_data(src: Path, out_dir: Path, shards: int, *,
                       run_rows: int | None = None) -> ReleaseData:
    """Sort and validate `src`, then write the pack's triples and the assertions blob(s) in one
    merge pass. Raises `ManifestSchemaInvalid` for a bad line or a repeated statement_id."""
    count = max(shards, 1)
    sorted_input = sort_runs(src, out_dir, run_rows=run_rows)
    try:
        return _write(sorted_input, out_dir, count)
    finally:
        sorted_input.close()


def _write(sorted_input: SortedTriples, out_dir: Path, count: int) -> ReleaseData:
    total = sorted_input.count
    triples = _Output(out_dir / "triples.jsonl")
    blobs = [_Output(out_dir / f"assertions-{i:03d}.jsonl") for i in range(count)]
    targets = sorted({1, (total + 1) // 2, total}) if total else []
    smoke: list[tuple[str, int]] = []  # (subject, its first row's 0-based position)
    next_target = targets.pop(0) if targets else 0
    t_batch = triples.batch
    blob = blobs[0]
    prev_s: str | None = None
    es = ""
    group_start = 0
    previous: Row | tuple[()] = ()
    position = 0
    try:
        for row in sorted_input.rows():
            s, p, o, sid, _line = row
            position += 1
            # The merge's output, checked: the ordering profile reports the first line out.
            if row <= previous and triples.disorder is None:
                triples.disorder = position
            previous = row
            if s != prev_s:  # a subject's rows are contiguous: per-subject work happens here
                prev_s, es, group_start = s, _enc(s), position - 1
                if count > 1:
                    blob = blobs[shard_of(s, count)]
            if position == next_target:
                if not smoke or smoke[-1][0] != s:
                    smoke.append((s, group_start))
                next_target = targets.pop(0) if targets else 0
            eo, ep, esid = _enc(o), _enc(p), _enc(sid)
            t_batch.append(f'{{"object":{eo},"predicate":{ep},"statement_id":{esid},'
                           f'"subject":{es}}}\n')
            blob.batch.append(f'{{"assertion_id":{esid},"assertion_status":"sourced",'
                              f'"certainty_level":"high","object":{eo},"predicate":{ep},'
                              f'"subject":{es}}}\n')
            if count > 1:
                if row <= blob.previous and blob.disorder is None:
                    blob.disorder = blob.lines + len(blob.batch)
                blob.previous = row
                if len(blob.batch) >= _FLUSH_ROWS:
                    blob.flush()
            if len(t_batch) >= _FLUSH_ROWS:
                triples.flush()
                if count == 1:
                    blob.flush()
    finally:
        triples.close()
        for out in blobs:
            out.close()
    if count == 1:  # the blob holds the pack's rows in the pack's order: the same comparison
        blobs[0].disorder = triples.disorder
    facts = StreamFacts(
        lines=[triples.lines] + [b.lines for b in blobs],
        first_disorder=[triples.disorder] + [b.disorder for b in blobs],
        assertions_per_row=sum(b.lines for b in blobs) == triples.lines == position,
    )
    return ReleaseData(
        triples=triples.path,
        triples_entry=triples.entry(TRIPLES_PATH),
        blobs=[b.path for b in blobs],
        blob_entries=[b.entry(ASSERTIONS_PATH) for b in blobs],
        row_count=position,
        facts=facts,
        expectations=expectations_of(total, [
            (subject, *_subject_rows(triples, start, subject)) for subject, start in smoke]),
    )


def _subject_rows(triples: _Output, start: int, subject: str) -> tuple[int, str]:
    """Count and `result_digest` of a subject's rows (a query of the pack by subject), read back
    from the written file. The JCS of an array of rows is `[`, their JCS joined by `,`, `]`:
    hashed as it streams, so a subject of any size takes no memory."""
    i = bisect.bisect_right(triples.marks, (start, 1 << 62)) - 1
    first_row, offset = triples.marks[i]
    digest = hashlib.sha256(b"[")
    n = 0
    with triples.path.open("rb") as handle:
        handle.seek(offset)
        for _ in range(start - first_row):
            handle.readline()
        for line in handle:
            if json.loads(line)["subject"] != subject:
                break
            digest.update(b"," + line[:-1] if n else line[:-1])
            n += 1
    digest.update(b"]")
    return n, digest.hexdigest()
