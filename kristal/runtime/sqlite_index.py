"""Runtime profile `kristal.runtime/sqlite/1`: the pack's `data/triples.jsonl` becomes a local,
read-only SQLite index (deterministic, rebuildable from the pack), and `PinnedReader` serves
triple-pattern queries from exactly one release's index for a whole session.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Final

from kristal.errors import (
    FileHashMismatch,
    FileInventoryMissing,
    ManifestSchemaInvalid,
    PathInvalid,
    ProfileUnsupported,
)
from kristal.formats.canonical import canonical_bytes, sha256_hex
from kristal.formats.line_blocks import lf_blocks
from kristal.runtime.unique_ids import SeenIds

PROFILE: Final = "kristal.runtime/sqlite/1"
INDEX_FORMAT: Final = "1"

# Rows keep their file position as rowid: the file is in canonical order, so ORDER BY rowid is
# the canonical order and a rowid names the offending line. A plain rowid table with ascending
# appends loads faster than WITHOUT ROWID, and its secondary indexes carry an 8-byte rowid
# instead of the whole primary key.
TABLE_DDL: Final = (
    "CREATE TABLE triples ("
    "statement_id TEXT NOT NULL, subject TEXT NOT NULL, predicate TEXT NOT NULL, "
    "object TEXT NOT NULL)"
)
META_DDL: Final = "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID"
# Built after the load: one sort per index beats maintaining three B-trees row by row.
INDEX_DDL: Final = (
    "CREATE INDEX triples_spo ON triples (subject, predicate, object)",
    "CREATE INDEX triples_po ON triples (predicate, object)",
    "CREATE INDEX triples_o ON triples (object)",
)
INSERT_SQL: Final = (
    "INSERT INTO triples (statement_id, subject, predicate, object) VALUES (?, ?, ?, ?)"
)
# The index is disposable until renamed into place, so durability pragmas buy nothing here.
# The page cache is bounded (64 MiB) and sorts spill to temp files: peak RSS measured 156 MB at
# 1M rows and 162 MB at 10M. `PRAGMA threads=2` was measured too: no clear gain in time, and
# 290 MB peak at 10M rows (each sorter worker holds its own buffers), so it is left off.
BUILD_PRAGMAS: Final = (
    "PRAGMA journal_mode=OFF",
    "PRAGMA synchronous=OFF",
    "PRAGMA locking_mode=EXCLUSIVE",
    "PRAGMA temp_store=FILE",
    "PRAGMA cache_size=-65536",
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
# The canonical (JCS) line of a row whose strings need no escaping: keys in sorted order, values
# non-empty and free of quotes, backslashes and control characters. Anything else takes the
# slow path, which accepts escapes only where JCS puts them.
_FAST_LINE = re.compile(
    r'\{"object":"([^"\\\x00-\x1f]+)","predicate":"([^"\\\x00-\x1f]+)",'
    r'"statement_id":"([^"\\\x00-\x1f]+)","subject":"([^"\\\x00-\x1f]+)"\}'
)
_FIELDS = ("statement_id", "subject", "predicate", "object")
_encode_jcs = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode


def _where(lineno: int) -> str:
    return f"triples line {lineno}"


def _slow_row(line: str, lineno: int) -> tuple[str, str, str, str]:
    """Full diagnosis of a line the fast pattern did not take (escapes, or an error)."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise ManifestSchemaInvalid(f"{_where(lineno)}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ManifestSchemaInvalid(f"{_where(lineno)}: a row must be a JSON object")
    if set(value) != set(_FIELDS):
        raise ManifestSchemaInvalid(
            f"{_where(lineno)}: a row has exactly the fields {', '.join(_FIELDS)}; "
            f"found {', '.join(sorted(value))}"
        )
    for field in _FIELDS:
        item = value[field]
        if not isinstance(item, str) or not item:
            raise ManifestSchemaInvalid(
                f"{_where(lineno)}: {field} must be a non-empty string", field=field
            )
    # Re-encoding catches duplicate keys, stray whitespace, needless escapes and lone
    # surrogates (left raw by the encoder, so never equal to the escaped input).
    if _encode_jcs(value) != line:
        raise ManifestSchemaInvalid(f"{_where(lineno)}: not in canonical (RFC 8785) form")
    return value["statement_id"], value["subject"], value["predicate"], value["object"]


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Decoded complete lines in blocks, with the number of the block's first line.

    Decoding a whole block at once is far cheaper than per line; a block is cut after its last
    LF so no UTF-8 sequence is split.
    """
    lineno = 1
    for block in lf_blocks(path, f"index {path.name}"):
        if not block.endswith(b"\n"):
            raise ManifestSchemaInvalid(f"{_where(lineno)}: the last line does not end with LF")
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = lineno + block.count(b"\n", 0, exc.start)
            raise ManifestSchemaInvalid(f"{_where(bad)}: not UTF-8 ({exc.reason})") from None
        lines = text.split("\n")
        lines.pop()  # the empty string after the block's final LF
        yield lineno, lines
        lineno += len(lines)


def _no_candidate(lineno: int) -> None:
    """Before any id is out of order there is no filter, hence no candidate."""


class _RowStream:
    """Validated rows for `executemany`, enforcing the canonical order as they pass."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        # None while statement ids ascend over the whole file: then they are unique, with
        # nothing to check (true of generated data and of many real id schemes). At the first
        # id that does not ascend, the ids so far go into a filter, and every later one too.
        self.seen: SeenIds | None = None

    def __iter__(self) -> Iterator[tuple[str, str, str, str]]:
        fast = _FAST_LINE.fullmatch
        prev_key: tuple[str, str, str, str] = ("", "", "", "")
        prev_id = ""
        bits: bytearray | None = None
        mask = 0
        candidate: Callable[[int], None] = _no_candidate  # set at the first id out of order
        lineno = 0
        for first, lines in _lines(self.path):
            for lineno, line in enumerate(lines, first):
                m = fast(line)
                if m is not None:
                    o, p, sid, s = m.groups()
                else:
                    sid, s, p, o = _slow_row(line, lineno)
                key = (s, p, o, sid)
                if key <= prev_key:
                    self._order_error(key, prev_key, lineno)
                prev_key = key
                if bits is not None:  # SeenIds.add, inlined: this runs for every row
                    slot = hash(sid) & mask
                    byte = bits[slot >> 3]
                    if byte & (1 << (slot & 7)):
                        candidate(lineno)
                    else:
                        bits[slot >> 3] = byte | (1 << (slot & 7))
                elif sid <= prev_id:
                    seen = self.seen = self._seen_before(lineno)
                    bits, mask, candidate = seen.bits, seen.MASK, seen.candidate
                    seen.add(sid, lineno)
                prev_id = sid
                yield sid, s, p, o
            self.count = lineno

    def _seen_before(self, stop: int) -> SeenIds:
        """A filter holding the ids of lines 1 .. stop-1 (already validated: read again)."""
        seen = SeenIds()
        for first, lines in _lines(self.path):
            for lineno, line in enumerate(lines, first):
                if lineno >= stop:
                    return seen
                m = _FAST_LINE.fullmatch(line)
                seen.add(m.group(3) if m is not None else _slow_row(line, lineno)[0], lineno)
        return seen

    @staticmethod
    def _order_error(key: tuple[str, ...], prev: tuple[str, ...], lineno: int) -> None:
        if key == prev:
            raise ManifestSchemaInvalid(
                f"{_where(lineno)}: duplicate statement_id {key[3]!r} (also on line {lineno - 1})"
            )
        raise ManifestSchemaInvalid(
            f"{_where(lineno)}: out of order: rows must be sorted by the UTF-8 bytes of subject, "
            "predicate, object, statement_id"
        )


