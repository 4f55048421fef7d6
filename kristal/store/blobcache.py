"""Content-addressed local blob cache: `<root>/blobs/sha256/<hex>`.

Rules: a blob is only ever placed by an atomic rename of a fully written temp file (flushed to
disk by `flush` before a release that uses it goes live);
nothing under the cache is read through a symlink (a planted one is removed); an entry is
trusted only after its size and sha256 are re-checked, and a corrupt entry is deleted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kristal.errors import FileHashMismatch, PathInvalid

CHUNK_SIZE = 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _hash_fd(fd: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    size = 0
    while True:
        n = os.readv(fd, [buffer])
        if not n:
            break
        # hashlib releases the GIL on buffers this large, so threads hash in parallel.
        digest.update(view[:n])
        size += n
    return digest.hexdigest(), size


def hash_file(path: Path) -> tuple[str, int]:
    """Streaming sha256 hex and size of a regular file; a symlink is refused, not followed."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathInvalid(f"{path} is a symlink; symlinks are never followed") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathInvalid(f"{path} is not a regular file")
        return _hash_fd(fd)
    finally:
        os.close(fd)


def hash_files_parallel(paths: list[Path], workers: int = 2) -> list[tuple[str, int]]:
    """`hash_file` over many files, results in input order, `workers` files at a time."""
    if workers <= 1 or len(paths) <= 1:
        return [hash_file(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        return list(pool.map(hash_file, paths))


def real_dir(path: Path) -> None:
    """Create `path` (mode 0700) and insist it is a directory, not a symlink to one."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        raise PathInvalid(f"cache directory {path} is a symlink or not a directory")


def _remove_entry(path: Path, st: os.stat_result) -> None:
    """Remove whatever sits at `path`, without following it, if it is still the same inode."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        return  # replaced meanwhile (by a concurrent fetch): not ours to delete
    if stat.S_ISDIR(now.st_mode):
        shutil.rmtree(path, ignore_errors=True)  # rmtree never follows symlinks inside
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class BlobCache:
    """The content-addressed cache under `root`; safe for concurrent threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"
        for directory in (self.root, self.root / "blobs", self._blobs, self._tmp, self._locks):
            real_dir(directory)

    def path_for(self, sha256_hex: str) -> Path:
        if not isinstance(sha256_hex, str) or not _HEX64.fullmatch(sha256_hex):
            raise PathInvalid(
                f"blob digest {str(sha256_hex)[:80]!r} is not 64 lowercase hex digits"
            )
        return self._blobs / sha256_hex

    def verified_path(self, sha256_hex: str, size: int) -> Path | None:
        """The blob's path if a regular file of that size and digest is cached, else None.

        Anything else found there (symlink, directory, wrong size, wrong bytes) is removed.
        """
        path = self.path_for(sha256_hex)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            _remove_entry(path, st)
            return None
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            # Swapped for a symlink between lstat and open: remove it, as above.
            with contextlib.suppress(FileNotFoundError):
                _remove_entry(path, os.lstat(path))
            return None
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                return None  # replaced meanwhile; the caller may simply ask again
            digest, read = _hash_fd(fd)
        finally:
            os.close(fd)
        if digest != sha256_hex or read != size:
            _remove_entry(path, st)
            return None
        return path

    def fetch(self, sha256_hex: str, size: int, download: Callable[[Path], None]) -> Path:
        """Return a verified cached path, downloading it first if needed.

        `download(tmp)` writes the bytes into `tmp` and itself checks size and digest as it
        streams (raising `FileHashMismatch`). A per-blob lock makes concurrent fetchers wait for
        one download instead of repeating it; unique temp names and the atomic rename keep the
        result correct even where the advisory lock is not honoured.
        """
        final = self.path_for(sha256_hex)
        found = self.verified_path(sha256_hex, size)
        if found is not None:
            return found
        with self._blob_lock(sha256_hex):
            found = self.verified_path(sha256_hex, size)
            if found is not None:
                return found
            fd, name = tempfile.mkstemp(prefix=f"{sha256_hex[:16]}.", suffix=".part", dir=self._tmp)
            os.close(fd)
            tmp = Path(name)
            try:
                download(tmp)
                self._seal(tmp, size, sha256_hex)
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        return final

    @staticmethod
    def _seal(tmp: Path, size: int, sha256_hex: str) -> None:
        """Re-check what is cheap to re-check (size, regular file) before the rename."""
        fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                raise FileHashMismatch(
                    f"blob {sha256_hex}: downloaded {st.st_size} bytes, expected {size}"
                )
        finally:
            os.close(fd)

    def flush(self, paths: list[Path]) -> None:
        """Make blobs durable (fsync each, then the directory): before a switch relies on them."""
        for path in paths:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if paths:
            self._fsync_dir(self._blobs)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _blob_lock(self, sha256_hex: str) -> Iterator[None]:
        # Lock files are left in place: unlinking one races with a waiter holding it open.
        fd = os.open(
            self._locks / f"{sha256_hex}.lock",
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
