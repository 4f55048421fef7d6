"""External merge sort of a user's triples JSONL into canonical order, each line parsed once.

Rows are validated as they are read, sorted in runs of at most `run_rows` rows (temp files when
there is more than one), then merged (`heapq.merge`): memory stays flat however large the input.
statement_id uniqueness is folded in: a fixed-size filter while reading, then an exact check of
its few candidates while merging, so a repeat is refused with both input line numbers.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kristal.errors import ManifestSchemaInvalid
from kristal.formats.line_blocks import lf_blocks

FIELDS: Final = ("statement_id", "subject", "predicate", "object")
_FIELD_SET: Final = frozenset(FIELDS)

# (subject, predicate, object, statement_id, input line): tuple order is the canonical order
# (DESIGN §7; str code-point order equals UTF-8 byte order, lone surrogates being refused), and
# the line number breaks the only ties there can be, those of a repeated statement_id.
Row = tuple[str, str, str, str, int]

DEFAULT_RUN_ROWS: Final = 250_000  # ~90 MB of row tuples in memory at a time
RUN_ROWS_ENV: Final = "KRISTAL_PUBLISH_RUN_ROWS"
_PICKLE_BATCH: Final = 2048  # rows per pickle frame: what one run holds in memory while merging
# A line already in the canonical (JCS) form whose strings need no escaping: then the groups are
# the values exactly as json.loads would give them (no duplicate key, no escape, no lone
# surrogate is possible), so validation is this match. Anything else takes `parse_row`.
_CANONICAL_LINE: Final = re.compile(
    r'\{"object":"([^"\\\x00-\x1f]+)","predicate":"([^"\\\x00-\x1f]+)",'
    r'"statement_id":"([^"\\\x00-\x1f]+)","subject":"([^"\\\x00-\x1f]+)"\}\r?'
)
_BLANK: Final = " \t\r\x0b\x0c"  # what bytes.strip() removes, so blank means what it meant


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


def run_rows_setting() -> int:
    """Rows per sorted run: `KRISTAL_PUBLISH_RUN_ROWS`, else the default (tests force tiny runs)."""
    raw = os.environ.get(RUN_ROWS_ENV, "")
    try:
        value = int(raw) if raw else DEFAULT_RUN_ROWS
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{RUN_ROWS_ENV} must be a positive integer, not {raw!r}")
    return value


class _IdFilter:
    """One bit per slot of Python's string hash: an id whose slot is free is certainly new; one
    whose slot is taken is a candidate repeat. Every second occurrence of an id is therefore a
    candidate, so checking only candidates is exact. Past CANDIDATE_CAP it gives up (overflow)
    and the exact check sorts every id instead."""

    FILTER_BYTES: Final = 1 << 24  # 2**27 slots: ~0.4 % candidates at 1M ids, ~4 % at 10M
    MASK: Final = FILTER_BYTES * 8 - 1
    CANDIDATE_CAP: Final = 1 << 20

    def __init__(self) -> None:
        self.bits = bytearray(self.FILTER_BYTES)
        self.candidates: set[str] = set()
        self.overflowed = False


@dataclass
class SortedTriples:
    """The validated input in sorted runs; `rows()` merges them once, in canonical order."""

    count: int
    work: Path
    runs: list[Path]
    memory_run: list[Row]
    ids: _IdFilter
    _repeats: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def rows(self) -> Iterator[Row]:
        """Every row in canonical order; after the last, a repeated id raises (both lines)."""
        if self.ids.overflowed:
            _exact_id_check(self.runs, self.memory_run, self.work)
        candidates = self.ids.candidates
        repeats = self._repeats
        for row in self._merged():
            if row[3] in candidates:
                repeats.setdefault(row[3], []).append(row[4])
            yield row
        _refuse_first_repeat(repeats)

    def _merged(self) -> Iterable[Row]:
        if not self.runs:
            return self.memory_run
        return heapq.merge(*(_read_run(p) for p in self.runs))

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _refuse_first_repeat(repeats: dict[str, list[int]]) -> None:
    """The repeat a row-by-row reader meets first: the smallest second occurrence."""
    found: tuple[int, int, str] | None = None
    for sid, lines in repeats.items():
        if len(lines) > 1:
            first, second = sorted(lines)[:2]
            if found is None or second < found[0]:
                found = (second, first, sid)
    if found is not None:
        second, first, sid = found
        raise ManifestSchemaInvalid(
            f"triples file line {second}: duplicate statement_id {sid!r} (also on line {first})"
        )


def _write_run(rows: Sequence[tuple[str | int, ...]], work: Path, name: str) -> Path:
    # Pickle, not JSON: these are our own tuples in our own 0700 temp dir, read back once, and
    # unpickling is several times cheaper than parsing the rows again. `fast` skips the memo
    # (nothing here is shared or recursive): half the cost of writing a run, measured.
    path = work / f"{name}.pickle"
    with path.open("wb") as out:
        for i in range(0, len(rows), _PICKLE_BATCH):
            pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
            pickler.fast = True
            pickler.dump(rows[i:i + _PICKLE_BATCH])
    return path


def _read_run(path: Path) -> Iterator[Any]:
    with path.open("rb") as run:
        while True:
            try:
                batch: list[Any] = pickle.load(run)
            except EOFError:
                return
            yield from batch


def _lines(src: Path) -> Iterator[tuple[int, list[str]]]:
    """Decoded lines in blocks, with the number of each block's first line. Decoding a block
    at once is far cheaper than per line; in a block with bad UTF-8 the lines before the bad
    one are yielded first, then `parse_row` raises with the bad line's number and reason."""
    lineno = 1
    for block in lf_blocks(src, f"read and sort {src.name}"):
        # An unterminated last line is a line too (the input need not end with LF).
        lineno += yield from _decoded(block[:-1] if block.endswith(b"\n") else block, lineno)


