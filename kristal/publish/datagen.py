"""Triples files for the `kristal.runtime/sqlite/1` profile: generate, validate, sort.

`generate_triples` writes any number of synthetic rows already in canonical order (benchmarks,
demos); `sort_triples_file` turns a user's JSONL into the canonical form with bounded memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import random
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kristal.errors import ManifestSchemaInvalid

FIELDS = ("statement_id", "subject", "predicate", "object")
_FIELD_SET = frozenset(FIELDS)

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


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestSchemaInvalid(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_row(raw: bytes, lineno: int, *, what: str = "triples file") -> dict[str, str]:
    """Parse and validate one input line (any valid JSON layout) into a row dict."""
    where = f"{what} line {lineno}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestSchemaInvalid(f"{where}: not UTF-8 ({exc.reason})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except ManifestSchemaInvalid as exc:
        raise ManifestSchemaInvalid(f"{where}: {exc.message}") from None
    except (ValueError, RecursionError) as exc:
        raise ManifestSchemaInvalid(f"{where}: not valid JSON ({exc})") from None
    return check_row_shape(value, where)


def check_row_shape(value: object, where: str) -> dict[str, str]:
    """Exactly the four fields, each a non-empty string encodable as UTF-8."""
    if not isinstance(value, dict):
        raise ManifestSchemaInvalid(f"{where}: a row must be a JSON object")
    keys = set(value)
    if keys != _FIELD_SET:
        missing = sorted(_FIELD_SET - keys)
        extra = sorted(keys - _FIELD_SET)
        raise ManifestSchemaInvalid(f"{where}: fields missing {missing}, unexpected {extra}")
    for field in FIELDS:
        item = value[field]
        if not isinstance(item, str) or not item:
            raise ManifestSchemaInvalid(f"{where}: {field} must be a non-empty string", field=field)
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate escape (\ud800) has no UTF-8 form and no byte order.
            raise ManifestSchemaInvalid(
                f"{where}: {field} holds a lone surrogate", field=field
            ) from None
    return value


RowKey = tuple[str, str, str, str]


def row_key(row: dict[str, str]) -> RowKey:
    """The canonical order (DESIGN §7): subject, predicate, object, statement_id. Code-point
    order of str equals UTF-8 byte order (surrogates are refused above)."""
    return (row["subject"], row["predicate"], row["object"], row["statement_id"])


def _write_run(rows: list[tuple[RowKey, bytes]], tmp_dir: str) -> str:
    rows.sort(key=lambda item: item[0])
    fd, name = tempfile.mkstemp(prefix="sort-run-", suffix=".jsonl", dir=tmp_dir)
    with os.fdopen(fd, "wb") as out:
        out.writelines(line for _, line in rows)
    return name


def _read_run(name: str) -> Iterator[tuple[RowKey, bytes]]:
    with open(name, "rb") as run:
        for line in run:
            # Our own canonical output: the plain parser is enough here.
            yield row_key(json.loads(line)), line


def sort_triples_file(
    src: Path, dst: Path, *, chunk_rows: int = 250_000, tmp_dir: Path | None = None
) -> int:
    """External merge sort of a user triples JSONL into canonical lines; returns the row count.

    Memory is bounded by `chunk_rows` rows: sorted runs go to temp files, then `heapq.merge`.
    Blank lines are skipped; any other bad line raises `ManifestSchemaInvalid` with its number.
    A statement_id given twice is refused (with both line numbers).
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    work = tempfile.mkdtemp(prefix="kristal-sort-", dir=tmp_dir or dst.parent)
    runs: list[str] = []
    partial = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    try:
        chunk: list[tuple[RowKey, bytes]] = []
        # statement_id uniqueness with the input's line numbers, in bounded memory (on disk).
        seen = sqlite3.connect(os.path.join(work, "ids.sqlite"), isolation_level=None)
        seen.execute("PRAGMA journal_mode=OFF")
        seen.execute("PRAGMA synchronous=OFF")
        seen.execute(
            "CREATE TABLE ids (statement_id TEXT PRIMARY KEY, lineno INTEGER) WITHOUT ROWID"
        )
        seen.execute("BEGIN")
        with open(src, "rb") as source:
            for lineno, raw in enumerate(source, 1):
                if not raw.strip():
                    continue
                row = parse_row(raw.rstrip(b"\r\n"), lineno)
                try:
                    seen.execute("INSERT INTO ids VALUES (?, ?)", (row["statement_id"], lineno))
                except sqlite3.IntegrityError:
                    first = seen.execute("SELECT lineno FROM ids WHERE statement_id = ?",
                                         (row["statement_id"],)).fetchone()[0]
                    seen.close()
                    raise ManifestSchemaInvalid(
                        f"triples file line {lineno}: duplicate statement_id "
                        f"{row['statement_id']!r} (also on line {first})"
                    ) from None
                chunk.append((row_key(row), row_line(row)))
                if len(chunk) >= chunk_rows:
                    runs.append(_write_run(chunk, work))
                    chunk = []
        seen.close()
        os.unlink(os.path.join(work, "ids.sqlite"))
        if chunk:
            runs.append(_write_run(chunk, work))
        del chunk
        count = 0
        previous: RowKey | None = None
        with open(partial, "wb") as out:
            merged = heapq.merge(*(_read_run(name) for name in runs), key=lambda item: item[0])
            for key, line in merged:
                if key == previous:
                    raise ManifestSchemaInvalid(
                        f"triples file: statement_id {key[3]!r} repeated"
                    )
                previous = key
                out.write(line)
                count += 1
        os.replace(partial, dst)
        return count
    finally:
        for name in [*runs, str(partial)]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        with contextlib.suppress(OSError):
            os.rmdir(work)
