"""A fleet that spans hosts (issue 14), through the real CLI: `kristalctl fleet-activate
--fan-out` runs each channel as a run of the `activate` deployment on its region's work queue,
where a `prefect worker start` of that region (its own cache: another host) runs it; a private
Prefect server and SeaweedFS. The fleet goes live through the workers; a canary whose checks
fail is rolled back and the rest vetoed with the in-process fleet's exit status; a region
without a queue, or no orchestrator, is refused before anything starts; a run no worker takes
is cancelled and fails its channel.

The pool fixture is one function (`work_pool`): a private server, every flow deployed to a
fresh process pool with one queue per region, one worker per region.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import new_bucket
from prefect_pool import stop_workers
from test_cli import REPO_ROOT, kristalctl
from world import World, make_world

from kristal.channel import records
from kristal.dev.processes import SeaweedProcess
from kristal.errors import UsageInvalid, WorkerUnavailable
from kristal.operations.fleet_rules import publish_to_channels
from kristal.operations.runner import RemoteActivation
from tasks.names import region_queue

BAD_CHECKS = {"row_count": 1, "smoke_queries": [], "latency_p95_ms": 50, "max_rss_mb": 512}


@dataclass
class WorkPool:
    api_url: str
    name: str
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


@contextlib.contextmanager
def work_pool(base: Path, patch: pytest.MonkeyPatch, regions: Sequence[str],
              worker_env: dict[str, dict[str, str]] | None = None) -> Iterator[WorkPool]:
    """A private `prefect server`, every flow deployed (`kristalctl deploy --pool --region`) to a
    fresh process pool with the queue `kristal-<region>` of each region, and one `prefect
    worker start` per region polling only its queue (`worker_env[region]` added to its
    environment). PREFECT_API_URL points at the server while it runs."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from kristal.dev.processes import start_prefect_server, stop_process

    server = start_prefect_server(base / "prefect", log_path=base / "prefect.log")
    patch.setenv("PREFECT_API_URL", server.api_url)
    pool = WorkPool(server.api_url, f"kristal-{uuid.uuid4().hex[:6]}")
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            deployed = kristalctl("deploy", "--pool", pool.name,
                                  *(a for r in regions for a in ("--region", r)), "--json",
                                  timeout=180)
            assert deployed.returncode == 0, deployed.stderr
            assert json.loads(deployed.stdout)["work_queues"] == [region_queue(r)
                                                                  for r in regions]
            for region in regions:
                env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1",
                       "PREFECT_WORKER_PREFETCH_SECONDS": "1", **(worker_env or {}).get(region,
                                                                                      {})}
                with (base / f"worker-{region}.log").open("wb") as log:
                    pool.workers[region] = subprocess.Popen(
                        [sys.executable, "-m", "prefect", "worker", "start", "--pool",
                         pool.name, "--type", "process", "--work-queue", region_queue(region)],
                        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True)
            yield pool
    finally:
        stop_workers(list(pool.workers.values()))
        stop_process(server.pid)


@dataclass
class Stack:
    world: World
    pool: WorkPool
    regions: tuple[str, str]
    base: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedProcess,
          s3_admin: Any) -> Iterator[Stack]:
    """One bucket, keys and trust file for the module, and a pool with a worker per region,
    each worker with its own cache (as on its own host)."""
    base = tmp_path_factory.mktemp("fanout")
    config = new_bucket(seaweed)
    patch = pytest.MonkeyPatch()
    patch.setenv("PREFECT_HOME", str(base / "prefect-client"))
    patch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    world = make_world(base, config, patch)
    tag = uuid.uuid4().hex[:4]
    regions = (f"eu{tag}", f"us{tag}")
    caches = {r: {"KRISTAL_CACHE_DIR": str(base / f"cache-{r}")} for r in regions}
    try:
        with work_pool(base, patch, regions, caches) as pool:
            yield Stack(world, pool, regions, base)
    finally:
        patch.undo()
        with contextlib.suppress(Exception):
            s3_admin.delete_bucket(Bucket=config.bucket)


def _channels(stack: Stack, count: int) -> list[str]:
    """`count` channels alternating between the two regions, the first in the first."""
    name = uuid.uuid4().hex[:4]
    return [f"acme/f{name}{i}/{stack.regions[i % 2]}" for i in range(count)]


def _release(world: World, channels: list[str], release_id: int,
             expect: dict[str, Any] | None = None) -> None:
    first = world.publish(release_id, channel=channels[0], expect=expect)
    publish_to_channels(world.store, world.ctx.trust_file, world.keys,
                        result_of_first_publish=first, channel_ids=channels,
                        release_id=release_id, generation=first.generation, now=world.ctx.now)


def _fleet(channels: list[str], release_id: int) -> subprocess.CompletedProcess[str]:
    return kristalctl("fleet-activate", *channels, "--release", str(release_id), "--wave-size",
                      "2", "--max-parallel", "2", "--fan-out", "--operator", "pytest",
                      "--reason", f"fan-out {release_id}", "--json", timeout=300)


