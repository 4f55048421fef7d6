"""The store as a Prefect block (issue 14), through the real CLI against SeaweedFS and the
session's Prefect server: `kristalctl config save-block` saves this environment's store as a
`kristal-store` block (the secret stored, never shown); a host with only `KRISTAL_STORE_BLOCK`
activates and reads the channel; the block wins over a host's `KRISTAL_S3_*` / `AWS_*`; a
missing block is `usage_invalid` before anything changes; `doctor` shows the block's row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from conftest import TEST_SECRET_KEY
from test_cli import REPO_ROOT
from world import World

from kristal.errors import UsageInvalid

STORE_ENV = ("KRISTAL_S3_ENDPOINT", "KRISTAL_S3_BUCKET", "KRISTAL_S3_PREFIX",
             "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION")


def _cli(*args: str, env: dict[str, str | None] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`kristalctl` with this process's environment changed by `env` (None: unset)."""
    full_env = dict(os.environ)
    full_env.pop("KRISTAL_VERBOSE", None)
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def _only_the_block(name: str) -> dict[str, str | None]:
    """A host whose one store setting is the block's name."""
    return {**dict.fromkeys(STORE_ENV), "KRISTAL_STORE_BLOCK": name}


def test_a_host_with_only_the_store_block_activates_and_the_block_wins_over_its_env(
        world: World, prefect_api: str) -> None:
    from prefect.client.orchestration import get_client

    from tasks.store_block import save_store_block

    world.patch.setenv("PREFECT_API_URL", prefect_api)
    world.publish(1)
    name = f"store-{uuid.uuid4().hex[:8]}"
    outputs: list[str] = []

    saved = _cli("config", "save-block", name, "--json")
    outputs += [saved.stdout, saved.stderr]
    assert saved.returncode == 0, saved.stderr
    doc = json.loads(saved.stdout)
    assert doc["block"] == f"kristal-store/{name}"
    assert doc["bucket"] == world.store.config.bucket
    assert doc["endpoint_url"] == world.store.config.endpoint_url
    assert doc["secret_access_key"] == "********"
    with pytest.raises(UsageInvalid, match="--overwrite replaces it"):  # never by accident
        save_store_block(name, world.store.config, overwrite=False)

    # What the API shows of the block (the UI, `prefect block inspect`) hides the secret.
    with get_client(sync_client=True) as client:
        shown = client.read_block_document_by_name(name, "kristal-store", include_secrets=False)
    assert shown.data["bucket"] == world.store.config.bucket
    assert TEST_SECRET_KEY not in json.dumps(shown.data, default=str)

    live = _cli("activate", world.channel, "--release", "1", "--operator", "pytest",
                "--reason", "store from a block", "--json", env=_only_the_block(name))
    outputs += [live.stdout, live.stderr]
    assert live.returncode == 0, live.stderr
    outcome = json.loads(live.stdout)
    record = world.pointer().record  # read directly from the bucket
    assert record is not None and record.activation_id == outcome["activation_id"]
    assert record.evidence["trust_file_sha256"].startswith("sha256:")

    # The block wins: this host's endpoint, bucket and secret are all wrong, and ignored.
    wrong = {"KRISTAL_STORE_BLOCK": name, "KRISTAL_S3_ENDPOINT": "http://127.0.0.1:9",
             "KRISTAL_S3_BUCKET": "elsewhere", "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    status = _cli("status", world.channel, "--json", env=wrong)
    outputs += [status.stdout, status.stderr]
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["activation_id"] == outcome["activation_id"]
    doctor = _cli("doctor", "--json", env=wrong)
    outputs += [doctor.stdout, doctor.stderr]
    rows = {r["name"]: r for r in json.loads(doctor.stdout)["checks"]}
    assert list(rows)[:3] == ["store-block", "settings-and-trust-file", "s3-endpoint"]
    assert rows["store-block"]["ok"], rows["store-block"]
    assert "the block wins over this host's KRISTAL_S3_ENDPOINT, KRISTAL_S3_BUCKET" in (
        rows["store-block"]["detail"])
    assert rows["s3-endpoint"]["ok"], rows["s3-endpoint"]  # the block's bucket answers
    assert world.store.config.bucket in rows["settings-and-trust-file"]["detail"]
    assert not any(TEST_SECRET_KEY in text for text in outputs)


def test_a_missing_store_block_is_a_usage_error_before_anything_changes(
        world: World, prefect_api: str) -> None:
    world.patch.setenv("PREFECT_API_URL", prefect_api)
    world.publish(1)
    before = world.snapshot()
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    # The environment's store is complete: a named block that is not there is still an error.
    refused = _cli("activate", world.channel, "--release", "1", "--operator", "pytest",
                   "--reason", "no such block", env={"KRISTAL_STORE_BLOCK": missing})
    assert refused.returncode == 2, (refused.returncode, refused.stderr)
    assert refused.stderr.startswith(
        f"error: usage_invalid: no store block kristal-store/{missing} on "), refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "Traceback" not in refused.stderr
    assert world.snapshot() == before and world.pointer().record is None

    # `deploy --store-block` checks the block before it deploys anything (in this process:
    # the same command, without a second CLI start-up).
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from typer.testing import CliRunner

    from flows.cli.command_line import app

    pool = f"pool-{uuid.uuid4().hex[:6]}"
    deploy = CliRunner().invoke(app, ["deploy", "--pool", pool, "--store-block", missing])
    assert isinstance(deploy.exception, UsageInvalid), deploy.output
    assert f"kristal-store/{missing}" in deploy.exception.message
    with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
        client.read_work_pool(pool)


def test_deployments_carry_the_store_block_and_the_env_only_path_loads_no_prefect(
        world: World) -> None:
    from deployments.pool import job_env

    assert job_env("prod-eu")["KRISTAL_STORE_BLOCK"] == "prod-eu"
    assert "KRISTAL_STORE_BLOCK" not in job_env(None)
    probe = ("import sys; from flows.cli.app import domain_context; "
             "print(domain_context().store.config.bucket); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "KRISTAL_STORE_BLOCK": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [world.store.config.bucket, "[]"]