def _decoded(chunk: bytes, lineno: int) -> Generator[tuple[int, list[str]], None, int]:
    """`chunk`'s lines (split on LF only, as the bytes were); returns how many."""
    try:
        lines = chunk.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        good: list[str] = []
        for raw in chunk.split(b"\n"):
            try:
                good.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield lineno, good
                parse_row(raw, lineno + len(good))  # raises: not UTF-8, with its line
                raise
        raise
    yield lineno, lines
    return len(lines)


def sort_runs(src: Path, work_parent: Path, *, run_rows: int | None = None) -> SortedTriples:
    """Read, validate and sort `src` into runs (one in memory when it fits). Bad lines raise
    `ManifestSchemaInvalid` with their number; blank lines are skipped."""
    run_rows = run_rows or run_rows_setting()
    work = Path(tempfile.mkdtemp(prefix="kristal-sort-", dir=work_parent))
    ids = _IdFilter()
    bits, mask, candidates = ids.bits, ids.MASK, ids.candidates
    fast = _CANONICAL_LINE.fullmatch
    runs: list[Path] = []
    chunk: list[Row] = []
    count = 0
    try:
        for first, lines in _lines(src):
            for lineno, line in enumerate(lines, first):
                m = fast(line)
                if m is not None:
                    o, p, sid, s = m.groups()
                elif not line.strip(_BLANK):
                    continue
                else:
                    row = parse_row(line.encode("utf-8"), lineno)
                    s, p, o, sid = row["subject"], row["predicate"], row["object"], row[
                        "statement_id"]
                slot = hash(sid) & mask  # _IdFilter, inlined: this runs for every row
                byte = bits[slot >> 3]
                if byte & (1 << (slot & 7)):
                    candidates.add(sid)
                else:
                    bits[slot >> 3] = byte | (1 << (slot & 7))
                chunk.append((s, p, o, sid, lineno))
                if len(chunk) >= run_rows:
                    chunk.sort()
                    runs.append(_write_run(chunk, work, f"run-{len(runs):05d}"))
                    count += len(chunk)
                    chunk = []
            if len(candidates) > ids.CANDIDATE_CAP:  # checked per block: cheap, and bounded
                ids.overflowed = True
                candidates.clear()
        chunk.sort()
        count += len(chunk)
        if runs and chunk:
            runs.append(_write_run(chunk, work, f"run-{len(runs):05d}"))
            chunk = []
        if ids.overflowed:
            candidates.clear()
        return SortedTriples(count=count, work=work, runs=runs, memory_run=chunk, ids=ids)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _exact_id_check(runs: list[Path], memory_run: list[Row], work: Path) -> None:
    """Too many candidates: sort (statement_id, line) of every row externally and refuse the
    repeat a row-by-row reader would meet first, as `_refuse_first_repeat` does."""
    rows: Iterable[Row] = heapq.merge(*(_read_run(p) for p in runs)) if runs else memory_run
    id_runs: list[Path] = []
    batch: list[tuple[str, int]] = []
    for row in rows:
        batch.append((row[3], row[4]))
        if len(batch) >= DEFAULT_RUN_ROWS * 2:  # two fields, not five: twice the rows
            batch.sort()
            id_runs.append(_write_run(batch, work, f"ids-{len(id_runs):05d}"))
            batch = []
    batch.sort()
    merged: Iterable[tuple[str, int]] = heapq.merge(*(_read_run(p) for p in id_runs), batch)
    found: tuple[int, int, str] | None = None  # (second line, first line, id)
    group, first, seen = "", 0, 0
    for sid, line in merged:
        if sid != group or not seen:
            group, first, seen = sid, line, 1
            continue
        seen += 1
        if seen == 2 and (found is None or line < found[0]):
            found = (line, first, sid)
    for path in id_runs:
        path.unlink()
    if found is not None:
        raise ManifestSchemaInvalid(
            f"triples file line {found[0]}: duplicate statement_id {found[2]!r} "
            f"(also on line {found[1]})"
        )