def build_index(triples_path: Path, db_path: Path, *, source_sha256: str) -> int:
    """Build the query index from a canonical triples JSONL; returns the row count.

    Streams the file (memory independent of its size), validates every line, the sort order
    and statement_id uniqueness, and only then renames the finished database onto `db_path`:
    a failed or interrupted build never leaves a usable-looking index behind.
    `source_sha256` (bare hex, already verified by the caller) is recorded in `meta`.
    """
    if not _HEX64.fullmatch(source_sha256):
        raise PathInvalid(f"source_sha256 {source_sha256[:80]!r} is not 64 lowercase hex digits")
    tmp_path = db_path.with_name(f".{db_path.name}.{uuid.uuid4().hex}.building")
    db = sqlite3.connect(tmp_path, isolation_level=None)
    try:
        for pragma in BUILD_PRAGMAS:
            db.execute(pragma)
        db.execute("BEGIN")
        db.execute(TABLE_DDL)
        db.execute(META_DDL)
        rows = _RowStream(triples_path)
        db.executemany(INSERT_SQL, rows)
        if rows.seen is not None:
            rows.seen.find_duplicate(db)
        for ddl in INDEX_DDL:
            db.execute(ddl)
        meta = {
            "profile": PROFILE,
            "index_format": INDEX_FORMAT,
            "row_count": str(rows.count),
            "source_sha256": source_sha256,
        }
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
        db.execute("COMMIT")
        db.close()
        os.replace(tmp_path, db_path)
    except BaseException:
        db.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    return rows.count


