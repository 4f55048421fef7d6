"""The S3 adapter against a real SeaweedFS: streaming integrity, conditional writes, faults."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from faultproxy import Action, FaultProxy

from kristal.errors import (
    EndpointUnsafe,
    FileHashMismatch,
    ManifestSchemaInvalid,
    ObjectNotFound,
    StorageUnavailable,
)
from kristal.store.s3 import MiB, ObjectStore, StoreConfig, WriteStatus

REPO_ROOT = Path(__file__).resolve().parent.parent


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_pattern(path: Path, size: int) -> str:
    """A non-repeating, cheap-to-make file of `size` bytes; returns its sha256 hex."""
    hasher = hashlib.sha256()
    block = os.urandom(MiB)
    with path.open("wb") as out:
        written = 0
        counter = 0
        while written < size:
            # Vary every MiB so a misplaced range cannot hash the same.
            chunk = (counter.to_bytes(8, "big") + block[8:])[: size - written]
            out.write(chunk)
            hasher.update(chunk)
            written += len(chunk)
            counter += 1
    return hasher.hexdigest()


# --- reads --------------------------------------------------------------------------------------
def test_streaming_download_hashes_and_writes_the_object(store: ObjectStore, tmp_path: Path):
    data = os.urandom(3 * MiB + 17)
    store.put_bytes("blobs/a", data, content_type="application/octet-stream")
    dest = tmp_path / "a"
    store.download_to("blobs/a", dest, expected_sha256=_sha(data), expected_size=len(data))
    assert dest.read_bytes() == data
    assert store.stream_sha256("blobs/a", expected_size=len(data)) == (_sha(data), len(data))


def test_object_longer_than_declared_stops_early_with_file_hash_mismatch(
    store: ObjectStore, fault_proxy: FaultProxy, store_config: StoreConfig, tmp_path: Path
):
    data = os.urandom(4 * MiB)
    store.put_bytes("blobs/long", data)
    proxied = ObjectStore(fault_proxy.config_for(store_config))
    dest = tmp_path / "long"
    declared = 1000  # like RP-006: the object is longer than size_bytes
    with pytest.raises(FileHashMismatch, match="longer than the declared"):
        proxied.download_to("blobs/long", dest, expected_sha256=_sha(data[:declared]),
                            expected_size=declared)
    assert not dest.exists(), "a refused download leaves no file behind"
    with pytest.raises(FileHashMismatch):
        store.stream_sha256("blobs/long", expected_size=declared)


def test_corrupted_or_short_object_is_file_hash_mismatch(store: ObjectStore, tmp_path: Path):
    good = b'{"row": 1}\n' * 1000
    bad = bytearray(good)
    bad[500] ^= 0x01
    store.put_bytes("blobs/bad", bytes(bad))
    with pytest.raises(FileHashMismatch, match="sha256"):
        store.download_to("blobs/bad", tmp_path / "x", expected_sha256=_sha(good),
                          expected_size=len(good))
    store.put_bytes("blobs/short", good[:-1])
    with pytest.raises(FileHashMismatch, match="declared"):
        store.download_to("blobs/short", tmp_path / "y", expected_sha256=_sha(good),
                          expected_size=len(good))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_missing_key_is_object_not_found(store: ObjectStore, tmp_path: Path):
    with pytest.raises(ObjectNotFound) as info:
        store.get_bytes("nope.json", max_bytes=100)
    assert info.value.code == "file_inventory_missing"
    with pytest.raises(ObjectNotFound):
        store.download_to("nope", tmp_path / "n", expected_sha256="0" * 64, expected_size=1)
    with pytest.raises(ObjectNotFound):
        store.download_to("nope", tmp_path / "n", expected_sha256="0" * 64,
                          expected_size=store.parallel_threshold)
    assert store.head("nope") is None


def test_get_bytes_over_max_bytes_is_manifest_schema_invalid(store: ObjectStore):
    store.put_bytes("m.json", b"x" * 5000)
    assert store.get_bytes("m.json", max_bytes=5000)[0] == b"x" * 5000
    with pytest.raises(ManifestSchemaInvalid):
        store.get_bytes("m.json", max_bytes=4999)


def test_truncated_body_is_resumed_and_still_verifies(
    store: ObjectStore, fault_proxy: FaultProxy, store_config: StoreConfig, tmp_path: Path
):
    data = os.urandom(2 * MiB)
    store.put_bytes("blobs/t", data)
    fault_proxy.add_rule(Action.TRUNCATE, method="GET", key_contains="blobs/t",
                         truncate_to=300_000, times=1)
    proxied = ObjectStore(fault_proxy.config_for(store_config, read_timeout=5))
    proxied.download_to("blobs/t", tmp_path / "t", expected_sha256=_sha(data),
                        expected_size=len(data))
    gets = fault_proxy.requests("GET", "blobs/t")
    assert len(gets) == 2 and "range" in gets[1].headers and "if-match" in gets[1].headers


def test_read_5xx_that_persists_is_storage_unavailable(
    store: ObjectStore, fault_proxy: FaultProxy, store_config: StoreConfig
):
    store.put_bytes("x.json", b"{}")
    fault_proxy.add_rule(Action.STATUS, method="GET", key_contains="x.json", status=503, times=10)
    proxied = ObjectStore(fault_proxy.config_for(store_config))
    with pytest.raises(StorageUnavailable, match="503"):
        proxied.get_bytes("x.json", max_bytes=100)
    assert len(fault_proxy.requests("GET", "x.json")) == 3  # botocore's standard retries


def test_list_keys_is_relative_to_the_prefix(store_config: StoreConfig):
    prefixed = ObjectStore(StoreConfig(**{**store_config.__dict__, "prefix": "tenant-a/"}))
    plain = ObjectStore(store_config)
    prefixed.put_bytes("channels/x/a.json", b"1")
    prefixed.put_bytes("channels/x/b.json", b"2")
    plain.put_bytes("channels/x/c.json", b"3")
    assert list(prefixed.list_keys("channels/x/")) == ["channels/x/a.json", "channels/x/b.json"]
    assert prefixed.get_bytes("channels/x/a.json", max_bytes=10)[0] == b"1"
    assert plain.head("tenant-a/channels/x/b.json") is not None


# --- large objects ------------------------------------------------------------------------------
def test_multipart_upload_file_round_trips(store: ObjectStore, tmp_path: Path):
    src = tmp_path / "src.bin"
    digest = _write_pattern(src, 20 * MiB + 123)
    etag = store.upload_file("big/src.bin", src)
    assert etag.strip('"').endswith("-3")  # 8 MiB parts: a real multipart upload
    info = store.head("big/src.bin")
    assert info is not None and info.size == 20 * MiB + 123
    assert store.stream_sha256("big/src.bin") == (digest, 20 * MiB + 123)


_RSS_PROBE = """
import json, resource, sys, time
from pathlib import Path
from kristal.store.s3 import ObjectStore, StoreConfig

