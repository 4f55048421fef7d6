"""The validation profiles the publisher checks (schema over the documents; ordering, row-count
and source-binding over the data files, from the facts gathered in the one pass that wrote and
hashed them) and the signed report of each; a failed report is still published: activation
refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kristal.errors import ManifestSchemaInvalid
from kristal.formats.identity import DocKind
from kristal.formats.models import (
    parse_model,
)
from kristal.formats.time import rfc3339
from kristal.publish.release_data import StreamFacts
from kristal.trust.signing import SigningKey, sign_document

KNOWN_PROFILES = ("schema", "ordering", "row-count", "source-binding")
REPORT_LIFETIME = timedelta(days=365)


# --- validation profiles: checks over the files as they were written ------------------------
# The row-level profiles read the facts the writer gathered while it wrote, hashed and sized
# each file (`release_data.StreamFacts`): one pass over the data serves every profile.
def _check_schema(ctx: ReleaseFiles) -> list[dict[str, str]]:
    findings = []
    for doc, model, what in ctx.documents:
        try:
            parse_model(model, doc, what=what)
            findings.append({"check_id": f"schema:{what}", "status": "passed", "message": "valid"})
        except ManifestSchemaInvalid as exc:
            findings.append(
                {"check_id": f"schema:{what}", "status": "failed", "message": exc.message}
            )
    return findings


def _check_ordering(ctx: ReleaseFiles) -> list[dict[str, str]]:
    findings = []
    names = ["triples"] + [f"assertions[{i}]" for i in range(len(ctx.assertion_blobs))]
    for what, line_no in zip(names, ctx.facts.first_disorder, strict=True):
        bad = f"line {line_no} is not after line {line_no - 1}" if line_no else ""
        findings.append(
            {
                "check_id": f"ordering:{what}",
                "status": "failed" if bad else "passed",
                "message": bad or "strictly increasing by subject, predicate, object, id bytes",
            }
        )
    return findings


def _check_row_count(ctx: ReleaseFiles) -> list[dict[str, str]]:
    pack_rows = ctx.facts.lines[0]
    exchange_rows = sum(ctx.facts.lines[1:])
    ok = pack_rows == exchange_rows == ctx.row_count
    return [
        {
            "check_id": "row-count:pack-vs-exchange",
            "status": "passed" if ok else "failed",
            "message": f"pack {pack_rows} rows, exchange {exchange_rows} assertions",
        }
    ]


def _check_source_binding(ctx: ReleaseFiles) -> list[dict[str, str]]:
    findings = []
    for pack in ctx.packs:
        ref = pack["source_exchange_ref"]
        ok = (
            ref["exchange_id"] == ctx.exchange["kristal_id"]
            and ref["exchange_manifest_hash"] == "sha256:" + ctx.exchange_sha256
        )
        findings.append(
            {
                "check_id": "source-binding:manifest",
                "status": "passed" if ok else "failed",
                "message": f"pack {pack['runtime_pack_id']} names {ref['exchange_id']}",
            }
        )
    # Row by row: each pack row was written with its one assertion (all shards together).
    mismatch = "" if ctx.facts.assertions_per_row else "pack rows and exchange assertions differ"
    findings.append(
        {
            "check_id": "source-binding:rows",
            "status": "failed" if mismatch else "passed",
            "message": mismatch or "every pack row is an assertion of the exchange",
        }
    )
    return findings


PROFILE_CHECKS: dict[str, Callable[[ReleaseFiles], list[dict[str, str]]]] = {
    "schema": _check_schema,
    "ordering": _check_ordering,
    "row-count": _check_row_count,
    "source-binding": _check_source_binding,
}


@dataclass
class ReleaseFiles:
    triples: Path
    assertion_blobs: list[Path]
    exchange: dict[str, Any]
    exchange_sha256: str
    packs: list[dict[str, Any]]
    documents: list[tuple[dict[str, Any], type[Any], str]]
    row_count: int
    facts: StreamFacts


def validation_report(
    profile: str, targets: list[str], findings: list[dict[str, str]], key: SigningKey, now: datetime
) -> dict[str, Any]:
    failed = any(f["status"] == "failed" for f in findings)
    doc = {
        "artifact_type": "validation_report",
        "profile": profile,
        "target_artifact_ids": targets,
        "result": "failed" if failed else "passed",
        "findings": findings,
        "validator": key.key_id,
        "created_at": rfc3339(now),
        "expires_at": rfc3339(now + REPORT_LIFETIME),
    }
    return sign_document(doc, DocKind.VALIDATION_REPORT, key, now=now)


