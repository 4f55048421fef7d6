"""`kristalctl id` and `kristalctl canon`: recomputed IDs and RFC 8785 bytes of documents."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import JsonOpt, app, read_file
from flows.console import emit
from kristal.errors import UsageInvalid


@app.command("id")
def id_command(
    kind: Annotated[str, typer.Argument(help="exchange|runtime-pack|federation|validation-report")],
    file: Annotated[Path, typer.Argument(help="The document: a JSON manifest or report.")],
    as_json: JsonOpt = False,
) -> None:
    """Print the recomputed ID of a document.

    Example: kristalctl id runtime-pack pack.json
    """
    from kristal.formats.canonical import parse_json
    from kristal.formats.identity import DocKind, compute_id

    kinds = {
        "exchange": DocKind.EXCHANGE,
        "runtime-pack": DocKind.RUNTIME_PACK,
        "federation": DocKind.FEDERATION,
        "validation-report": DocKind.VALIDATION_REPORT,
    }
    if kind not in kinds:
        raise UsageInvalid(f"kind must be one of {sorted(kinds)}")
    doc = parse_json(read_file(file), what=str(file))
    if not isinstance(doc, dict):
        from kristal.errors import ManifestSchemaInvalid

        raise ManifestSchemaInvalid(f"{file} is not a JSON object")
    artifact_id = compute_id(doc, kinds[kind])
    emit(as_json, {"kind": kind, "id": artifact_id}, artifact_id)


@app.command("canon")
def canon_command(
    file: Annotated[Path, typer.Argument(help="The JSON file to canonicalize.")],
    as_json: JsonOpt = False,
) -> None:
    """Print the RFC 8785 bytes of a JSON file (no trailing newline).

    Example: kristalctl canon manifest.json | sha256sum
    """
    from kristal.formats.canonical import canonical_bytes, parse_json, sha256_hex

    data = canonical_bytes(parse_json(read_file(file), what=str(file)))
    if as_json:
        emit(True, {"canonical": data.decode(), "sha256": "sha256:" + sha256_hex(data)}, "")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
