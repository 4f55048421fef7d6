"""A boto3 adapter for any S3-compatible endpoint (DESIGN §4, §6, §10).

Reads stream with flat memory and typed errors; conditional writes (If-Match / If-None-Match: *)
never raise for ambiguous failures but answer WRITTEN, PRECONDITION_FAILED or UNKNOWN.

Rules this module enforces:
- botocore never retries a conditional PUT (a separate client with total_max_attempts=1), so a
  write is never resent blindly; a 409 ConditionalRequestConflict (nothing written) is retried
  here, a few times, with the same condition.
- 412 and, on If-Match, 404 mean "changed or absent" (SeaweedFS answers 412, AWS 404).
- Timeouts, 5xx and dropped connections on a conditional PUT are UNKNOWN: the caller re-reads.
- Downloads hash in the same pass as they write, and stop as soon as the object is longer than
  declared. No botocore exception crosses this module's boundary.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig

from kristal.errors import (
    EndpointUnsafe,
    FileHashMismatch,
    ManifestSchemaInvalid,
    ObjectNotFound,
    PathInvalid,
    StorageUnavailable,
)
from kristal.store import download
from kristal.store.clients import shared_client

MiB = 1024 * 1024
_CHUNK = 1 * MiB  # bounded reads of small documents, a chunk at a time
_CONFLICT_RETRIES = 3  # 409 ConditionalRequestConflict: nothing was written, safe to resend
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# A cut-short error response raises urllib3's own errors, not botocore's: both are transport.
_TRANSPORT_ERRORS = (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError)


_PROBED: set[tuple[str | None, str, str]] = set()
_PROBE_LOCK = threading.Lock()


@dataclass(frozen=True)
class StoreConfig:
    endpoint_url: str | None
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    access_key: str | None = None
    # repr=False: configs end up in logs and Prefect artifacts; the secret must not.
    secret_key: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    # Every read has an overall deadline: base + size / minimum throughput (DESIGN §7).
    deadline_base_s: float = 30.0
    min_bytes_per_s: float = 1_000_000.0


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to StoreConfig.prefix
    size: int
    etag: str  # opaque, quoted as the server sent it; not a content hash


class WriteStatus(StrEnum):
    WRITTEN = "written"
    PRECONDITION_FAILED = "precondition_failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class WriteOutcome:
    status: WriteStatus
    etag: str | None = None
    detail: str = ""


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return f"HTTP {_http_status(exc)} {_error_code(exc)}: {exc.response.get('Error', {})}"
    return f"{type(exc).__name__}: {exc}"


class ObjectStore:
    """One bucket (plus optional prefix) on one S3-compatible endpoint."""

    def __init__(
        self,
        config: StoreConfig,
        *,
        parallel_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
        workers: int = 4,
    ) -> None:
        self.config = config
        self.parallel_threshold = parallel_threshold
        self.part_size = part_size
        self.workers = workers
        self._prefix = config.prefix.strip("/")
        pool = max(32, workers * 2 + 2)
        self._client = shared_client(config, pool, attempts=3)
        self._pool = pool
        self._cond: Any = None

    @property
    def _cond_client(self) -> Any:
        """Conditional writes: exactly one attempt on the wire, ever (DESIGN §6 invariant 3).
        Made on the first write (read-only commands never need it)."""
        if self._cond is None:
            self._cond = shared_client(self.config, self._pool, attempts=1)
        return self._cond

    # --- keys --------------------------------------------------------------------------------
    def full_key(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise PathInvalid(f"object key must be relative and non-empty: {key!r}")
        return f"{self._prefix}/{key}" if self._prefix else key

    def _relative(self, full_key: str) -> str:
        if self._prefix and full_key.startswith(self._prefix + "/"):
            return full_key[len(self._prefix) + 1 :]
        return full_key

    def unavailable(self, action: str, key: str, exc: BaseException) -> StorageUnavailable:
        return StorageUnavailable(
            f"{action} s3://{self.config.bucket}/{self.full_key(key) if key else ''} at "
            f"{self.config.endpoint_url or 'AWS'} failed: {_describe(exc)}"
        )

    # --- bucket ------------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent, safe under races)."""
        try:
            self._client.head_bucket(Bucket=self.config.bucket)
            return
        except botocore.exceptions.ClientError as exc:
            if _http_status(exc) != 404:
                raise self.unavailable("head bucket", "", exc) from None
        except _TRANSPORT_ERRORS as exc:
            raise self.unavailable("head bucket", "", exc) from None
        try:
            if self.config.region == "us-east-1":
                self._client.create_bucket(Bucket=self.config.bucket)
            else:
                self._client.create_bucket(
                    Bucket=self.config.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self.config.region},
                )
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self.unavailable("create bucket", "", exc) from None
        except _TRANSPORT_ERRORS as exc:
            raise self.unavailable("create bucket", "", exc) from None

    # --- reads -------------------------------------------------------------------------------
    def get_object(self, key: str, **extra: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self._client.get_object(
                Bucket=self.config.bucket, Key=self.full_key(key), **extra)
            return response
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                raise ObjectNotFound(
                    f"s3://{self.config.bucket}/{self.full_key(key)} does not exist"
                ) from None
            if _http_status(exc) == 412:
                # Only ranged resumes send If-Match: the object changed under us.
                raise FileHashMismatch(
                    f"{self.full_key(key)} changed while it was being read"
                ) from None
            raise self.unavailable("GET", key, exc) from None
        except _TRANSPORT_ERRORS as exc:
            raise self.unavailable("GET", key, exc) from None

    def head(self, key: str) -> ObjectInfo | None:
        """Size and etag of `key`, or None when it does not exist."""
        try:
            resp = self._client.head_object(Bucket=self.config.bucket, Key=self.full_key(key))
        except botocore.exceptions.ClientError as exc:
            if _http_status(exc) == 404:
                return None
            raise self.unavailable("HEAD", key, exc) from None
        except _TRANSPORT_ERRORS as exc:
            raise self.unavailable("HEAD", key, exc) from None
        return ObjectInfo(key=key, size=int(resp["ContentLength"]), etag=str(resp["ETag"]))

    def get_bytes(self, key: str, *, max_bytes: int) -> tuple[bytes, str]:
        """The whole (small) object and its etag; more than `max_bytes` -> ManifestSchemaInvalid."""
        deadline = download.Deadline(self, key, max_bytes)
        resp = self.get_object(key)
        body = resp["Body"]
        try:
            declared = int(resp.get("ContentLength", 0) or 0)
            if declared > max_bytes:
                raise ManifestSchemaInvalid(
                    f"{self.full_key(key)} is {declared} bytes, more than the {max_bytes} allowed"
                )
            parts: list[bytes] = []
            total = 0
            # Bounded read even if Content-Length lied: never more than max_bytes + one chunk.
            while True:
                chunk = deadline.read(body, min(_CHUNK, max_bytes + 1 - total))
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise ManifestSchemaInvalid(
                        f"{self.full_key(key)} is longer than the {max_bytes} bytes allowed"
                    )
                parts.append(chunk)
        except (*_TRANSPORT_ERRORS, OSError) as exc:
            raise self.unavailable("GET", key, exc) from None
        finally:
            body.close()
        return b"".join(parts), str(resp["ETag"])

    # --- streaming reads (kristal.store.download) ------------------------------------------
    def stream_sha256(self, key: str, *, expected_size: int | None = None) -> tuple[str, int]:
        """Re-hash an object in the bucket without storing it: (hex sha256, size)."""
        return download.stream_sha256(self, key, expected_size=expected_size)

    def download_to(
        self, key: str, dest: Path, *, expected_sha256: str, expected_size: int
    ) -> None:
        """Stream `key` into `dest`, hashing in the same pass; any mismatch -> FileHashMismatch
        (`kristal.store.download.download_to`)."""
        download.download_to(self, key, dest, expected_sha256=expected_sha256,
                             expected_size=expected_size)

    # --- unconditional writes (content-addressed objects only) ------------------------------
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/json") -> str:
        """Unconditional PUT (retried by botocore); only for content-addressed keys."""
        try:
            resp = self._client.put_object(
                Bucket=self.config.bucket, Key=self.full_key(key), Body=data,
                ContentType=content_type,
            )
        except (botocore.exceptions.ClientError, *_TRANSPORT_ERRORS) as exc:
            raise self.unavailable("PUT", key, exc) from None
        return str(resp["ETag"])

    def upload_file(self, key: str, path: Path) -> str:
        """Upload a file (multipart above 16 MiB, bounded memory); returns the resulting etag."""
        transfer = TransferConfig(
            multipart_threshold=16 * MiB,
            multipart_chunksize=8 * MiB,
            max_concurrency=self.workers,
            use_threads=True,
        )
        try:
            self._client.upload_file(
                str(path), self.config.bucket, self.full_key(key), Config=transfer
            )
        except (botocore.exceptions.ClientError, *_TRANSPORT_ERRORS) as exc:
            raise self.unavailable("upload", key, exc) from None
        except boto3.exceptions.S3UploadFailedError as exc:
            raise self.unavailable("upload", key, exc) from None
        info = self.head(key)
        if info is None:
            raise StorageUnavailable(f"{self.full_key(key)} is missing right after its upload")
        return info.etag

    def delete(self, key: str) -> None:
        """Remove `key` (no error when absent). Used for probe clean-up and by tests."""
        try:
            self._client.delete_object(Bucket=self.config.bucket, Key=self.full_key(key))
        except (botocore.exceptions.ClientError, *_TRANSPORT_ERRORS) as exc:
            raise self.unavailable("DELETE", key, exc) from None

    # --- conditional writes ------------------------------------------------------------------
    def put_if_absent(self, key: str, data: bytes) -> WriteOutcome:
        """PUT with If-None-Match: * (create only)."""
        return self._conditional_put(key, data, {"IfNoneMatch": "*"})

    def put_if_match(self, key: str, data: bytes, etag: str) -> WriteOutcome:
        """PUT with If-Match: etag (compare-and-swap)."""
        return self._conditional_put(key, data, {"IfMatch": etag})

    def _conditional_put(self, key: str, data: bytes, condition: dict[str, str]) -> WriteOutcome:
        full_key = self.full_key(key)
        for attempt in range(_CONFLICT_RETRIES + 1):
            try:
                resp = self._cond_client.put_object(
                    Bucket=self.config.bucket,
                    Key=full_key,
                    Body=data,
                    ContentType="application/json",
                    **condition,
                )
                return WriteOutcome(WriteStatus.WRITTEN, etag=str(resp["ETag"]))
            except botocore.exceptions.ClientError as exc:
                status, code = _http_status(exc), _error_code(exc)
                if status == 412:
                    return WriteOutcome(WriteStatus.PRECONDITION_FAILED, detail=_describe(exc))
                if status == 404 and "IfMatch" in condition and code != "NoSuchBucket":
                    # AWS answers 404 to If-Match on a missing key: "changed or absent".
                    return WriteOutcome(WriteStatus.PRECONDITION_FAILED, detail=_describe(exc))
                if status == 409:
                    # ConditionalRequestConflict: a concurrent operation won the lock and
                    # nothing of ours was written, so resending the same condition is safe.
                    if attempt < _CONFLICT_RETRIES:
                        time.sleep(0.05 * (2**attempt))
                        continue
                    return WriteOutcome(WriteStatus.UNKNOWN, detail=_describe(exc))
                if status >= 500 or status == 0:
                    return WriteOutcome(WriteStatus.UNKNOWN, detail=_describe(exc))
                # 400/403/404-bucket...: definitely not written, and not a race: misconfiguration.
                raise self.unavailable("conditional PUT", key, exc) from None
            except _TRANSPORT_ERRORS as exc:
                # Timeouts, resets, closed connections: the PUT may or may not have landed.
                return WriteOutcome(WriteStatus.UNKNOWN, detail=_describe(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    # --- listing -----------------------------------------------------------------------------
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix` (relative to the store prefix), in the server's (UTF-8) order."""
        full = f"{self._prefix}/{prefix}" if self._prefix else prefix
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=full):
                for item in page.get("Contents", []) or []:
                    yield self._relative(str(item["Key"]))
        except (botocore.exceptions.ClientError, *_TRANSPORT_ERRORS) as exc:
            raise StorageUnavailable(
                f"LIST s3://{self.config.bucket}/{full} failed: {_describe(exc)}"
            ) from None

    # --- endpoint safety ---------------------------------------------------------------------
    def ensure_conditional_writes(self) -> None:
        """Probe this endpoint once per process before the first write that relies on
        conditions (DESIGN §6 invariant 6); an unsafe endpoint is refused every time."""
        scope = (self.config.endpoint_url, self.config.bucket, self._prefix)
        with _PROBE_LOCK:
            if scope in _PROBED:
                return
            self.probe_conditional_writes()
            _PROBED.add(scope)

    def probe_conditional_writes(self) -> None:
        """Refuse an endpoint that ignores If-Match / If-None-Match (DESIGN §6 invariant 6)."""
        key = f"_probe/{uuid.uuid4().hex}"
        try:
            first = self.put_if_absent(key, b'{"probe":1}')
            if first.status is not WriteStatus.WRITTEN or first.etag is None:
                raise StorageUnavailable(f"probe: create of a fresh key failed: {first}")
            again = self.put_if_absent(key, b'{"probe":2}')
            if again.status is WriteStatus.WRITTEN:
                raise EndpointUnsafe(
                    f"{self.config.endpoint_url} ignores If-None-Match: * (overwrote {key})"
                )
            if again.status is WriteStatus.UNKNOWN:
                raise StorageUnavailable(f"probe: If-None-Match outcome unknown: {again.detail}")
            swapped = self.put_if_match(key, b'{"probe":3}', first.etag)
            if swapped.status is not WriteStatus.WRITTEN:
                raise EndpointUnsafe(
                    f"{self.config.endpoint_url} refused If-Match with the current etag: "
                    f"{swapped.status} {swapped.detail}"
                )
            stale = self.put_if_match(key, b'{"probe":4}', first.etag)
            if stale.status is WriteStatus.WRITTEN:
                raise EndpointUnsafe(
                    f"{self.config.endpoint_url} ignores If-Match (a stale etag overwrote {key})"
                )
            if stale.status is WriteStatus.UNKNOWN:
                raise StorageUnavailable(f"probe: If-Match outcome unknown: {stale.detail}")
            body, _ = self.get_bytes(key, max_bytes=1024)
            if body != b'{"probe":3}':
                raise EndpointUnsafe(
                    f"{self.config.endpoint_url} lost a conditional write: read back {body!r}"
                )
        finally:
            with contextlib.suppress(StorageUnavailable):
                self.delete(key)

