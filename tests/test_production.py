"""Production on Prefect's engine (issue 14), through the real CLI: a Prefect server on a private
PostgreSQL cluster, every flow deployed to a process work pool by `kristalctl deploy --pool`, two
`prefect worker start` processes (one run each at a time), SeaweedFS. Runs submitted with
`--via-deployment` give the same output and exit status as runs in the CLI's own process; two
concurrent activations of one channel on two workers keep one history; a server restart in
the middle of an activation leaves no channel locked; a worker host killed -9 after its run's
switch is found by the zombie automation and the switch rolled back.

The module shares one set-up (PostgreSQL, server, pool, workers: ~25 s to start); each test has
a channel of its own in one bucket.
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
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import new_bucket
from invariants import check_channel
from prefect_pool import Production, start_production, stop_production, wait_for
from test_cli import REPO_ROOT, kristalctl
from world import World, make_world

from kristal.dev.processes import SeaweedProcess
from kristal.formats.channel_docs import ActivationRecord
from tasks.names import AUTO_ROLLBACK_ON_FAILED_RUN, CRASH_ZOMBIE_RUNS

ZOMBIE_AFTER_S = 40  # heartbeats every 30 s (Prefect's minimum)
BAD = {"row_count": 1, "smoke_queries": [], "latency_p95_ms": 50, "max_rss_mb": 512}


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedProcess,
         prefect_api: str) -> Iterator[Production]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    tmp = tmp_path_factory.mktemp("production")
    config = new_bucket(seaweed)
    with pytest.MonkeyPatch.context() as patch:
        world = make_world(tmp, config, patch)
        production = start_production(tmp, world, zombie_after_s=ZOMBIE_AFTER_S)
        try:
            with temporary_settings(updates={PREFECT_API_URL: production.server.api_url}):
                yield production
        finally:
            stop_production(production)


def activate(world: World, release: int, *extra: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "flows.cli", "activate", world.channel, "--release",
            str(release), "--operator", "pytest", "--reason", "production test",
            "--via-deployment", "--json", *extra]
    env = {k: v for k, v in os.environ.items() if k != "KRISTAL_VERBOSE"}
    return subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_a_server_restart_mid_activation_leaves_the_channel_unlocked(prod: Production) -> None:
    world = prod.channel("restart")
    world.publish(1)
    world.publish(2)
    prod.arm_hold("after_stage")  # staged, channel lock held, pointer untouched
    held = activate(world, 1)
    wait_for("the run to hold after staging", lambda: prod.held("after_stage"), 180)
    down = prod.restart_server()
    print(f"Prefect server down for {down:.1f}s")
    prod.release("after_stage")
    code, out, err = finished(held)
    assert code == 0, err  # the run, and the CLI following it, rode through the restart
    assert json.loads(out)["outcome"] == "activated"
    # The channel is not locked: the next activation takes the lock at once (a wedged slot
    # made every later activation of the channel wait 600 s and fail).
    started = time.monotonic()
    code, out, err = finished(activate(world, 2))
    took = time.monotonic() - started
    assert code == 0, err
    assert json.loads(out)["release_id"] == 2
    assert took < 120, f"the next activation took {took:.0f}s: the channel lock was stuck"
    check_channel(world.ctx, world.channel, allow_pending_history=False, require_checked=True)


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@dataclass
class DeadHost:
    world: World
    switched: ActivationRecord
    follower: subprocess.Popen[str]
    killed_at: float


@pytest.fixture(scope="module")
def dead_host(prod: Production) -> DeadHost:
    """A worker host that dies after its run's switch: the worker and the run's process are
    killed -9, with no chance to report anything. The zombie automation needs ZOMBIE_AFTER_S of
    silence to notice, so this happens early in the module and its outcome is asserted last
    (the other tests run meanwhile)."""
    world = prod.channel("zombie")
    world.publish(1)
    world.publish(2)
    code, _, err = finished(activate(world, 1))
    assert code == 0, err
    prod.arm_hold("after_switch")  # pointer written, history and checks not yet
    follower = activate(world, 2)
    pid = wait_for("the run to hold after its switch", lambda: prod.held("after_switch"), 180)
    switched = world.pointer().record
    assert switched is not None and switched.active.release_id == 2
    worker = next(w for w in prod.workers if w.process.pid == _parent_of(pid))
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    prod.release("after_switch")
    # Two workers for the tests that run meanwhile, and one for the automation's rollback run.
    prod.start_worker()
    prod.start_worker()
    return DeadHost(world, switched, follower, killed_at)


def test_a_worker_host_dies_after_its_switch(dead_host: DeadHost) -> None:
    # Switched and then nothing: the run's process and its worker are gone.
    assert dead_host.world.pointer().record == dead_host.switched


def test_deploy_a_worker_runs_via_deployment_and_doctor_checks_the_set_up(
        prod: Production, tmp_path: Path) -> None:
    doc = prod.deployed
    assert doc["pool_created"] is True
    assert sorted(doc["deployments"]) == ["activate", "bake", "downgrade", "fleet-activate",
                                          "reverify", "rollback"]
    assert CRASH_ZOMBIE_RUNS in doc["automations"]
    assert AUTO_ROLLBACK_ON_FAILED_RUN in doc["automations"]
    world = prod.channel("deploy")
    version = kristalctl("--version")
    assert version.returncode == 0 and version.stdout.startswith("kristalctl 0."), version
    world.publish(1)
    world.publish(2, expect=BAD)

    applied = kristalctl("automations", "apply", "--json")
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout)
    assert CRASH_ZOMBIE_RUNS in report["automations"]
    # Applied again, nothing changes: an update would reset the zombie trigger's state and
    # the dead host's run (the fixture above) would never be marked Crashed.
    assert {n: a["outcome"] for n, a in report["applied"].items()} == dict.fromkeys(
        report["automations"], "unchanged"), report["applied"]

    started = time.monotonic()
    code, out, err = finished(activate(world, 1))
    assert code == 0, err
    outcome = json.loads(out)
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
    code, _, err = finished(activate(world, 2))
    assert code == 5, (code, err)
    assert err.startswith("error: check_failed: release 2 failed its checks"), err
    assert world.pointer().record.active.release_id == 1  # type: ignore[union-attr]

    healthy = kristalctl("doctor", "--pool", prod.pool, "--json", timeout=120)
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


def _worker_of(prod: Production, run_id: object) -> str:
    """The worker that ran the run: its log holds the run's own output, whose first lines give
    the run's address ("submitting" is logged by every worker that raced for it; the run's
    name changes once it knows what it does)."""
    mark = "View at http"
    names = [w.name for w in prod.workers
             if any(mark in line and f"/runs/flow-run/{run_id}" in line for line in (
                 prod.log_dir / f"worker-{w.name}.log").read_text(errors="replace").splitlines())]
    assert len(names) == 1, (run_id, names)
    return names[0]


def test_two_concurrent_activations_of_one_channel_on_two_workers_keep_one_history(
        prod: Production) -> None:
    world = prod.channel("concurrent")
    world.publish(1)
    world.publish(2)
    first, second = activate(world, 1), activate(world, 2)
    (code1, out1, err1), (code2, out2, err2) = finished(first), finished(second)
    assert code2 == 0, err2
    # The channel lock orders them. Release 1 first: both go live, in that order. Release 2
    # first: release 1 is then below the highest activated one and refused, with its code.
    facts = check_channel(world.ctx, world.channel, allow_pending_history=False,
                          require_checked=True)
    if code1 == 0:
        assert [r.active.release_id for r in facts.records] == [1, 2]
        assert [r.activation_id for r in facts.records] == [
            json.loads(out1)["activation_id"], json.loads(out2)["activation_id"]]
    else:
        assert code1 == 1 and err1.startswith("error: release_id_downgrade_blocked: "), err1
        assert [r.activation_id for r in facts.records] == [json.loads(out2)["activation_id"]]
    assert facts.live is not None and facts.live.active.release_id == 2
    # Submitted together, they ran one on each worker (the first can end before the second
    # starts on a loaded machine: only the workers are asserted).
    activate_id = prod.deployed["deployments"]["activate"]
    runs = [r for r in prod.flow_runs() if str(r.deployment_id) == activate_id
            and r.parameters.get("request", {}).get("channel_id") == world.channel]
    assert len(runs) == 2
    assert len({_worker_of(prod, r.id) for r in runs}) == 2


def _say_what_the_server_saw(flow_run_id: object) -> None:
    """On a failure: the killed run's state and its events, for the log."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = str(PREFECT_API_URL.value())
    run = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10).json()
    print("killed run:", run.get("name"), run.get("state_type"), run.get("state_name"),
          (run.get("state") or {}).get("message"))
    found = httpx.post(f"{api}/events/filter", timeout=10, json={"filter": {
        "any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}, "limit": 50}).json()
    for event in found.get("events", []):
        print("event:", event.get("occurred"), event.get("event"))
    for automation in httpx.post(f"{api}/automations/filter", json={}, timeout=10).json():
        print("automation:", automation["name"], automation.get("updated"))


def test_the_dead_hosts_run_is_found_by_the_zombie_automation_and_rolled_back(
        dead_host: DeadHost) -> None:
    world, switched = dead_host.world, dead_host.switched

    def rolled_back() -> bool:
        record = world.pointer().record
        return record is not None and record.kind == "auto_rollback"

    try:
        wait_for("the zombie automation's rollback", rolled_back, ZOMBIE_AFTER_S + 150, poll=1)
    except BaseException:
        _say_what_the_server_saw(switched.flow_run_id)
        raise
    print(f"kill -9 -> rolled back: {time.monotonic() - dead_host.killed_at:.1f}s")
    record = world.pointer().record
    assert record is not None and record.active.release_id == 1
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(uuid.UUID(str(switched.flow_run_id)))
    assert run.state is not None and run.state.is_crashed(), run.state
    assert "no heartbeat" in (run.state.message or "")
    # The CLI following the run tells the truth: it did not succeed.
    code, out, err = finished(dead_host.follower, timeout=60)
    assert code != 0, (code, out, err)
    check_channel(world.ctx, world.channel, allow_pending_history=True)
