"""The upstream Kristal v5 Runtime Pack JSON schema (a verbatim copy of
`shared/schemas/runtime-pack-manifest.schema.json`, kept equal by a test), applied to every
pack manifest before our own model reads it: what the schema refuses is
`manifest_schema_invalid` with the JSON path of the first violation.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

from kristal.errors import ManifestSchemaInvalid
from kristal.formats.time import is_rfc3339

SCHEMA_FILE = "runtime-pack-manifest.schema.json"


@cache
def _validator() -> Draft202012Validator:
    text = resources.files("kristal.formats").joinpath("schemas", SCHEMA_FILE).read_text("utf-8")
    schema = json.loads(text)
    # Not `check_schema` here: the meta-schema pass cost ~0.1 s of every process that reads a
    # pack, for a vendored file that does not change at run time (a test checks it instead).
    # `date-time` is asserted as our models parse it (RFC 3339 with a zone); other formats
    # (`uri`) are annotations here, as the schema's default.
    formats = FormatChecker(formats=())
    formats.checks("date-time")(is_rfc3339)
    return Draft202012Validator(schema, format_checker=formats)


def json_path(error: ValidationError) -> str:
    """`$.files[0].role`-style path of a violation."""
    out = "$"
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def check_pack_schema(doc: Any, *, what: str = "runtime pack manifest") -> None:
    """Raise `ManifestSchemaInvalid` (field: the JSON path) unless `doc` validates."""
    error = best_match(_validator().iter_errors(doc))
    if error is not None:
        path = json_path(error)
        raise ManifestSchemaInvalid(f"{what} at {path}: {error.message[:300]}", field=path)
