"""A production-shaped Prefect set-up for tests: a private PostgreSQL cluster, a `prefect server`
on it (filesystem lease storage, as `dev up` and the README set), every flow deployed to a
process work pool by `kristalctl deploy --pool`, and `prefect worker start` processes that can
be killed -9 and replaced. One of these per test module that needs it (they are slow to start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_cli import REPO_ROOT, kristalctl
from world import World

from kristal.dev.postgres import PostgresProcess, find_pg_bin, start_postgres, stop_postgres
from kristal.dev.processes import PrefectServerProcess, start_prefect_server, stop_process


def need_postgres() -> None:
    """Debian's `postgresql` (`.ci/run` installs it when missing); skip where it cannot be."""
    if find_pg_bin() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        # No system cluster: Debian would create and start one the tests never use.
        conf = Path("/etc/postgresql-common/createcluster.conf")
        if not conf.exists():
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text("create_main_cluster = false\n")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "postgresql"], env=env, capture_output=True, timeout=600)
    if find_pg_bin() is None:
        pytest.skip("Debian's postgresql cannot be installed here (no apt-get or not root)")


def wait_for(what: str, probe: Callable[[], Any], timeout: float, poll: float = 0.25) -> Any:
    """Poll until `probe` returns something truthy; fail the test naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def stop_workers(processes: list[subprocess.Popen[bytes]], grace: float = 10) -> None:
    """SIGINT every worker at once (a worker ignores SIGTERM), then SIGKILL the process groups
    still there after `grace` seconds in all (one by one, a worker's slow shutdown each time
    added up to a minute of teardown)."""
    alive = [p for p in processes if p.poll() is None]
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    for process in alive:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]


@dataclass
class Production:
    """The PostgreSQL-backed server, its pool, its workers and the module's World."""

    world: World
    postgres: PostgresProcess
    server: PrefectServerProcess
    home: Path
    log_dir: Path
    pool: str
    hold_dir: Path
    deployed: dict[str, Any]
    workers: list[Worker] = field(default_factory=list)

    def channel(self, tag: str) -> World:
        """The module's World on a channel of its own (same bucket, keys, trust and server)."""
        return dataclasses.replace(self.world, channel=f"acme/{tag}/r{uuid.uuid4().hex[:6]}",
                                   published={})

    def start_worker(self, *, queue: str | None = None, limit: int = 1,
                     env: dict[str, str] | None = None) -> Worker:
        name = f"w{len(self.workers) + 1}-{uuid.uuid4().hex[:4]}"
        argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool,
                "--type", "process", "--name", name, "--limit", str(limit)]
        if queue is not None:
            argv += ["--work-queue", queue]
        full = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "1",
                "KRISTAL_HOLD_DIR": str(self.hold_dir), **(env or {})}
        with (self.log_dir / f"worker-{name}.log").open("wb") as log:
            process = subprocess.Popen(argv, cwd=REPO_ROOT, env=full, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(name, process)
        self.workers.append(worker)
        return worker

    def restart_server(self) -> float:
        """Stop the Prefect server and start it again on the same port, home and database;
        returns the seconds it was down."""
        started = time.monotonic()
        stop_process(self.server.pid, grace=10)
        self.server = start_prefect_server(
            self.home, log_path=self.log_dir / "prefect.log", port=self.server.port,
            database_url=self.postgres.prefect_url)
        return time.monotonic() - started

    def arm_hold(self, point: str) -> None:
        (self.hold_dir / point).touch()

    def held(self, point: str) -> int | None:
        """The pid of the process waiting at `point`, if one is."""
        found = list(self.hold_dir.glob(f"{point}.held.*"))
        return int(found[0].name.rsplit(".", 1)[1]) if found else None

    def release(self, point: str) -> None:
        for held in self.hold_dir.glob(f"{point}.held.*"):
            held.unlink()

    def flow_runs(self, **filters: Any) -> list[Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

        with get_client(sync_client=True) as client:
            tags = filters.pop("tags", None)
            run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=tags)) if tags else None
            return list(client.read_flow_runs(flow_run_filter=run_filter, limit=200))


def start_production(tmp: Path, world: World, *, zombie_after_s: int = 90,
                     workers: int = 2) -> Production:
    """PostgreSQL, a Prefect server on it, `kristalctl deploy --pool`, then `workers` workers.

    Variables are set through `world.patch` (PREFECT_API_URL names the new server), so the
    module's teardown of it restores them."""
    need_postgres()
    log_dir = tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    postgres = start_postgres(log_path=log_dir / "postgres.log")
    home = tmp / "prefect-home"
    try:
        server = start_prefect_server(home, log_path=log_dir / "prefect.log",
                                      database_url=postgres.prefect_url)
    except BaseException:
        stop_postgres(postgres, remove_data=True)
        raise
    world.patch.setenv("PREFECT_API_URL", server.api_url)
    world.patch.setenv("KRISTAL_ZOMBIE_AFTER_S", str(zombie_after_s))
    hold_dir = tmp / "holds"
    hold_dir.mkdir()
    pool = f"kristal-{uuid.uuid4().hex[:6]}"
    prod = Production(world=world, postgres=postgres, server=server, home=home,
                      log_dir=log_dir, pool=pool, hold_dir=hold_dir, deployed={})
    try:
        deployed = kristalctl("deploy", "--pool", pool, "--json", timeout=180)
        assert deployed.returncode == 0, deployed.stderr
        prod.deployed = json.loads(deployed.stdout)
        for _ in range(workers):
            prod.start_worker()
    except BaseException:
        stop_production(prod)
        raise
    return prod


def stop_production(prod: Production) -> None:
    stop_workers([w.process for w in prod.workers])
    stop_process(prod.server.pid, grace=10)
    stop_postgres(prod.postgres, remove_data=True)
