"""Streaming reads from the object store (DESIGN §7): every byte hashed in the same pass as it
is written, memory flat with the object's size, the stream stopped as soon as an object is
longer than declared, and a body cut mid-transfer resumed with a Range GET pinned to the same
version (If-Match). Large objects come as parallel ranges, hashed in order. Every transfer has
an overall `Deadline` from its size and a minimum throughput: a socket timeout restarts with
every byte, so a trickling server would otherwise hold a channel for as long as it likes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.exceptions
import urllib3.exceptions

from kristal.errors import (
    FileHashMismatch,
    ManifestSchemaInvalid,
    ObjectNotFound,
    StorageUnavailable,
)
from kristal.progress import meter

if TYPE_CHECKING:  # the store calls in here; this module never builds one
    from kristal.store.s3 import ObjectInfo, ObjectStore

T = TypeVar("T")

CHUNK = 1024 * 1024  # read/hash buffer: the only per-stream memory a download holds
# A range hashed from memory (`verify_in_flight`): store.workers of them per object at most.
IN_FLIGHT_PART = 2 * 1024 * 1024
STREAM_RESUMES = 3  # a body cut mid-transfer is resumed with a Range GET this many times
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# What a body read raises when the connection dies mid-transfer (botocore wraps most of them).
_BODY_ERRORS = (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError, OSError)


class _TooLong(Exception):
    """Internal: the stream delivered more bytes than allowed."""


class Deadline:
    """The overall time limit of one object's transfer: `deadline_base_s` plus its size at
    `min_bytes_per_s` (the store's configuration); past it, `storage_unavailable`."""

    def __init__(self, store: ObjectStore, key: str, size: int) -> None:
        config = store.config
        self.store, self.key, self.size = store, key, size
        self.seconds = config.deadline_base_s + max(0, size) / config.min_bytes_per_s
        self._at = time.monotonic() + self.seconds
        self._read_timeout = config.read_timeout

    def remaining(self) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            raise StorageUnavailable(
                f"{self.store.full_key(self.key)}: {self.size} bytes did not arrive within "
                f"{self.seconds:.1f} s (KRISTAL_DOWNLOAD_DEADLINE_BASE_S plus the size at "
                f"KRISTAL_DOWNLOAD_MIN_BYTES_PER_S={self.store.config.min_bytes_per_s:g}); "
                "the transfer was abandoned")
        return left

    def read(self, body: Any, amount: int) -> bytes:
        """Up to `amount` bytes as soon as any arrive, waiting no later than the deadline
        (`read1`: a plain `read` would wait for all `amount` bytes of a trickle)."""
        left = self.remaining()
        raw = getattr(body, "_raw_stream", None)
        if left < self._read_timeout:
            # The socket botocore's `set_socket_timeout` reaches (it logs an error when the
            # response is already drained); the deadline, not the read timeout, comes first.
            fp = getattr(getattr(raw, "_fp", None), "fp", None)
            sock = getattr(getattr(fp, "raw", None), "_sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(left)
        read1 = getattr(raw, "read1", None)
        chunk: bytes = read1(amount) if callable(read1) else body.read(amount)
        return chunk


def _fd_name(fd: int) -> str:
    """A readable name for an open file descriptor in error messages."""
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/self/fd/{fd}")
    return f"fd {fd}"


def stream(
    store: ObjectStore,
    key: str,
    sink: Callable[[bytes], None],
    *,
    limit: int | None,
    deadline: Deadline,
    start: int = 0,
    end: int | None = None,
    etag: str | None = None,
) -> tuple[int, str]:
    """Feed bytes [start, end) (or to EOF) to `sink` in order; returns (count, etag).

    A connection cut mid-body is resumed from the last byte received with a Range GET
    pinned by If-Match, so the bytes still come from one version of the object.
    `limit`: raise _TooLong as soon as more than `limit` bytes arrived. Nothing goes on past
    `deadline`.
    """
    count = 0
    resumes = 0
    while True:
        deadline.remaining()
        offset = start + count
        extra: dict[str, Any] = {}
        if offset > 0 or end is not None:
            extra["Range"] = f"bytes={offset}-{'' if end is None else end - 1}"
        if etag is not None:
            extra["IfMatch"] = etag
        # A failing GET itself was already retried by botocore: it raises from here.
        resp = store.get_object(key, **extra)
        if etag is None:
            etag = str(resp["ETag"])
        body = resp["Body"]
        try:
            while True:
                try:
                    chunk = deadline.read(body, CHUNK)
                except _BODY_ERRORS as exc:
                    resumes += 1
                    if resumes > STREAM_RESUMES:
                        raise store.unavailable("GET (body)", key, exc) from None
                    break  # resume from start + count
                if not chunk:
                    return count, etag
                count += len(chunk)
                if limit is not None and count > limit:
                    raise _TooLong
                sink(chunk)
        finally:
            body.close()
        time.sleep(0.1 * resumes)

def stream_sha256(store: ObjectStore, key: str, *,
                  expected_size: int | None = None) -> tuple[str, int]:
    """Re-hash an object in the bucket without storing it: (hex sha256, size)."""
    hasher = hashlib.sha256()
    if expected_size is None:
        info = store.head(key)
        known = info.size if info is not None else 0
    else:
        known = expected_size
    try:
        size, _ = stream(store, key, hasher.update, limit=expected_size,
                         deadline=Deadline(store, key, known))
    except _TooLong:
        raise FileHashMismatch(
            f"{store.full_key(key)} is longer than the declared {expected_size} bytes"
        ) from None
    if expected_size is not None and size != expected_size:
        raise FileHashMismatch(
            f"{store.full_key(key)} is {size} bytes, declared {expected_size}"
        )
    return hasher.hexdigest(), size

def _expectation(expected_sha256: str, expected_size: int) -> str:
    """The declared digest (lowercase hex), refusing a malformed declaration up front."""
    expected = expected_sha256.lower()
    if not _HEX64.match(expected):
        raise ManifestSchemaInvalid(
            f"expected sha256 is not 64 hex digits: {expected_sha256!r}"
        )
    if expected_size < 0:
        raise ManifestSchemaInvalid(f"expected size is negative: {expected_size}")
    return expected


def _stream_whole(store: ObjectStore, key: str, sink: Callable[[bytes], None], *,
                  expected_size: int, deadline: Deadline) -> int:
    try:
        size, _ = stream(store, key, sink, limit=expected_size, deadline=deadline)
    except _TooLong:
        raise FileHashMismatch(
            f"{store.full_key(key)} is longer than the declared {expected_size} bytes"
        ) from None
    return size


def _compare(store: ObjectStore, key: str, size: int, digest: str, *, expected: str,
             expected_size: int) -> None:
    if size != expected_size:
        raise FileHashMismatch(
            f"{store.full_key(key)} is {size} bytes, declared {expected_size}"
        )
    if digest != expected:
        raise FileHashMismatch(
            f"{store.full_key(key)} has sha256 {digest}, declared {expected}"
        )


def download_to(
    store: ObjectStore, key: str, dest: Path, *, expected_sha256: str, expected_size: int
) -> None:
    """Stream `key` into `dest`, hashing in the same pass; any mismatch -> FileHashMismatch.

    `dest` is created or truncated; on any failure it is removed, so a caller renaming it
    into a content-addressed cache never sees a partial or wrong file.
    """
    expected = _expectation(expected_sha256, expected_size)
    hasher = hashlib.sha256()
    deadline = Deadline(store, key, expected_size)
    shown = meter(f"download {key.rsplit('/', 1)[-1]}", expected_size, "bytes")
    # O_RDWR: the parallel path reads finished parts back to hash them in order.
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    ok = False
    try:
        if expected_size >= store.parallel_threshold:
            size = _download_parallel(store, key, fd, hasher, expected_size, deadline,
                                      shown.advance)
        else:
            def sink(chunk: bytes) -> None:
                hasher.update(chunk)
                os.write(fd, chunk)
                shown.advance(len(chunk))

            size = _stream_whole(store, key, sink, expected_size=expected_size,
                                 deadline=deadline)
        _compare(store, key, size, hasher.hexdigest(), expected=expected,
                 expected_size=expected_size)
        # No fsync here: durability is the stager's call (runtime.staging flushes what it
        # staged before anything can switch to it), so this is download + verify only.
        ok = True
    finally:
        shown.close()
        os.close(fd)
        if not ok:
            with contextlib.suppress(OSError):
                os.unlink(dest)


def verify_in_flight(
    store: ObjectStore, key: str, *, expected_sha256: str, expected_size: int
) -> None:
    """Hash `key` as it arrives and keep nothing (an object the query layer never reads);
    any mismatch -> FileHashMismatch, exactly as `download_to`.

    Large objects come as parallel ranges of IN_FLIGHT_PART bytes held in memory and hashed in
    order: at most `store.workers` parts are held at once (8 MiB with the defaults).
    """
    expected = _expectation(expected_sha256, expected_size)
    hasher = hashlib.sha256()
    deadline = Deadline(store, key, expected_size)
    if expected_size >= store.parallel_threshold:
        info = _head_with_size(store, key, expected_size)

        def fetch(start: int, end: int, cancel: threading.Event) -> memoryview:
            # Allocated once at its final size: no growth, no copies, memory returned whole.
            buffer = memoryview(bytearray(end - start))
            pos = 0

            def sink(chunk: bytes) -> None:
                nonlocal pos
                if cancel.is_set():
                    raise StorageUnavailable("download cancelled")
                buffer[pos:pos + len(chunk)] = chunk
                pos += len(chunk)

            _range(store, key, sink, start, end, info.etag, deadline)  # never past `end`
            return buffer[:pos]

        def consume(start: int, end: int, part: memoryview) -> int:
            hasher.update(part)
            return len(part)

        size = _in_order(store, key, expected_size, IN_FLIGHT_PART, fetch, consume)
    else:
        size = _stream_whole(store, key, hasher.update, expected_size=expected_size,
                             deadline=deadline)
    _compare(store, key, size, hasher.hexdigest(), expected=expected,
             expected_size=expected_size)


def _head_with_size(store: ObjectStore, key: str, expected_size: int) -> ObjectInfo:
    """The object's HEAD, refusing a size other than declared before any byte moves."""
    info = store.head(key)
    if info is None:
        raise ObjectNotFound(f"s3://{store.config.bucket}/{store.full_key(key)} does not exist")
    if info.size != expected_size:
        raise FileHashMismatch(
            f"{store.full_key(key)} is {info.size} bytes, declared {expected_size}"
        )
    return info


def _range(store: ObjectStore, key: str, sink: Callable[[bytes], None], start: int, end: int,
           etag: str, deadline: Deadline) -> int:
    """Bytes [start, end) of the version `etag` into `sink`; returns how many came."""
    try:
        count, _ = stream(store, key, sink, limit=end - start, deadline=deadline,
                          start=start, end=end, etag=etag)
    except _TooLong:
        raise FileHashMismatch(
            f"{store.full_key(key)}: range {start}-{end} returned too many bytes"
        ) from None
    return count


def _in_order(
    store: ObjectStore, key: str, size: int, part_size: int,
    fetch: Callable[[int, int, threading.Event], T],
    consume: Callable[[int, int, T], int],
) -> int:
    """Fetch the parts of [0, size) on `store.workers` threads, at most that many ahead of the
    consumer, and `consume` them in order (each must account for exactly its range)."""
    ranges = [(start, min(start + part_size, size)) for start in range(0, size, part_size)]
    cancel = threading.Event()
    total = 0
    pending: deque[tuple[int, int, Future[T]]] = deque()
    with ThreadPoolExecutor(max_workers=store.workers, thread_name_prefix="s3get") as pool:
        try:
            next_part = 0
            while pending or next_part < len(ranges):
                while next_part < len(ranges) and len(pending) < store.workers:
                    start, end = ranges[next_part]
                    pending.append((start, end, pool.submit(fetch, start, end, cancel)))
                    next_part += 1
                start, end, future = pending.popleft()
                got = consume(start, end, future.result())
                if got != end - start:
                    raise FileHashMismatch(
                        f"{store.full_key(key)}: range {start}-{end} returned {got} bytes"
                    )
                total += got
        except BaseException:
            cancel.set()
            for _, _, future in pending:
                future.cancel()
            raise
    return total


def _download_parallel(
    store: ObjectStore, key: str, fd: int, hasher: Any, expected_size: int, deadline: Deadline,
    advance: Callable[[int], None] = lambda n: None,
) -> int:
    """Ranged GETs in parallel, written with pwrite; hashed in order by reading them back.

    Memory stays flat: each worker holds one CHUNK at a time and the hasher re-reads each
    finished part from the (page-cached) file. Workers run at most `workers` parts ahead of
    the hasher, so disk use beyond the hashed prefix is bounded too.
    """
    info = _head_with_size(store, key, expected_size)
    os.ftruncate(fd, expected_size)

    def fetch(start: int, end: int, cancel: threading.Event) -> int:
        pos = start

        def sink(chunk: bytes) -> None:
            nonlocal pos
            if cancel.is_set():
                raise StorageUnavailable("download cancelled")
            os.pwrite(fd, chunk, pos)
            pos += len(chunk)
            advance(len(chunk))

        return _range(store, key, sink, start, end, info.etag, deadline)

    def consume(start: int, end: int, got: int) -> int:
        if got != end - start:
            return got
        pos = start
        while pos < end:
            chunk = os.pread(fd, min(CHUNK, end - pos), pos)
            if not chunk:
                raise StorageUnavailable(f"short read back of {_fd_name(fd)}")
            hasher.update(chunk)
            pos += len(chunk)
        return got

    return _in_order(store, key, expected_size, store.part_size, fetch, consume)