def _child_runs(fleet_key: str) -> dict[str, Any]:
    """The fleet's child runs by channel (tag `channel:<id>`), read from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"fleet:{fleet_key}"])))
    return {next(t for t in run.tags if t.startswith("channel:"))[len("channel:"):]: run
            for run in runs}


def _fleet_key(doc: dict[str, Any]) -> str:
    return str(doc["artifact_keys"][0]).removeprefix("fleet-waves-")


def test_a_fanned_out_fleet_goes_live_through_each_regions_worker(stack: Stack) -> None:
    world = stack.world
    channels = _channels(stack, 3)  # a canary, then a wave of one channel per region
    _release(world, channels, 1)

    done = _fleet(channels, 1)

    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    doc = json.loads(done.stdout)
    assert doc["outcome"] == "activated" and doc["waves"] == [channels[:1], channels[1:]]
    assert [(o["channel_id"], o["wave"], o["result"]) for o in doc["channels"]] == [
        (c, 1 if i == 0 else 2, "activated") for i, c in enumerate(channels)]
    assert doc["payload_downloads"] == 0 and doc["staging_note"].startswith("fanned out")
    for outcome in doc["channels"]:
        live = records.read_pointer(world.ctx, outcome["channel_id"]).record
        assert live is not None and live.active.release_id == 1
        assert live.activation_id == outcome["activation_id"]
        assert records.read_checks(world.ctx, live).result == "passed"  # type: ignore[union-attr]
    runs = _child_runs(_fleet_key(doc))
    assert sorted(runs) == sorted(channels)
    for channel, run in runs.items():
        assert run.work_queue_name == region_queue(channel.split("/")[2])
        assert run.state is not None and run.state.is_completed()
        assert f"run {run.name} ({run.id}) on work queue {run.work_queue_name}" in next(
            o["message"] for o in doc["channels"] if o["channel_id"] == channel)
    # Each region's worker staged the release from the store into its own cache.
    for region in stack.regions:
        assert list((stack.base / f"cache-{region}" / "indexes").glob("*.sqlite"))


def test_a_fanned_out_canary_that_fails_its_checks_halts_and_vetoes_the_rest(
        stack: Stack) -> None:
    world = stack.world
    channels = _channels(stack, 3)
    _release(world, channels, 1)
    world.activate(1, via="plain", channel=channels[0])  # the canary's release to go back to
    _release(world, channels, 2, expect=BAD_CHECKS)
    before = {c: records.read_pointer(world.ctx, c).raw for c in channels[1:]}

    halted = _fleet(channels, 2)

    assert halted.returncode == 5, (halted.returncode, halted.stderr[-2000:])  # as in-process
    doc = json.loads(halted.stdout)
    assert doc["outcome"] == "halted" and doc["halted_at_wave"] == 1
    canary = doc["channels"][0]
    assert (canary["channel_id"], canary["result"], canary["error_code"]) == (
        channels[0], "rolled_back", "check_failed")
    assert doc["vetoed"] == channels[1:]
    live = records.read_pointer(world.ctx, channels[0]).record
    assert live is not None and (live.kind, live.active.release_id) == ("auto_rollback", 1)
    assert records.read_quarantine(world.ctx, channels[0], 2) is not None
    assert {c: records.read_pointer(world.ctx, c).raw for c in channels[1:]} == before
    runs = _child_runs(_fleet_key(doc))
    assert list(runs) == [channels[0]]  # the vetoed channels never got a run
    assert runs[channels[0]].work_queue_name == region_queue(stack.regions[0])


def test_a_region_without_a_work_queue_is_refused_before_anything_starts(stack: Stack) -> None:
    from tasks.fanout import check_region_queues

    here = f"acme/fhere/{stack.regions[1]}"
    assert check_region_queues([here]).endswith(f"queues {region_queue(stack.regions[1])}")
    with pytest.raises(UsageInvalid, match="has no work queue kristal-nowhere"):
        check_region_queues([here, "acme/fstray/nowhere"])


def test_a_run_no_worker_starts_is_cancelled_and_its_channel_fails_worker_unavailable(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.pool import ensure_region_queues
    from tasks.fanout import activate_on_worker

    idle = f"idle{uuid.uuid4().hex[:4]}"  # a queue that exists, and no worker polls it
    ensure_region_queues(stack.pool.name, [idle])
    monkeypatch.setenv("KRISTAL_FANOUT_START_TIMEOUT_S", "1")
    job = RemoteActivation(channel_id=f"acme/fidle/{idle}", release_id=1, force=False,
                           operator="pytest", reason="no worker", correlation_id="pytest",
                           fleet=f"r1-{idle}", wave=1)
    with pytest.raises(WorkerUnavailable, match="cancelled before it began"):
        activate_on_worker(job, None)
    run = _child_runs(job.fleet)[job.channel_id]
    assert run.state is not None and run.state.is_cancelled()


def test_fan_out_without_an_orchestrator_is_refused_before_anything_is_read(
        stack: Stack) -> None:
    from kristal.operations.fleet import fleet_activate

    with pytest.raises(UsageInvalid, match="needs the orchestrator"):
        fleet_activate(stack.world.plain_runner(), stack.world.ctx, channel_ids=[
            "acme/fnone/nowhere"], release_id=1, who=stack.world.who(), fan_out=True)
