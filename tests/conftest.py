"""Shared pytest fixtures: one SeaweedFS per session, a fresh bucket per test, a fault proxy.

Real S3 semantics only (no moto): conditional writes and large objects are tested against the
same `weed mini` the quick start uses, started by kristal.localstack.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from faultproxy import FaultProxy

from kristal.dev.processes import SeaweedProcess, start_seaweed, stop_seaweed
from kristal.store import s3 as objectstore
from kristal.store.s3 import ObjectStore, StoreConfig

# KRISTAL_TEST_S3_ENDPOINT: run the suite against an existing S3 endpoint (LocalStack, MinIO,
# another SeaweedFS) with its credentials, instead of starting SeaweedFS. Every test still makes
# and drops its own bucket there.
EXTERNAL_S3 = os.environ.get("KRISTAL_TEST_S3_ENDPOINT", "").strip()
TEST_ACCESS_KEY = os.environ.get("KRISTAL_TEST_S3_ACCESS_KEY", "kristal-test")
TEST_SECRET_KEY = os.environ.get("KRISTAL_TEST_S3_SECRET_KEY", "kristal-test-secret")
TEST_REGION = "us-east-1"
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def aws_test_env() -> Iterator[None]:
    """Test credentials for every boto3 client of the session; no IMDS or profile lookups."""
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    patch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    patch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    patch.delenv("AWS_PROFILE", raising=False)
    patch.delenv("AWS_SESSION_TOKEN", raising=False)
    # Storage hiccups are retried after these delays (production: 1, 2, 4 s).
    patch.setenv("KRISTAL_RETRY_DELAYS_S", "0.1,0.2,0.4")
    yield
    patch.undo()


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """shared/vectors next to the repository (tests/../../shared/vectors)."""
    path = (REPO_ROOT.parent / "shared" / "vectors").resolve()
    if not path.is_dir():
        pytest.fail(f"test vectors directory not found: {path}", pytrace=False)
    return path


# --- object store --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedProcess]:
    """One `weed mini` for the whole session, in a fresh directory deleted afterwards (or the
    endpoint named by KRISTAL_TEST_S3_ENDPOINT, started and stopped by someone else)."""
    if EXTERNAL_S3:
        port = urllib.parse.urlparse(EXTERNAL_S3).port or 443
        yield SeaweedProcess(pid=0, s3_port=port, endpoint_url=EXTERNAL_S3.rstrip("/"),
                             data_dir=Path(os.devnull))
        return
    base = tmp_path_factory.mktemp("seaweed")
    process = start_seaweed(
        base / "data",
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
        log_path=base / "weed.log",
    )
    try:
        yield process
    finally:
        stop_seaweed(process)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_admin(seaweed: SeaweedProcess) -> Any:
    """A raw boto3 client for fixture housekeeping (bucket clean-up), outside the adapter."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
        region_name=TEST_REGION,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def new_bucket(seaweed: SeaweedProcess, prefix: str = "t") -> StoreConfig:
    """A fresh, unique bucket on the session's S3 endpoint (a test's, or a module's)."""
    config = StoreConfig(
        endpoint_url=seaweed.endpoint_url,
        bucket=f"{prefix}-{uuid.uuid4().hex[:24]}",
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
        region=TEST_REGION,
    )
    ObjectStore(config).ensure_bucket()
    return config


@pytest.fixture
def store_config(seaweed: SeaweedProcess, s3_admin: Any) -> Iterator[StoreConfig]:
    """A fresh, unique bucket per test, so tests never see each other's objects."""
    config = new_bucket(seaweed)
    yield config
    # Dropping the bucket (SeaweedFS deletes non-empty ones) keeps the session server small.
    # Best effort: clean-up must not fail a test that passed.
    with contextlib.suppress(Exception):
        s3_admin.delete_bucket(Bucket=config.bucket)


@pytest.fixture
def store(store_config: StoreConfig) -> ObjectStore:
    return ObjectStore(store_config)


@pytest.fixture
def fault_proxy(seaweed: SeaweedProcess) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session SeaweedFS; pass-through until a rule is added."""
    proxy = FaultProxy(
        seaweed.endpoint_url,
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
        region=TEST_REGION,
    ).start()
    # A new proxy is a new endpoint; its port may be one an earlier proxy of this session had,
    # whose conditional-write probe this process remembers: forget it, so the probe runs again.
    with objectstore._PROBE_LOCK:
        objectstore._PROBED.difference_update(
            {scope for scope in objectstore._PROBED if scope[0] == proxy.url})
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def proxy_store(fault_proxy: FaultProxy, store_config: StoreConfig) -> ObjectStore:
    """An ObjectStore on the same bucket as `store`, through the fault proxy, short timeouts."""
    return ObjectStore(fault_proxy.config_for(store_config, connect_timeout=2, read_timeout=5))


# --- scheduling ----------------------------------------------------------------------------------
# The longest modules first (durations measured in CI), so no worker starts one of them near the
# end while the other idles: with `--dist loadfile --no-loadscope-reorder` (pyproject) xdist
# hands out files in this order. The rest keep their collection order.
SLOWEST_FIRST = ("test_production", "test_ui", "test_bake", "test_automations", "test_fanout",
                 "test_cli", "test_responder", "test_dev_stack", "test_static_checks",
                 "test_soak", "test_crash_rollback", "test_fleet")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.stem
        return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: a module's tests stay together and in their order


# --- release-level fixtures (tests/world.py) -----------------------------------------------------
from world import prefect_api, world  # noqa: E402, F401
