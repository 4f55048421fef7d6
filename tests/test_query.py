"""build_index and PinnedReader on real files and real SQLite."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
from pathlib import Path

import pytest

from kristal.errors import ManifestSchemaInvalid, PathInvalid, ProfileUnsupported
from kristal.formats.canonical import canonical_bytes, sha256_hex
from kristal.publish.datagen import generate_triples
from kristal.runtime.sqlite_index import PROFILE, PinnedReader, build_index, result_digest

ORDER = ("subject", "predicate", "object", "statement_id")


def row(sid: str, s: str, p: str, o: str) -> dict[str, str]:
    return {"statement_id": sid, "subject": s, "predicate": p, "object": o}


def write_rows(path: Path, rows: list[dict[str, str]]) -> str:
    data = b"".join(canonical_bytes(r) + b"\n" for r in rows)
    path.write_bytes(data)
    return sha256_hex(data)


def canonical_sort(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted(rows, key=lambda r: [r[k].encode() for k in ORDER])


# Varied data: shared subjects/objects, non-ASCII, escapes, statement ids NOT ascending globally.
ROWS = canonical_sort(
    [
        row("z9", "ex:a", "p:knows", "ex:b"),
        row("a1", "ex:a", "p:knows", "ex:c"),
        row("m5", "ex:a", "p:label", "Ä \"quoted\" \\ back\nslash"),
        row("b2", "ex:b", "p:knows", "ex:a"),
        row("c3", "ex:b", "p:label", "Bé"),
        row("d4", "ex:c", "p:knows", "ex:a"),
        row("e5", "ex:\U0001f600", "p:label", "emoji"),
        row("f6", "ex:\uffff", "p:label", "high"),
        row("g7", "ex:c", "p:type", "ex:b"),
    ]
)


@pytest.fixture()
def built(tmp_path: Path) -> Path:
    src = tmp_path / "triples.jsonl"
    digest = write_rows(src, ROWS)
    db = tmp_path / "index.db"
    assert build_index(src, db, source_sha256=digest) == len(ROWS)
    return db


def test_round_trip_every_pattern_equals_brute_force_filter(built: Path) -> None:
    values = {
        "s": [None, "ex:a", "ex:b", "ex:c", "ex:\U0001f600", "ex:none"],
        "p": [None, "p:knows", "p:label", "p:type"],
        "o": [None, "ex:a", "ex:b", "Bé", "ex:none"],
    }
    with PinnedReader(built) as reader:
        assert reader.count() == len(ROWS)
        assert reader.meta["profile"] == PROFILE
        for s, p, o in itertools.product(values["s"], values["p"], values["o"]):
            expected = [
                r
                for r in ROWS
                if (s is None or r["subject"] == s)
                and (p is None or r["predicate"] == p)
                and (o is None or r["object"] == o)
            ]
            assert reader.query(s, p, o) == expected, (s, p, o)
            assert reader.query(s, p, o, limit=1) == expected[:1]


def test_generated_rows_round_trip_against_brute_force(tmp_path: Path) -> None:
    src = tmp_path / "g.jsonl"
    digest = generate_triples(src, 3000, seed=9)
    rows = [json.loads(line) for line in src.read_bytes().splitlines()]
    db = tmp_path / "g.db"
    assert build_index(src, db, source_sha256=digest) == 3000
    with PinnedReader(db) as reader:
        assert reader.query(None, None, None) == rows
        for probe in rows[::97]:
            for s, p, o in [
                (probe["subject"], None, None),
                (probe["subject"], probe["predicate"], None),
                (None, probe["predicate"], probe["object"]),
                (None, None, probe["object"]),
                (probe["subject"], None, probe["object"]),
            ]:
                expected = [
                    r
                    for r in rows
                    if (s is None or r["subject"] == s)
                    and (p is None or r["predicate"] == p)
                    and (o is None or r["object"] == o)
                ]
                assert reader.query(s, p, o) == expected


def test_index_is_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    digest = write_rows(src, ROWS)
    build_index(src, tmp_path / "a.db", source_sha256=digest)
    build_index(src, tmp_path / "b.db", source_sha256=digest)
    assert (tmp_path / "a.db").read_bytes() == (tmp_path / "b.db").read_bytes()


def _refused(tmp_path: Path, data: bytes) -> ManifestSchemaInvalid:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(data)
    db = tmp_path / "bad.db"
    with pytest.raises(ManifestSchemaInvalid) as caught:
        build_index(src, db, source_sha256="0" * 64)
    assert not db.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".building")] == []
    return caught.value


def _lines(rows: list[dict[str, str]]) -> bytes:
    return b"".join(canonical_bytes(r) + b"\n" for r in rows)


def test_out_of_order_row_is_refused_with_its_line_number(tmp_path: Path) -> None:
    rows = list(ROWS)
    rows[3], rows[4] = rows[4], rows[3]
    error = _refused(tmp_path, _lines(rows))
    assert "line 5" in error.message and "out of order" in error.message


def test_order_is_by_utf8_bytes_not_utf16(tmp_path: Path) -> None:
    # U+FFFF sorts before U+1F600 in UTF-8 (and code points) but after it in UTF-16.
    rows = [row("1", "\U0001f600", "p", "o"), row("2", "\uffff", "p", "o")]
    assert "line 2" in _refused(tmp_path, _lines(rows)).message


def test_repeated_statement_id_in_same_subject_predicate_is_refused(tmp_path: Path) -> None:
    rows = [row("s1", "a", "p", "o"), row("s1", "a", "p", "o2")]
    error = _refused(tmp_path, _lines(rows))
    assert "line 2" in error.message and "duplicate statement_id" in error.message


def test_duplicate_statement_id_anywhere_is_refused_with_both_lines(tmp_path: Path) -> None:
    rows = [row("s2", "a", "p", "o"), row("s1", "b", "p", "o"), row("s3", "c", "p", "o"),
            row("s1", "d", "p", "o")]
    error = _refused(tmp_path, _lines(rows))
    assert "line 4" in error.message and "line 2" in error.message and "'s1'" in error.message


GOOD = b'{"object":"o","predicate":"p","statement_id":"s0","subject":"a"}\n'


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b'{"predicate":"p","statement_id":"s1","subject":"b"}', "exactly the fields"),
        (b'{"object":"o","predicate":"p","statement_id":"s1","subject":"b","x":"y"}', "fields"),
        (b'{"object":"","predicate":"p","statement_id":"s1","subject":"b"}', "non-empty"),
        (b'{"object":1,"predicate":"p","statement_id":"s1","subject":"b"}', "non-empty"),
        (b'{"object":null,"predicate":"p","statement_id":"s1","subject":"b"}', "non-empty"),
        (b'["o","p","s1","b"]', "JSON object"),
        (b'"just a string"', "JSON object"),
        (b'{"object":"o\xff","predicate":"p","statement_id":"s1","subject":"b"}', "UTF-8"),
        (b"{broken", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"object": "o","predicate":"p","statement_id":"s1","subject":"b"}', "canonical"),
        (b'{"predicate":"p","object":"o","statement_id":"s1","subject":"b"}', "canonical"),
        (b'{"object":"\\u006f","predicate":"p","statement_id":"s1","subject":"b"}', "canonical"),
        (b'{"object":"o","predicate":"p","statement_id":"s1","subject":"b"}\r', "canonical"),
        (b'{"object":"\\ud800","predicate":"p","statement_id":"s1","subject":"b"}', "canonical"),
        (
            b'{"object":"o","object":"o","predicate":"p","statement_id":"s1","subject":"b"}',
            "canonical",
        ),
    ],
)
def test_bad_line_is_refused_with_its_line_number(tmp_path: Path, bad: bytes, reason: str) -> None:
    third = b'{"object":"o","predicate":"p","statement_id":"s9","subject":"c"}\n'
    error = _refused(tmp_path, GOOD + bad + b"\n" + third)
    assert "line 2" in error.message, error.message
    assert reason in error.message, error.message


def test_non_utf8_far_into_the_file_names_the_right_line(tmp_path: Path) -> None:
    src = tmp_path / "g.jsonl"
    generate_triples(src, 60_000)  # > one 4 MiB read block
    data = bytearray(src.read_bytes())
    lines = bytes(data).split(b"\n")
    lines[54_321] = lines[54_321].replace(b"entity", b"ent\xc3ty", 1)
    error = _refused(tmp_path, b"\n".join(lines))
    assert "line 54322" in error.message and "UTF-8" in error.message


def test_missing_final_newline_is_refused(tmp_path: Path) -> None:
    error = _refused(tmp_path, GOOD + GOOD.replace(b"s0", b"s1").rstrip(b"\n"))
    assert "line 2" in error.message and "LF" in error.message


def test_escaped_values_pass_and_round_trip(built: Path) -> None:
    with PinnedReader(built) as reader:
        (found,) = reader.query(None, None, 'Ä "quoted" \\ back\nslash')
        assert found["statement_id"] == "m5"


def test_failed_build_keeps_previous_index(tmp_path: Path, built: Path) -> None:
    before = built.read_bytes()
    src = tmp_path / "bad.jsonl"
    src.write_bytes(GOOD + b"oops\n")
    with pytest.raises(ManifestSchemaInvalid):
        build_index(src, built, source_sha256="0" * 64)
    assert built.read_bytes() == before


def test_source_sha256_must_be_bare_hex(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    write_rows(src, ROWS)
    with pytest.raises(PathInvalid):
        build_index(src, tmp_path / "x.db", source_sha256="sha256:" + "0" * 64)


def test_empty_file_builds_an_empty_index(tmp_path: Path) -> None:
    src = tmp_path / "e.jsonl"
    src.write_bytes(b"")
    db = tmp_path / "e.db"
    assert build_index(src, db, source_sha256=sha256_hex(b"")) == 0
    with PinnedReader(db) as reader:
        assert reader.count() == 0 and reader.query(None, None, None) == []
        assert reader.row_at(1) is None


def test_reader_stays_pinned_when_the_path_is_replaced(tmp_path: Path, built: Path) -> None:
    reader = PinnedReader(built)
    other = tmp_path / "other.jsonl"
    digest = write_rows(other, [row("x", "new", "p", "o")])
    build_index(other, built, source_sha256=digest)  # os.replace onto the same path
    assert reader.count() == len(ROWS)
    assert reader.query("ex:a", None, None)[0]["subject"] == "ex:a"
    reader.close()
    with PinnedReader(built) as fresh:
        assert fresh.count() == 1


def test_reader_is_read_only(built: Path) -> None:
    readonly = pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only")
    with PinnedReader(built) as reader, readonly:
        reader._db.execute("DELETE FROM triples")


def test_reader_refuses_a_database_that_is_not_an_index(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ProfileUnsupported):
        PinnedReader(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(ProfileUnsupported):
        PinnedReader(junk)


def test_result_digest_is_sha256_of_jcs_array() -> None:
    rows = ROWS[:3]
    assert result_digest(rows) == sha256_hex(canonical_bytes(rows))
    assert result_digest([]) == sha256_hex(b"[]")


# --- statement_id uniqueness, folded into the load (a filter, then only its candidates) -------
def _unsorted_ids(n: int, duplicates: dict[int, int] | None = None) -> list[dict[str, str]]:
    """`n` rows in canonical order whose ids do not ascend; `duplicates` {line: line it copies}."""
    rows = [row(f"id-{(i * 7919) % 10007:05d}", f"s{i:05d}", "p", "o") for i in range(n)]
    for line, copied in (duplicates or {}).items():
        rows[line - 1]["statement_id"] = rows[copied - 1]["statement_id"]
    return rows


@pytest.fixture(params=["default filter", "tiny filter", "no room for candidates"])
def seen_ids(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The filter as shipped; one of 8 slots (every id a candidate); a candidate cap of 0
    (the full sort of every id, as before the filter)."""
    from kristal.runtime.unique_ids import SeenIds

    if request.param == "tiny filter":
        monkeypatch.setattr(SeenIds, "FILTER_BYTES", 1)
        monkeypatch.setattr(SeenIds, "MASK", 7)
    elif request.param == "no room for candidates":
        monkeypatch.setattr(SeenIds, "CANDIDATE_CAP", 0)
    return str(request.param)


