"""The local stack's process management: start, readiness, and stop leaving nothing behind."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

from kristal.dev.processes import (
    find_weed,
    free_port,
    group_members,
    start_prefect_server,
    start_seaweed,
    stop_process,
    stop_seaweed,
    weed_mini_flags,
)
from kristal.store.s3 import ObjectStore, StoreConfig


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_weed_mini_has_every_flag_we_pass():
    flags = weed_mini_flags(find_weed())
    for flag in ("s3.port", "master.port", "filer.port", "volume.port", "admin.port",
                 "ip.bind", "webdav", "admin.ui"):
        assert flag in flags


def test_second_seaweed_starts_beside_the_session_one_and_stops_without_leftovers(
    seaweed, tmp_path: Path
):
    started = time.monotonic()
    process = start_seaweed(tmp_path / "data", access_key=TEST_ACCESS_KEY,
                            secret_key=TEST_SECRET_KEY, log_path=tmp_path / "weed.log")
    ready = time.monotonic() - started
    try:
        assert process.endpoint_url != seaweed.endpoint_url
        store = ObjectStore(StoreConfig(endpoint_url=process.endpoint_url, bucket="ls-test",
                                        access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY))
        store.ensure_bucket()
        store.put_bytes("k", b"v")
        assert store.get_bytes("k", max_bytes=10)[0] == b"v"
    finally:
        stopped = time.monotonic()
        stop_seaweed(process)
        print(f"weed mini ready in {ready:.2f}s, stopped in {time.monotonic() - stopped:.2f}s")
    assert group_members(process.pid) == []
    assert not Path(f"/proc/{process.pid}").exists()
    assert set(process.ports) >= {"s3.port", "master.port", "filer.port", "volume.port",
                                  "admin.port"}
    leftovers = [p for port in process.ports.values()
                 for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    assert leftovers == []


def test_seaweed_rejects_wrong_credentials(seaweed):
    from kristal.errors import StorageUnavailable

    wrong = ObjectStore(StoreConfig(endpoint_url=seaweed.endpoint_url, bucket="whatever",
                                    access_key="intruder", secret_key="nope"))
    with pytest.raises(StorageUnavailable, match=r"InvalidAccessKeyId|SignatureDoesNotMatch|403"):
        wrong.ensure_bucket()


def test_prefect_server_starts_healthy_and_stops_without_leftovers(tmp_path: Path):
    started = time.monotonic()
    server = start_prefect_server(tmp_path / "prefect", log_path=tmp_path / "prefect.log")
    ready = time.monotonic() - started
    try:
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=5) as resp:
            assert resp.status == 200
        assert server.api_url == f"http://127.0.0.1:{server.port}/api"
    finally:
        stopped = time.monotonic()
        stop_process(server.pid)
        print(f"prefect server ready in {ready:.1f}s, stopped in {time.monotonic() - stopped:.1f}s")
    assert group_members(server.pid) == []
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.api_url}/health", timeout=2)


def test_stop_process_is_quiet_for_a_process_that_is_gone():
    stop_process(2**22 - 7, grace=0.1)  # far above any pid in use here
