"""Triples generation and external sort: canonical lines, order, determinism, validation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kristal.errors import ManifestSchemaInvalid
from kristal.formats.canonical import canonical_bytes, sha256_hex
from kristal.publish.datagen import generate_triples, row_line, sort_triples_file
from kristal.runtime.sqlite_index import PinnedReader, build_index

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "triples.jsonl"

# Strings JCS can encode: any code point except lone surrogates.
_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1)


@settings(max_examples=300, deadline=None)
@given(_text, _text, _text, _text)
def test_fast_line_encoder_equals_rfc8785(sid: str, s: str, p: str, o: str) -> None:
    row = {"statement_id": sid, "subject": s, "predicate": p, "object": o}
    assert row_line(row) == canonical_bytes(row) + b"\n"


@pytest.mark.parametrize(
    "value", ["a", "é", "\u2028", "\x7f", "\x00", "\x1f", "\n\t\b\f\r", '"\\', "𝄞", "\ufeff", "/"]
)
def test_fast_line_encoder_equals_rfc8785_on_edge_strings(value: str) -> None:
    row = {"statement_id": value, "subject": value, "predicate": "p", "object": value}
    assert row_line(row) == canonical_bytes(row) + b"\n"


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_generated_file_is_canonical_sorted_and_unique(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    digest = generate_triples(path, 5000, seed=3)
    data = path.read_bytes()
    assert digest == sha256_hex(data)
    lines = data.split(b"\n")
    assert lines.pop() == b""
    assert len(lines) == 5000
    keys = []
    for line in lines:
        row = json.loads(line)
        assert line == canonical_bytes(row)
        assert set(row) == {"statement_id", "subject", "predicate", "object"}
        keys.append(tuple(row[k].encode()
                          for k in ("subject", "predicate", "object", "statement_id")))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert len({k[3] for k in keys}) == len(keys)


def test_generation_is_deterministic_by_seed(tmp_path: Path) -> None:
    a, b, c = (tmp_path / n for n in "abc")
    assert generate_triples(a, 2000, seed=1) == generate_triples(b, 2000, seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert generate_triples(c, 2000, seed=2) != generate_triples(a, 2000, seed=1)
    assert generate_triples(c, 0) == sha256_hex(b"")


def test_build_over_200k_generated_rows(tmp_path: Path) -> None:
    src = tmp_path / "t.jsonl"
    digest = generate_triples(src, 200_000, seed=0)
    db = tmp_path / "t.db"
    assert build_index(src, db, source_sha256=digest) == 200_000
    with PinnedReader(db) as reader:
        assert reader.count() == 200_000
        assert reader.meta["source_sha256"] == digest
        first = reader.row_at(1)
        assert first is not None
        rows = reader.query(first["subject"], None, None)
        assert rows[0] == first


def test_sort_triples_file_sorts_a_shuffled_file_across_many_chunks(tmp_path: Path) -> None:
    src = tmp_path / "gen.jsonl"
    generate_triples(src, 3000, seed=5)
    canonical = src.read_bytes()
    lines = canonical.splitlines(keepends=True)
    random.Random(1).shuffle(lines)
    # User layout: spaces, other key order, a blank line.
    shuffled = tmp_path / "shuffled.jsonl"
    with open(shuffled, "w", encoding="utf-8") as out:
        for i, line in enumerate(lines):
            row = json.loads(line)
            out.write(json.dumps(dict(reversed(list(row.items())))) + "\n")
            if i == 10:
                out.write("\n")
    dst = tmp_path / "sorted.jsonl"
    assert sort_triples_file(shuffled, dst, chunk_rows=128) == 3000  # ~24 runs
    assert dst.read_bytes() == canonical
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("kristal-sort", "."))] == []


def test_sort_orders_by_utf8_bytes_and_writes_jcs(tmp_path: Path) -> None:
    rows = [
        {"statement_id": "2", "subject": "\U0001f600", "predicate": "p", "object": "x"},
        {"statement_id": "1", "subject": "\uffff", "predicate": "p", "object": "é\n"},
        {"statement_id": "3", "subject": "Z", "predicate": "p", "object": "y"},
        {"statement_id": "4", "subject": "Z", "predicate": "a", "object": "y"},
        {"statement_id": "10", "subject": "Z", "predicate": "a", "object": "y"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dst = tmp_path / "out.jsonl"
    sort_triples_file(src, dst, chunk_rows=2)
    expected = sorted(
        rows, key=lambda r: [r[k].encode()
                             for k in ("subject", "predicate", "object", "statement_id")]
    )
    assert dst.read_bytes() == b"".join(canonical_bytes(r) + b"\n" for r in expected)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"statement_id":"s","subject":"a","predicate":"p"}', "missing"),
        (b'{"statement_id":"","subject":"a","predicate":"p","object":"o"}', "non-empty"),
        (b'{"statement_id":"s","subject":"a","predicate":"p","object":5}', "non-empty"),
        (b'["s","a","p","o"]', "object"),
        (b'{"statement_id":"s","subject":"a\xff","predicate":"p","object":"o"}', "UTF-8"),
        (b'{"statement_id":"s","subject":"a","predicate":"p","object":"o","x":"y"}', "unexpected"),
        (b'{"statement_id":"s","subject":"a","subject":"b","predicate":"p","object":"o"}', "dup"),
        (b'{"statement_id":"s","subject":"\\ud800","predicate":"p","object":"o"}', "surrogate"),
        (b"{not json", "JSON"),
    ],
)
def test_sort_refuses_bad_line_with_its_number(tmp_path: Path, line: bytes, reason: str) -> None:
    good = b'{"statement_id":"s0","subject":"a","predicate":"p","object":"o"}\n'
    src = tmp_path / "in.jsonl"
    src.write_bytes(good + good.replace(b"s0", b"s1") + line + b"\n" + good)
    with pytest.raises(ManifestSchemaInvalid) as caught:
        sort_triples_file(src, tmp_path / "out.jsonl")
    assert "line 3" in caught.value.message
    assert reason in caught.value.message
    assert not (tmp_path / "out.jsonl").exists()


def test_sort_refuses_exact_duplicate_key(tmp_path: Path) -> None:
    good = b'{"statement_id":"s0","subject":"a","predicate":"p","object":"o"}\n'
    src = tmp_path / "in.jsonl"
    src.write_bytes(good + good.replace(b'"o"', b'"o2"'))
    with pytest.raises(ManifestSchemaInvalid, match=r"line \d+: duplicate statement_id"):
        sort_triples_file(src, tmp_path / "out.jsonl", chunk_rows=1)


def test_sample_dataset_sorts_and_builds(tmp_path: Path) -> None:
    dst = tmp_path / "sample.jsonl"
    n = sort_triples_file(SAMPLE, dst)
    assert 150 <= n <= 300
    db = tmp_path / "sample.db"
    assert build_index(dst, db, source_sha256=sha256_hex(dst.read_bytes())) == n
    with PinnedReader(db) as reader:
        rivers = reader.query(None, "rdf:type", "ex:River")
        assert {r["subject"] for r in rivers} >= {"ex:river/Danube", "ex:river/Nile"}