def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines()
                if l.startswith(field + ":"))
    return int(line.split()[1])

cfg = StoreConfig(**json.loads(sys.argv[1]))
store = ObjectStore(cfg)
store.head(sys.argv[2])  # warm up imports, client and connection pool before measuring
# ru_maxrss is a lifetime peak, already set by loading botocore's S3 model (measured ~125 MB,
# varying run to run): reset the kernel's peak (VmHWM) and compare it with the RSS right now.
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
t0 = time.monotonic()
store.download_to(sys.argv[2], Path(sys.argv[3]), expected_sha256=sys.argv[4],
                  expected_size=int(sys.argv[5]))
elapsed = time.monotonic() - t0
after = status("VmHWM")
print(json.dumps({"before_kb": before, "after_kb": after, "seconds": elapsed,
                  "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def test_100_mib_parallel_download_round_trips_with_flat_memory(
    store: ObjectStore, store_config: StoreConfig, tmp_path: Path
):
    size = 100 * MiB
    src = tmp_path / "src.bin"
    digest = _write_pattern(src, size)
    store.upload_file("big/100m.bin", src)
    src.unlink()  # keep disk use down: the download is checked by its digest
    dest = tmp_path / "dest.bin"
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, json.dumps(store_config.__dict__), "big/100m.bin",
         str(dest), digest, str(size)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    growth_mb = (figures["after_kb"] - figures["before_kb"]) / 1024
    print(f"100 MiB parallel download: {figures['seconds']:.2f}s, RSS "
          f"{figures['before_kb'] / 1024:.0f} MB before, peak {figures['after_kb'] / 1024:.0f} MB")
    assert growth_mb < 64
    assert dest.stat().st_size == size


def test_parallel_path_refuses_a_longer_object_before_downloading(
    store_config: StoreConfig, tmp_path: Path
):
    small_parts = ObjectStore(store_config, parallel_threshold=1 * MiB, part_size=256 * 1024)
    data = os.urandom(2 * MiB + 5)
    small_parts.put_bytes("p/a", data)
    small_parts.download_to("p/a", tmp_path / "ok", expected_sha256=_sha(data),
                            expected_size=len(data))
    assert (tmp_path / "ok").read_bytes() == data
    with pytest.raises(FileHashMismatch):
        small_parts.download_to("p/a", tmp_path / "long", expected_sha256=_sha(data[:-5]),
                                expected_size=len(data) - 5)
    wrong = _sha(data[::-1])
    with pytest.raises(FileHashMismatch, match="sha256"):
        small_parts.download_to("p/a", tmp_path / "bad", expected_sha256=wrong,
                                expected_size=len(data))
    assert not (tmp_path / "long").exists() and not (tmp_path / "bad").exists()


# --- conditional writes -------------------------------------------------------------------------
def test_put_if_absent_twice_second_is_precondition_failed(store: ObjectStore):
    first = store.put_if_absent("channels/a/active.json", b'{"n":1}')
    assert first.status is WriteStatus.WRITTEN and first.etag
    second = store.put_if_absent("channels/a/active.json", b'{"n":2}')
    assert second.status is WriteStatus.PRECONDITION_FAILED
    assert store.get_bytes("channels/a/active.json", max_bytes=100) == (b'{"n":1}', first.etag)


def test_put_if_match_stale_or_missing_is_precondition_failed(store: ObjectStore):
    first = store.put_if_absent("p.json", b"1")
    assert first.etag is not None
    moved = store.put_if_match("p.json", b"2", first.etag)
    assert moved.status is WriteStatus.WRITTEN
    stale = store.put_if_match("p.json", b"3", first.etag)
    assert stale.status is WriteStatus.PRECONDITION_FAILED
    missing = store.put_if_match("absent.json", b"1", first.etag)
    assert missing.status is WriteStatus.PRECONDITION_FAILED
    assert store.get_bytes("p.json", max_bytes=10)[0] == b"2"
    assert store.head("absent.json") is None


def test_eight_racing_put_if_match_from_one_etag_exactly_one_wins(store_config: StoreConfig):
    # SeaweedFS queues simultaneous conditional writers in 1 s steps: allow for it.
    racer = ObjectStore(StoreConfig(**{**store_config.__dict__, "read_timeout": 60}))
    base = racer.put_if_absent("race/active.json", b"base")
    assert base.etag is not None
    barrier = threading.Barrier(8)
    outcomes: list[WriteStatus] = []
    lock = threading.Lock()

    def write(i: int) -> None:
        barrier.wait()
        outcome = racer.put_if_match("race/active.json", f"writer-{i}".encode(), base.etag or "")
        with lock:
            outcomes.append(outcome.status)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(WriteStatus.WRITTEN) == 1, outcomes
    assert outcomes.count(WriteStatus.PRECONDITION_FAILED) == 7, outcomes
    body, _ = racer.get_bytes("race/active.json", max_bytes=100)
    assert body.startswith(b"writer-")


@pytest.mark.parametrize("status", [500, 503])
def test_conditional_put_5xx_is_unknown_and_sent_once(
    store: ObjectStore, fault_proxy: FaultProxy, proxy_store: ObjectStore, status: int
):
    first = store.put_if_absent("channels/c/active.json", b"1")
    assert first.etag is not None
    fault_proxy.add_rule(Action.STATUS, method="PUT", key_contains="active.json", status=status,
                         times=5)
    outcome = proxy_store.put_if_match("channels/c/active.json", b"2", first.etag)
    assert outcome.status is WriteStatus.UNKNOWN and str(status) in outcome.detail
    assert len(fault_proxy.requests("PUT", "active.json")) == 1


def test_conditional_put_with_dropped_response_is_unknown_and_sent_once(
    store: ObjectStore, fault_proxy: FaultProxy, proxy_store: ObjectStore
):
    first = store.put_if_absent("channels/d/active.json", b"1")
    assert first.etag is not None
    fault_proxy.add_rule(Action.DROP_RESPONSE, method="PUT", key_contains="active.json")
    outcome = proxy_store.put_if_match("channels/d/active.json", b"2", first.etag)
    assert outcome.status is WriteStatus.UNKNOWN
    puts = fault_proxy.requests("PUT", "active.json")
    assert len(puts) == 1 and puts[0].upstream_status == 200
    # The write landed although the client never heard: the caller must re-read (invariant 3).
    assert store.get_bytes("channels/d/active.json", max_bytes=10)[0] == b"2"


def test_conditional_put_reset_or_timeout_is_unknown(
    store: ObjectStore, fault_proxy: FaultProxy, store_config: StoreConfig
):
    fault_proxy.add_rule(Action.RESET, method="PUT", key_contains="r.json")
    fault_proxy.add_rule(Action.DELAY, method="PUT", key_contains="s.json", delay=2.5)
    proxied = ObjectStore(fault_proxy.config_for(store_config, read_timeout=1))
    assert proxied.put_if_absent("r.json", b"1").status is WriteStatus.UNKNOWN
    assert proxied.put_if_absent("s.json", b"1").status is WriteStatus.UNKNOWN
    assert len(fault_proxy.requests("PUT", "r.json")) == 1
    assert len(fault_proxy.requests("PUT", "s.json")) == 1


def test_probe_passes_on_seaweedfs_and_cleans_up(store: ObjectStore):
    store.probe_conditional_writes()
    assert list(store.list_keys("_probe/")) == []


def test_probe_refuses_an_endpoint_that_ignores_conditions(
    fault_proxy: FaultProxy, proxy_store: ObjectStore
):
    fault_proxy.add_rule(Action.STRIP_CONDITIONS, method="PUT", header="If-None-Match",
                         times=100)
    fault_proxy.add_rule(Action.STRIP_CONDITIONS, method="PUT", header="If-Match", times=100)
    with pytest.raises(EndpointUnsafe) as info:
        proxy_store.probe_conditional_writes()
    assert info.value.code == "endpoint_unsafe"
    assert list(proxy_store.list_keys("_probe/")) == []


def test_probe_refuses_an_endpoint_that_ignores_only_if_match(
    fault_proxy: FaultProxy, proxy_store: ObjectStore
):
    fault_proxy.add_rule(Action.STRIP_CONDITIONS, method="PUT", header="If-Match", times=100)
    with pytest.raises(EndpointUnsafe, match="If-Match"):
        proxy_store.probe_conditional_writes()


def test_store_config_from_env(monkeypatch: pytest.MonkeyPatch):
    from kristal.config import store_config

    monkeypatch.setenv("KRISTAL_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("KRISTAL_S3_BUCKET", "b-1")
    monkeypatch.setenv("KRISTAL_S3_PREFIX", "pre")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sk")
    config = store_config()
    assert (config.endpoint_url, config.bucket, config.prefix) == ("http://127.0.0.1:1", "b-1",
                                                                   "pre")
    assert (config.access_key, config.secret_key) == ("ak", "sk")
    assert "sk" not in repr(config)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert store_config().access_key is None


def test_unreachable_endpoint_is_storage_unavailable_for_reads_unknown_for_writes():
    config = StoreConfig(endpoint_url="http://127.0.0.1:9", bucket="nowhere", access_key="a",
                         secret_key="b", connect_timeout=0.5, read_timeout=0.5)
    dead = ObjectStore(config)
    with pytest.raises(StorageUnavailable):
        dead.get_bytes("x", max_bytes=1)
    assert dead.put_if_absent("x", b"1").status is WriteStatus.UNKNOWN


def test_stores_of_one_endpoint_share_the_process_clients() -> None:
    """One botocore client per endpoint settings in a process (each costs ~0.15 s to build);
    the conditional writes' client (never retried) is made on the first write only."""
    base = StoreConfig(endpoint_url="http://127.0.0.1:9", bucket="a", access_key="k",
                       secret_key="s")
    first = ObjectStore(base)
    other_bucket = ObjectStore(StoreConfig(**{**base.__dict__, "bucket": "b", "prefix": "p"}))
    other_key = ObjectStore(StoreConfig(**{**base.__dict__, "secret_key": "t"}))
    assert first._client is other_bucket._client
    assert other_key._client is not first._client
    assert first._cond is None  # nothing written yet
    cond = first._cond_client
    assert cond is other_bucket._cond_client and cond is not first._client
    assert cond.meta.config.retries["total_max_attempts"] == 1
    assert first._client.meta.config.retries["total_max_attempts"] == 3