def _regular_file(path: Path) -> tuple[int, int]:
    """(device, inode) of a regular file at `path`, refusing a symlink or anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise FileInventoryMissing(f"query index {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise PathInvalid(f"query index {path} is not a regular file (links are never followed)")
    return st.st_dev, st.st_ino


class PinnedReader:
    """A read-only session on one release's index; it never sees another release's rows.

    The index is immutable once built, so it is opened with `immutable=1`: no locks, no
    change detection, and a later pointer switch (a different file) cannot affect it.
    """

    def __init__(self, db_path: Path, *, source_sha256: str | None = None) -> None:
        """Open `db_path` (a regular file, never through a symlink); with `source_sha256`, it
        must have been built from exactly those triples (else `file_hash_mismatch`)."""
        before = _regular_file(db_path)
        uri = Path(os.path.abspath(db_path)).as_uri() + "?mode=ro&immutable=1"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as exc:
            with contextlib.suppress(AttributeError):
                self._db.close()
            raise ProfileUnsupported(f"{db_path} is not a {PROFILE} index ({exc})") from None
        if meta.get("profile") != PROFILE or meta.get("index_format") != INDEX_FORMAT:
            self._db.close()
            raise ProfileUnsupported(f"{db_path} is not a {PROFILE} index (meta {meta})")
        if _regular_file(db_path) != before:  # swapped while it was being opened
            self._db.close()
            raise PathInvalid(f"{db_path} changed while it was opened")
        if source_sha256 is not None and meta.get("source_sha256") != source_sha256:
            self._db.close()
            raise FileHashMismatch(
                f"{db_path} was built from triples {meta.get('source_sha256')}, not from this "
                f"pack's {source_sha256}")
        self.db_path = db_path
        self.meta: dict[str, str] = meta
        self._lock = threading.Lock()

    def query(
        self, s: str | None, p: str | None, o: str | None, limit: int | None = None
    ) -> list[dict[str, str]]:
        """Rows matching the pattern (None = any), in canonical order, at most `limit`."""
        clauses: list[str] = []
        params: list[object] = []
        for column, value in (("subject", s), ("predicate", p), ("object", o)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT statement_id, subject, predicate, object FROM triples"
        if s is not None:
            # Without statistics the planner may pick the object index for (s, ?, o) and walk
            # every row of a common object; a subject's rows are few, so its index is the plan.
            sql += " INDEXED BY triples_spo"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY rowid"
        if limit is not None:
            if limit < 0:
                raise ValueError("limit must be >= 0")
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock:
            found = self._db.execute(sql, params).fetchall()
        return [
            {"statement_id": sid, "subject": subj, "predicate": pred, "object": obj}
            for sid, subj, pred, obj in found
        ]

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM triples").fetchone()
        return int(n)

    def row_at(self, position: int) -> dict[str, str] | None:
        """The row at a 1-based position of the canonical order (None when out of range)."""
        with self._lock:
            found = self._db.execute(
                "SELECT statement_id, subject, predicate, object FROM triples WHERE rowid = ?",
                (position,),
            ).fetchone()
        if found is None:
            return None
        return dict(zip(_FIELDS, found, strict=True))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PinnedReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def result_digest(rows: list[dict[str, str]]) -> str:
    """Bare hex sha256 of the JCS of the array of row objects (`expect_sha256`, DESIGN §7)."""
    return sha256_hex(canonical_bytes(rows))
