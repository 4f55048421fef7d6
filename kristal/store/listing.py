"""Listing "directories" of the bucket: the common prefixes one level below a prefix (S3
`Delimiter="/"`), so walking the channels never lists their history objects."""

from __future__ import annotations

import botocore.exceptions

from kristal.errors import StorageUnavailable
from kristal.store.s3 import ObjectStore


def child_prefixes(store: ObjectStore, prefix: str) -> list[str]:
    """The names one level below `prefix` (relative to the store prefix; `prefix` ends in
    `/`), e.g. `["acme", "globex"]` for `channels/`."""
    full = store.full_key(prefix)
    names: list[str] = []
    paginator = store._client.get_paginator("list_objects_v2")  # same package: its own client
    try:
        for page in paginator.paginate(Bucket=store.config.bucket, Prefix=full, Delimiter="/"):
            for item in page.get("CommonPrefixes", []) or []:
                names.append(str(item["Prefix"])[len(full):].rstrip("/"))
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise StorageUnavailable(
            f"LIST s3://{store.config.bucket}/{full} failed: {exc}") from None
    return names
