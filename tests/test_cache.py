"""BlobCache: content addressing, symlink refusal, corruption recovery, concurrent fetches."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kristal.errors import FileHashMismatch, PathInvalid
from kristal.store.blobcache import BlobCache, hash_file, hash_files_parallel

PAYLOAD = b"kristal payload\n" * 1000
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def writer(data: bytes, calls: list[int] | None = None, delay: float = 0.0):
    def download(tmp: Path) -> None:
        if calls is not None:
            calls.append(1)
        with open(tmp, "wb") as out:
            out.write(data[: len(data) // 2])
            time.sleep(delay)
            out.write(data[len(data) // 2 :])
        if hashlib.sha256(data).hexdigest() != DIGEST:
            raise FileHashMismatch("digest differs")

    return download


def test_fetch_downloads_once_then_serves_verified_copy(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    calls: list[int] = []
    path = cache.fetch(DIGEST, len(PAYLOAD), writer(PAYLOAD, calls))
    assert path == tmp_path / "cache" / "blobs" / "sha256" / DIGEST
    assert path.read_bytes() == PAYLOAD
    assert cache.fetch(DIGEST, len(PAYLOAD), writer(PAYLOAD, calls)) == path
    assert len(calls) == 1
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "bad", ["", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "../" + "a" * 61, "sha256:" + "a" * 64]
)
def test_path_for_refuses_anything_but_64_lowercase_hex(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PathInvalid):
        BlobCache(tmp_path).path_for(bad)


def test_symlink_planted_at_blob_path_is_not_followed_and_is_replaced(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    # The symlink points at a file holding exactly the right bytes: still never trusted.
    outside = tmp_path / "outside"
    outside.write_bytes(PAYLOAD)
    blob = cache.path_for(DIGEST)
    os.symlink(outside, blob)
    assert cache.verified_path(DIGEST, len(PAYLOAD)) is None
    assert not os.path.lexists(blob)
    os.symlink(outside, blob)
    calls: list[int] = []
    path = cache.fetch(DIGEST, len(PAYLOAD), writer(PAYLOAD, calls))
    assert calls == [1]
    assert not path.is_symlink() and path.read_bytes() == PAYLOAD
    assert outside.read_bytes() == PAYLOAD  # the target was never touched


def test_directory_planted_at_blob_path_is_removed(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    (cache.path_for(DIGEST) / "x").mkdir(parents=True)
    path = cache.fetch(DIGEST, len(PAYLOAD), writer(PAYLOAD))
    assert path.is_file() and path.read_bytes() == PAYLOAD


def test_symlinked_cache_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "cache").mkdir()
    os.symlink(real, tmp_path / "cache" / "blobs")
    with pytest.raises(PathInvalid):
        BlobCache(tmp_path / "cache")


@pytest.mark.parametrize("corruption", ["flip", "truncate", "extend"])
def test_corrupt_cached_blob_is_detected_deleted_and_refetched(
    tmp_path: Path, corruption: str
) -> None:
    cache = BlobCache(tmp_path / "cache")
    path = cache.fetch(DIGEST, len(PAYLOAD), writer(PAYLOAD))
    data = bytearray(PAYLOAD)
    if corruption == "flip":
        data[100] ^= 1
    elif corruption == "truncate":
        data = data[:-1]
    else:
        data += b"x"
    path.write_bytes(bytes(data))
    assert cache.verified_path(DIGEST, len(PAYLOAD)) is None
    assert not path.exists()
    calls: list[int] = []
    assert cache.fetch(DIGEST, len(PAYLOAD), writer(PAYLOAD, calls)).read_bytes() == PAYLOAD
    assert calls == [1]


def test_failed_download_leaves_no_blob_and_no_temp(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")

    def bad(tmp: Path) -> None:
        tmp.write_bytes(b"wrong")
        raise FileHashMismatch("sha256 differs")

    with pytest.raises(FileHashMismatch):
        cache.fetch(DIGEST, len(PAYLOAD), bad)
    assert not os.path.lexists(cache.path_for(DIGEST))
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_download_of_wrong_size_is_refused_even_if_callable_does_not_check(
    tmp_path: Path,
) -> None:
    cache = BlobCache(tmp_path / "cache")
    with pytest.raises(FileHashMismatch):
        cache.fetch(DIGEST, len(PAYLOAD), lambda tmp: tmp.write_bytes(PAYLOAD + b"!"))
    assert not os.path.lexists(cache.path_for(DIGEST))


def test_concurrent_fetch_of_one_blob_from_four_threads_ends_with_one_good_file(
    tmp_path: Path,
) -> None:
    cache = BlobCache(tmp_path / "cache")
    calls: list[int] = []
    results: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait()
            # Each thread its own BlobCache, as separate processes would have.
            own = BlobCache(tmp_path / "cache")
            results.append(own.fetch(DIGEST, len(PAYLOAD), writer(PAYLOAD, calls, delay=0.05)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(results)) == 1
    assert results[0].read_bytes() == PAYLOAD
    assert len(calls) == 1  # the per-blob lock made the others wait, not re-download
    assert os.listdir(tmp_path / "cache" / "blobs" / "sha256") == [DIGEST]
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    assert cache.verified_path(DIGEST, len(PAYLOAD)) == results[0]


def test_hash_file_streams_and_refuses_symlinks(tmp_path: Path) -> None:
    big = tmp_path / "big"
    data = os.urandom(3 * 1024 * 1024 + 17)
    big.write_bytes(data)
    assert hash_file(big) == (hashlib.sha256(data).hexdigest(), len(data))
    link = tmp_path / "link"
    os.symlink(big, link)
    with pytest.raises(PathInvalid):
        hash_file(link)


def test_hash_files_parallel_matches_serial_in_input_order(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(100_000 * (i + 1)))
        paths.append(p)
    assert hash_files_parallel(paths, workers=2) == [hash_file(p) for p in paths]
    assert hash_files_parallel([]) == []


def _fetch_in_process(root: str, marks: str) -> str:
    def download(tmp: Path) -> None:
        Path(marks, str(os.getpid())).touch()
        writer(PAYLOAD, delay=0.05)(tmp)

    return str(BlobCache(Path(root)).fetch(DIGEST, len(PAYLOAD), download))


def test_concurrent_fetch_from_four_processes_downloads_once(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        paths = pool.starmap(_fetch_in_process, [(str(tmp_path / "cache"), str(marks))] * 4)
    assert len(set(paths)) == 1
    assert Path(paths[0]).read_bytes() == PAYLOAD
    assert len(list(marks.iterdir())) == 1
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


# --- objects the query layer never reads: hashed as they stream, not kept ----------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("path", ["single stream", "parallel ranges"])
def test_verify_in_flight_checks_digest_and_size_and_writes_nothing(
        store_config: Any, tmp_path: Path, path: str) -> None:
    from kristal.errors import ObjectNotFound
    from kristal.store import download
    from kristal.store.s3 import ObjectStore

    store = ObjectStore(store_config, parallel_threshold=1 << 20 if path == "parallel ranges"
                        else 1 << 30)
    data = os.urandom(3 * download.IN_FLIGHT_PART + 12345)
    store.put_bytes("blobs/in-flight", data, "application/octet-stream")
    before = set(tmp_path.rglob("*"))
    download.verify_in_flight(store, "blobs/in-flight", expected_sha256=_sha(data),
                              expected_size=len(data))
    assert set(tmp_path.rglob("*")) == before
    bad_digest = _sha(data[:-1] + bytes([data[-1] ^ 1]))
    for sha, size in ((bad_digest, len(data)), (_sha(data), len(data) - 1),
                      (_sha(data), len(data) + 1)):
        with pytest.raises(FileHashMismatch):
            download.verify_in_flight(store, "blobs/in-flight", expected_sha256=sha,
                                      expected_size=size)
    with pytest.raises(ObjectNotFound):
        download.verify_in_flight(store, "blobs/none", expected_sha256=_sha(b""),
                                  expected_size=len(data))


def test_staging_keeps_the_pack_and_only_hashes_the_exchange_blob(
        store_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from world import make_world

    from kristal.formats import layout
    from kristal.runtime.staging import stage_release
    from kristal.verify.fetch import verify_release

    world = make_world(tmp_path, store_config, monkeypatch)
    world.publish(1)
    release = verify_release(world.ctx, world.channel, release_id=1)
    (blob,) = release.exchange.blobs()
    blob_key = layout.exchange_blob(release.entry.exchange_id, blob.path)
    world.patch.setenv("KRISTAL_CACHE_EXCHANGE_BLOBS", "0")
    staged = stage_release(world.ctx, release)
    assert staged.hashed_in_flight == [blob_key] and blob_key not in staged.files
    assert staged.downloaded == 2 and len(staged.files) == 1
    assert world.ctx.cache.verified_path(blob.sha256, blob.size_bytes) is None
    # Staged again: the kept pack file is re-hashed from the cache, the blob streamed again.
    assert stage_release(world.ctx, release).downloaded == 1
    # Still verified: a tampered Exchange blob fails staging though nothing keeps it.
    original, _ = world.store.get_bytes(blob_key, max_bytes=blob.size_bytes)
    world.store.put_bytes(blob_key, b"x" * blob.size_bytes, "application/x-ndjson")
    with pytest.raises(FileHashMismatch):
        stage_release(world.ctx, release)
    # Kept by default: the cache then serves it (re-hashed) like any blob.
    world.store.put_bytes(blob_key, original, "application/x-ndjson")
    world.patch.delenv("KRISTAL_CACHE_EXCHANGE_BLOBS")
    staged = stage_release(world.ctx, release)
    assert staged.hashed_in_flight == [] and blob_key in staged.files
    assert world.ctx.cache.verified_path(blob.sha256, blob.size_bytes) is not None
    assert stage_release(world.ctx, release).downloaded == 0