def test_unique_ids_out_of_order_build_whatever_the_filter_says(
        tmp_path: Path, seen_ids: str) -> None:
    src = tmp_path / "u.jsonl"
    digest = write_rows(src, _unsorted_ids(3000))
    assert build_index(src, tmp_path / "u.db", source_sha256=digest) == 3000


@pytest.mark.parametrize(("duplicates", "reported"), [
    ({2999: 3}, "line 2999: duplicate statement_id 'id-{}' (also on line 3)"),
    ({40: 1, 41: 2, 3000: 1}, "line 41: duplicate statement_id 'id-{}' (also on line 2)"),
    ({2: 1}, "line 2: duplicate statement_id 'id-{}' (also on line 1)"),
    ({3000: 2999}, "line 3000: duplicate statement_id 'id-{}' (also on line 2999)"),
])
def test_duplicate_id_is_reported_exactly_as_by_the_full_check(
        tmp_path: Path, seen_ids: str, duplicates: dict[int, int], reported: str) -> None:
    rows = _unsorted_ids(3000, duplicates)
    line = int(reported.split()[1].rstrip(":"))
    first = int(reported.rsplit(" ", 1)[1].rstrip(")"))
    expected = reported.format(rows[first - 1]["statement_id"][3:])
    error = _refused(tmp_path, _lines(rows))
    assert error.code == "manifest_schema_invalid"
    assert error.message == f"triples {expected}"
    assert rows[line - 1]["statement_id"] == rows[first - 1]["statement_id"]


def test_ids_ascending_then_not_still_find_a_duplicate_of_the_ascending_part(
        tmp_path: Path, seen_ids: str) -> None:
    # Lines 1-3 ascend (no filter yet); line 4 breaks the order; line 5 repeats line 2's id.
    rows = [row("a", "s1", "p", "o"), row("b", "s2", "p", "o"), row("c", "s3", "p", "o"),
            row("0", "s4", "p", "o"), row("b", "s5", "p", "o")]
    error = _refused(tmp_path, _lines(rows))
    assert error.message == "triples line 5: duplicate statement_id 'b' (also on line 2)"
