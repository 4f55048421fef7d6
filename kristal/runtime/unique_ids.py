"""Statement-id uniqueness of a triples file, folded into its load into the SQLite index
(`sqlite_index.build_index`): a fixed-size filter while the rows stream, then one exact check of
the few candidates, or of every id when the filter overflows.
"""

from __future__ import annotations

import sqlite3
from array import array
from typing import Final

from kristal.errors import ManifestSchemaInvalid


def line_of(lineno: int) -> str:
    return f"triples line {lineno}"


class SeenIds:
    """Statement-id uniqueness folded into the load, in fixed memory.

    A one-bit-per-slot filter of the ids seen so far (keyed by Python's string hash): an id
    whose slot is free is certainly new; one whose slot is taken is a *candidate* duplicate and
    its line is noted. Every second occurrence of an id is therefore a candidate, so checking
    only the candidates' ids against the whole table (`find_duplicate`) is exact and gives the
    same answer as checking every id. The filter holds FILTER_BYTES; past CANDIDATE_CAP
    candidates it gives up and the full check (one sort of every id) runs instead.
    """

    FILTER_BYTES: Final = 1 << 24  # 2**27 slots: ~0.4 % candidates at 1M rows, ~4 % at 10M
    MASK: Final = FILTER_BYTES * 8 - 1
    CANDIDATE_CAP: Final = 1 << 20  # line numbers (8 bytes each) kept for the final check

    def __init__(self) -> None:
        self.bits = bytearray(self.FILTER_BYTES)
        self.candidates = array("q")
        self.overflowed = False

    def add(self, sid: str, lineno: int) -> None:
        """Note `sid` (line `lineno`); the row loop inlines the same steps."""
        slot = hash(sid) & self.MASK
        seen = self.bits[slot >> 3]
        if seen & (1 << (slot & 7)):
            self.candidate(lineno)
        else:
            self.bits[slot >> 3] = seen | (1 << (slot & 7))

    def candidate(self, lineno: int) -> None:
        if len(self.candidates) < self.CANDIDATE_CAP:
            self.candidates.append(lineno)
        else:
            self.overflowed = True

    def find_duplicate(self, db: sqlite3.Connection) -> None:
        """Raise for the duplicate whose later line comes first (as the full check does)."""
        if self.overflowed:
            check_unique_ids(db)
            return
        if not self.candidates:
            return
        db.execute("CREATE TEMP TABLE candidate_lines (line INTEGER PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO temp.candidate_lines VALUES (?)",
                       ((line,) for line in self.candidates))
        # The candidates' ids by rowid, then one scan of the table for every line with one of
        # them (SQLite would otherwise plan the join the other way round: two scans).
        check_unique_ids(db, "WHERE statement_id IN (SELECT statement_id FROM triples "
                              "WHERE rowid IN temp.candidate_lines)")
        db.execute("DROP TABLE temp.candidate_lines")


def check_unique_ids(db: sqlite3.Connection, where: str = "") -> None:
    """Global statement_id uniqueness over the rows `where` selects: one sort inside SQLite."""
    dup = db.execute(
        f"SELECT statement_id, min(rowid), max(rowid) FROM triples {where} "
        "GROUP BY statement_id HAVING count(*) > 1 ORDER BY 3 LIMIT 1"
    ).fetchone()
    if dup is not None:
        sid, first, second = dup
        raise ManifestSchemaInvalid(
            f"{line_of(second)}: duplicate statement_id {sid!r} (also on line {first})"
        )
