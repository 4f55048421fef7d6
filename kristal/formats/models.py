"""The base of every document model: strict parsing into pydantic v2 models, safe relative
paths, the channel-id pattern, and the extension names our documents carry (DESIGN §4, §5).

`parse_model` is the only way raw JSON becomes a model: a document that does not validate is
refused with `manifest_schema_invalid` naming the first field that failed. Identity and
signatures are always computed over the raw dict, never over a re-serialized model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kristal.errors import ManifestSchemaInvalid, PathInvalid

Sha256Id = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NonEmpty = Annotated[str, Field(min_length=1)]

# One part of `<tenant>/<environment>/<region>` (DESIGN §1); the one definition of the pattern.
CHANNEL_PART_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
CHANNEL_PART = re.compile(rf"^{CHANNEL_PART_PATTERN}$")
CHANNEL_PATTERN = rf"^{CHANNEL_PART_PATTERN}/{CHANNEL_PART_PATTERN}/{CHANNEL_PART_PATTERN}$"
SHARD_MAJOR = re.compile(r"^(\d+)\.")

GENERATION_EXT = "kristal.activate/generation"
BLOBS_EXT = "kristal.activate/blobs"
FEDERATION_EXT = "kristal.activate/federation_id"
EXPECTATIONS_EXT = "kristal.activate/expectations"
SQLITE_PROFILE = "kristal.runtime/sqlite/1"
QUERY_CONTRACT = "kristal.v5:query:triple-pattern@1"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], raw: Any, *, what: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        error = PathInvalid if first["type"] == "path_invalid" else ManifestSchemaInvalid
        raise error(f"{what}: {loc}: {first['msg']}", field=loc) from None


def validate_relative_path(path: str) -> str:
    """A payload path: relative, `/`-separated; no `..`, backslash, control char, empty segment."""
    if not isinstance(path, str) or not path:
        raise PathInvalid("empty path")
    shown = repr(path)[:100]
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise PathInvalid(f"absolute path {shown}")
    if "\\" in path:
        raise PathInvalid(f"backslash in path {shown}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or 0x80 <= ord(ch) <= 0x9F for ch in path):
        raise PathInvalid(f"control character in path {shown}")
    if len(path.encode("utf-8")) > 1024:
        raise PathInvalid(f"path longer than 1024 bytes {shown}")
    for segment in path.split("/"):
        if segment == "":
            raise PathInvalid(f"empty segment in path {shown}")
        if segment in (".", ".."):
            raise PathInvalid(f"'{segment}' segment in path {shown}")
    # Packs are loose files: an archive would be unpacked outside our checks.
    if re.search(r"\.(tar|tgz|zip|gz|bz2|xz|zst|7z|rar)$", path, re.IGNORECASE):
        raise PathInvalid(f"archive in pack inventory {shown}: packs are loose files")
    return path


def validate_channel_id(channel_id: str) -> str:
    parts = channel_id.split("/") if isinstance(channel_id, str) else []
    if len(parts) != 3 or not all(CHANNEL_PART.fullmatch(p) for p in parts):
        raise PathInvalid(
            f"channel {str(channel_id)[:100]!r} is not <tenant>/<environment>/<region>, "
            f"each {CHANNEL_PART_PATTERN}",
            field="channel_id",
        )
    return channel_id


