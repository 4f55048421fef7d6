"""The publisher's one-pass data writer (`publish.release_data` over `publish.external_sort`):
tiny sort runs give the same bytes as the in-memory path, the files are the RFC 8785 lines the
contract names, the derived expectations equal those of the SQLite index, repeats are refused.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from kristal.errors import ManifestSchemaInvalid
from kristal.formats.canonical import canonical_bytes, sha256_hex
from kristal.publish import external_sort
from kristal.publish.datagen import generate_triples
from kristal.publish.documents import assertion_of, shard_of
from kristal.publish.release_data import ReleaseData, write_release_data
from kristal.runtime.checks import derive_expectations
from kristal.runtime.sqlite_index import build_index

ORDER = ("subject", "predicate", "object", "statement_id")


def _user_file(tmp_path: Path, rows: int = 2000) -> tuple[Path, list[dict[str, str]]]:
    """Generated rows with content-style ids (not ascending), a few awkward strings, shuffled,
    in mixed layouts (canonical lines, spaced JSON, a blank line, CRLF)."""
    src = tmp_path / "gen.jsonl"
    generate_triples(src, rows, seed=3)
    data = [json.loads(line) for line in src.read_text().splitlines()]
    for row in data:
        row["statement_id"] = "st:" + hashlib.blake2b(row["statement_id"].encode(),
                                                      digest_size=8).hexdigest()
    data += [
        {"statement_id": "u1", "subject": "\U0001f600", "predicate": "p", "object": 'q"\\'},
        {"statement_id": "u2", "subject": "\uffff", "predicate": "p", "object": "é\n\x01"},
        {"statement_id": "u3", "subject": "entity:000000001", "predicate": "kg:label",
         "object": "\u2028"},
    ]
    random.Random(7).shuffle(data)
    user = tmp_path / "user.jsonl"
    with user.open("w", encoding="utf-8", newline="") as out:
        for i, row in enumerate(data):
            if i % 3 == 0:
                out.write(json.dumps(row) + "\n")
            elif i % 3 == 1:
                out.write(json.dumps(dict(sorted(row.items())), separators=(",", ":"),
                                      ensure_ascii=False) + "\r\n")
            else:
                out.write(canonical_bytes(row).decode() + "\n")
            if i == 5:
                out.write("  \n")
    return user, data


def _written(tmp_path: Path, src: Path, name: str, shards: int, run_rows: int) -> ReleaseData:
    out = tmp_path / name
    out.mkdir()
    return write_release_data(src, out, shards, run_rows=run_rows)


@pytest.mark.parametrize("shards", [1, 3])
def test_tiny_sort_runs_write_the_same_bytes_as_one_run_in_memory(
        tmp_path: Path, shards: int) -> None:
    src, _ = _user_file(tmp_path)
    tiny = _written(tmp_path, src, "tiny", shards, run_rows=7)  # ~290 runs on disk
    whole = _written(tmp_path, src, "whole", shards, run_rows=10**9)
    assert tiny.triples.read_bytes() == whole.triples.read_bytes()
    assert [b.read_bytes() for b in tiny.blobs] == [b.read_bytes() for b in whole.blobs]
    assert (tiny.triples_entry, tiny.blob_entries) == (whole.triples_entry, whole.blob_entries)
    assert (tiny.facts, tiny.expectations) == (whole.facts, whole.expectations)
    assert not [p for p in (tmp_path / "tiny").iterdir() if p.name.startswith("kristal-sort")]


@pytest.mark.parametrize("shards", [1, 3])
def test_written_files_are_the_contracts_jcs_lines_with_their_hashes(
        tmp_path: Path, shards: int) -> None:
    src, rows = _user_file(tmp_path)
    done = _written(tmp_path, src, "out", shards, run_rows=50)
    ordered = sorted(rows, key=lambda r: [r[k].encode() for k in ORDER])
    triples = b"".join(canonical_bytes(r) + b"\n" for r in ordered)
    assert done.triples.read_bytes() == triples
    assert done.triples_entry["sha256"] == sha256_hex(triples)
    assert done.triples_entry["size_bytes"] == len(triples)
    for i, (blob, entry) in enumerate(zip(done.blobs, done.blob_entries, strict=True)):
        mine = [r for r in ordered if shards == 1 or shard_of(r["subject"], shards) == i]
        expected = b"".join(canonical_bytes(assertion_of(r)) + b"\n" for r in mine)
        assert blob.read_bytes() == expected
        assert (entry["sha256"], entry["size_bytes"]) == (sha256_hex(expected), len(expected))
    assert done.row_count == len(rows)
    assert done.facts.lines[0] == sum(done.facts.lines[1:]) == len(rows)
    assert done.facts.first_disorder == [None] * (len(done.blobs) + 1)
    assert done.facts.assertions_per_row


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 1000])
def test_derived_expectations_equal_those_of_the_sqlite_index(tmp_path: Path, rows: int) -> None:
    src = tmp_path / "gen.jsonl"
    generate_triples(src, rows, seed=11)
    done = _written(tmp_path, src, "out", 1, run_rows=64)
    db = tmp_path / "index.sqlite"
    assert build_index(done.triples, db, source_sha256=done.triples_entry["sha256"]) == rows
    assert done.expectations == derive_expectations(db)


DUPLICATES = {
    # (input lines, the later line of the first repeat a row-by-row reader meets, its first line)
    "same_subject": ([("s1", "a", "o"), ("s2", "b", "o"), ("s1", "a", "o2")], 3, 1),
    "unsorted": ([("x9", "z", "o"), ("s1", "c", "o"), ("s2", "b", "o"), ("s1", "a", "o")], 4, 2),
    "exact_copy": ([("s0", "a", "o"), ("s0", "a", "o")], 2, 1),
    "two_ids": ([("b", "x", "o"), ("a", "y", "o"), ("a", "x", "o"), ("b", "z", "o"),
                 ("a", "w", "o")], 3, 2),
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
@pytest.mark.parametrize("run_rows", [1, 2, 10**9])
@pytest.mark.parametrize("overflow", [False, True], ids=["filter", "exact-sort"])
def test_repeated_statement_id_is_refused_with_the_same_lines_however_it_is_sorted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, run_rows: int,
        overflow: bool) -> None:
    if overflow:  # every candidate overflows the filter: the exact external check decides
        monkeypatch.setattr(external_sort._IdFilter, "CANDIDATE_CAP", 0)
    lines, later, first = DUPLICATES[case]
    src = tmp_path / "dup.jsonl"
    src.write_text("".join(json.dumps({"statement_id": sid, "subject": s, "predicate": "p",
                                       "object": o}) + "\n" for sid, s, o in lines))
    with pytest.raises(ManifestSchemaInvalid) as caught:
        _written(tmp_path, src, "out", 1, run_rows=run_rows)
    assert caught.value.code == "manifest_schema_invalid"
    sid = lines[later - 1][0]
    assert caught.value.message == (
        f"triples file line {later}: duplicate statement_id {sid!r} (also on line {first})")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith("kristal-sort")]


def test_run_size_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(external_sort.RUN_ROWS_ENV, "3")
    assert external_sort.run_rows_setting() == 3
    monkeypatch.delenv(external_sort.RUN_ROWS_ENV)
    assert external_sort.run_rows_setting() == external_sort.DEFAULT_RUN_ROWS
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv(external_sort.RUN_ROWS_ENV, bad)
        with pytest.raises(ValueError):
            external_sort.run_rows_setting()
