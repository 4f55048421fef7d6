"""Production on Prefect's engine (issue 14), through the real CLI against the session's Prefect
server and SeaweedFS: `kristalctl deploy --pool` deploys every flow to a process work pool and
applies the automations (the zombie-run one too), a real `prefect worker start` runs
`activate --via-deployment` with the same output and exit status as a run in the CLI's own
process, and `kristalctl doctor` checks the worker's set-up, the trust file's digest included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import REPO_ROOT, kristalctl
from world import World

from tasks.names import AUTO_ROLLBACK_ON_FAILED_RUN, CRASH_ZOMBIE_RUNS


@pytest.fixture
def private_api(world: World, tmp_path: Path) -> Iterator[str]:
    """A Prefect server of this test's own: pool deployments must not meet the session's
    `serve` deployments of the same names (one server runs either `serve` or a pool)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from kristal.dev.processes import start_prefect_server, stop_process

    server = start_prefect_server(tmp_path / "prefect", log_path=tmp_path / "prefect.log")
    world.patch.setenv("PREFECT_API_URL", server.api_url)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        stop_process(server.pid)


@pytest.fixture
def pool(world: World, private_api: str, tmp_path: Path) -> Iterator[str]:
    """A fresh process work pool with one `prefect worker start` polling it."""
    name = f"kristal-{uuid.uuid4().hex[:6]}"
    deployed = kristalctl("deploy", "--pool", name, "--json", timeout=180)
    assert deployed.returncode == 0, deployed.stderr
    doc = json.loads(deployed.stdout)
    assert doc["pool_created"] is True
    assert sorted(doc["deployments"]) == ["activate", "bake", "downgrade", "fleet-activate",
                                          "reverify", "rollback"]
    assert CRASH_ZOMBIE_RUNS in doc["automations"]
    assert AUTO_ROLLBACK_ON_FAILED_RUN in doc["automations"]
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", name, "--type",
             "process"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        yield name
    finally:
        os.killpg(worker.pid, signal.SIGINT)  # a worker ignores SIGTERM
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()



def test_deploy_a_worker_runs_via_deployment_and_doctor_checks_the_set_up(
        world: World, pool: str, tmp_path: Path) -> None:
    channel = world.channel
    version = kristalctl("--version")
    assert version.returncode == 0 and version.stdout.startswith("kristalctl 0."), version
    world.publish(1)
    bad = {"row_count": 1, "smoke_queries": [], "latency_p95_ms": 50, "max_rss_mb": 512}
    world.publish(2, expect=bad)

    applied = kristalctl("automations", "apply", "--json")
    assert applied.returncode == 0, applied.stderr
    assert CRASH_ZOMBIE_RUNS in json.loads(applied.stdout)["automations"]

    started = time.monotonic()
    live = kristalctl("activate", channel, "--release", "1", "--operator", "pytest",
                      "--reason", "through the pool", "--via-deployment", "--json",
                      timeout=300)
    assert live.returncode == 0, live.stderr
    outcome = json.loads(live.stdout)
    assert outcome["outcome"] == "activated" and outcome["release_id"] == 1
    print(f"activate --via-deployment: {time.monotonic() - started:.1f}s")
    record = world.pointer().record
    assert record is not None and record.activation_id == outcome["activation_id"]
    assert record.evidence["trust_file_sha256"].startswith("sha256:")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(str(record.flow_run_id)))
        deployment = client.read_deployment_by_name("activate/activate")
    assert run.deployment_id == deployment.id  # it shows under its deployment

    # A failed check: the same one-line error and exit status 5 as a run in this process.
    failed = kristalctl("activate", channel, "--release", "2", "--operator", "pytest",
                        "--reason", "bad", "--via-deployment", timeout=300)
    assert failed.returncode == 5, (failed.returncode, failed.stderr)
    assert failed.stderr.startswith("error: check_failed: release 2 failed its checks")
    assert world.pointer().record.active.release_id == 1  # type: ignore[union-attr]

    healthy = kristalctl("doctor", "--pool", pool, "--json", timeout=120)
    doc = json.loads(healthy.stdout)
    assert healthy.returncode == 0 and doc["ok"], healthy.stdout
    names = [c["name"] for c in doc["checks"]]
    assert names == ["settings-and-trust-file", "s3-endpoint", "trust-file-digest",
                     "activator-key", "prefect-api", "lease-storage", "automations",
                     "work-pool"]
    # A worker holding another trust file than the one deployed is told so.
    other = tmp_path / "other-trust.json"
    trust = json.loads(Path(world.env["KRISTAL_TRUST_FILE"]).read_text())
    trust["channels"]["*"]["reverify_rollback"] = True
    other.write_text(json.dumps(trust))
    wrong = kristalctl("doctor", env={"KRISTAL_TRUST_FILE": str(other)}, timeout=120)
    assert wrong.returncode == 1, wrong.stderr
    assert wrong.stderr.startswith("error: trust_root_missing: doctor: 1 of 7 checks failed: "
                                   "trust-file-digest"), wrong.stderr
