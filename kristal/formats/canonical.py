"""Strict JSON in, RFC 8785 (JCS) bytes out.

Documents cross our boundary only through `parse_json`, which refuses what JCS cannot represent
faithfully (duplicate keys, NaN/Infinity, non-UTF-8, numbers beyond IEEE-754 doubles' exact
integer range, pathological nesting, oversize input) with `manifest_schema_invalid`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import rfc8785

from kristal.errors import ManifestSchemaInvalid

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
_MAX_SAFE_INT = 2**53 - 1


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestSchemaInvalid(f"duplicate key {key!r}", field=key)
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ManifestSchemaInvalid(f"non-finite number {name} is not JSON")


def _parse_int(text: str) -> int:
    # Python would accept 10**4000 and JCS would then round it: refuse rather than change meaning.
    if len(text) > 20 or abs(int(text)) > _MAX_SAFE_INT:
        raise ManifestSchemaInvalid(
            f"integer {text[:24]} is outside the exact range of JSON numbers"
        )
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ManifestSchemaInvalid(f"number {text[:24]} overflows a double")
    return value


def _depth(value: Any, limit: int = MAX_DEPTH) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ManifestSchemaInvalid(f"document nests deeper than {limit} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def parse_json(
    data: bytes | str, *, max_bytes: int = MAX_DOCUMENT_BYTES, what: str = "document"
) -> Any:
    """Parse one JSON document strictly. Raises `ManifestSchemaInvalid` with the reason."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > max_bytes:
        raise ManifestSchemaInvalid(f"{what} is {len(data)} bytes, over the {max_bytes}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestSchemaInvalid(
            f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    # Cheap guard before the recursive parser sees a bracket bomb.
    if text.count("[") + text.count("{") > 4 * MAX_DEPTH:
        _bracket_depth_guard(text)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except ManifestSchemaInvalid:
        raise
    except RecursionError:
        raise ManifestSchemaInvalid(f"{what} nests too deeply") from None
    except ValueError as exc:
        raise ManifestSchemaInvalid(f"{what} is not valid JSON: {exc}") from None
    _depth(value)
    return value


def _bracket_depth_guard(text: str) -> None:
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ManifestSchemaInvalid(f"document nests deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1


def canonical_bytes(value: Any) -> bytes:
    """RFC 8785 canonical form (the `rfc8785` implementation)."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ManifestSchemaInvalid(f"cannot canonicalize: {exc}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_sha256(value: Any) -> str:
    """`sha256:<hex>` of the JCS bytes of `value` (used for record chains and result digests)."""
    return "sha256:" + sha256_hex(canonical_bytes(value))
