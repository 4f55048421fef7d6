"""Triples files for the `kristal.runtime/sqlite/1` profile: generate, validate, sort.

`generate_triples` writes any number of synthetic rows already in canonical order (benchmarks,
demos); `sort_triples_file` turns a user's JSONL into the canonical form with bounded memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

from kristal.publish.external_sort import DEFAULT_RUN_ROWS, sort_runs

# Sorted, so emitting a subject's predicates in list order keeps the canonical sort without sorting.
_PREDICATES = (
    "kg:area",
    "kg:knows",
    "kg:label",
    "kg:locatedIn",
    "kg:population",
    "kg:type",
)
_TYPES = ("kg:City", "kg:Country", "kg:Person", "kg:River")
_WRITE_BATCH = 8192

# For string-only objects this encoder yields exactly the RFC 8785 bytes (keys are ASCII so the
# UTF-16 key order equals Python's; control characters and quotes are escaped the same way).
# tests/test_datagen.py pins this claim against `canonical_bytes`.
_encode_jcs = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


def row_line(row: dict[str, str]) -> bytes:
    """The canonical line (JCS bytes + LF) of one validated row."""
    return _encode_jcs(row).encode("utf-8") + b"\n"


def _entity(i: int) -> str:
    return f"entity:{i:09d}"


def _generated_lines(count: int, seed: int) -> Iterator[str]:
    """Rows in canonical order by construction: subjects ascend, within a subject the
    predicates, within a predicate the objects, and statement ids ascend with them, so no
    sort is ever needed."""
    rng = random.Random(seed)
    # Object references point into the subject range so object lookups find real entities.
    n_subjects = max(1, count // 3)
    emitted = 0
    i = 0
    while emitted < count:
        subject = _entity(i)
        j = 0
        mask = rng.getrandbits(len(_PREDICATES)) | 0b100  # every subject has a label
        for bit, predicate in enumerate(_PREDICATES):
            if not mask >> bit & 1:
                continue
            if predicate == "kg:knows":
                # Several values per (subject, predicate): statement ids keep them ordered.
                objects = [_entity(rng.randrange(n_subjects)) for _ in range(1 + rng.randrange(3))]
            elif predicate == "kg:locatedIn":
                objects = [_entity(rng.randrange(n_subjects))]
            elif predicate == "kg:type":
                objects = [_TYPES[rng.randrange(len(_TYPES))]]
            elif predicate == "kg:label":
                objects = [f"Entity {i} label {rng.randrange(1_000_000)}"]
            else:
                objects = [str(rng.randrange(10_000_000))]
            for obj in sorted(objects):  # (subject, predicate, object, statement_id) order
                # Every value is ASCII without quotes, backslashes or control characters, so the
                # f-string below is already the JCS form (keys in sorted order).
                yield (
                    f'{{"object":"{obj}","predicate":"{predicate}",'
                    f'"statement_id":"stmt:{i:09d}:{j:02d}","subject":"{subject}"}}\n'
                )
                j += 1
                emitted += 1
                if emitted == count:
                    return
        i += 1


def generate_triples(path: Path, count: int, seed: int = 0) -> str:
    """Write `count` deterministic rows (same seed, same bytes) and return the file's sha256 hex."""
    if count < 0:
        raise ValueError("count must be >= 0")
    digest = hashlib.sha256()
    batch: list[str] = []
    with open(path, "wb") as out:
        for line in _generated_lines(count, seed):
            batch.append(line)
            if len(batch) == _WRITE_BATCH:
                chunk = "".join(batch).encode("ascii")
                digest.update(chunk)
                out.write(chunk)
                batch.clear()
        chunk = "".join(batch).encode("ascii")
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def sort_triples_file(
    src: Path, dst: Path, *, chunk_rows: int = DEFAULT_RUN_ROWS, tmp_dir: Path | None = None
) -> int:
    """External merge sort of a user triples JSONL into canonical lines; returns the row count.

    Memory is bounded by `chunk_rows` rows (`external_sort`). Blank lines are skipped; any
    other bad line raises `ManifestSchemaInvalid` with its number. A statement_id given twice
    is refused (with both line numbers). `dst` appears only once complete.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    partial = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    sorted_input = sort_runs(src, tmp_dir or dst.parent, run_rows=chunk_rows)
    try:
        with open(partial, "wb") as out:
            batch: list[str] = []
            for s, p, o, sid, _line in sorted_input.rows():
                batch.append(_encode_jcs({"statement_id": sid, "subject": s, "predicate": p,
                                          "object": o}))
                if len(batch) == _WRITE_BATCH:
                    out.write(("\n".join(batch) + "\n").encode("utf-8"))
                    batch.clear()
            if batch:
                out.write(("\n".join(batch) + "\n").encode("utf-8"))
        os.replace(partial, dst)
        return sorted_input.count
    finally:
        sorted_input.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
