"""`kristalctl warm` and the warm path (issue 15 item 4), through the real command line: a warm
process of the test's environment against SeaweedFS and the session's Prefect server, clients
started as `python -m flows.cli`, signals, kills and changed sources as they happen.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_cli import _refused
from tests.world import World


class Warm:
    """A `kristalctl warm` process; its stderr lines collected as they come."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "warm"], cwd=cwd,
                                     env=env, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for("ready (pid ")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, *, after: int = 0, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"warm never said {text!r}: {self.lines}")

    def run(self, *args: str, extra: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=self.cwd,
                              env={**self.env, **(extra or {})}, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, *args: str, cold: bool = False) -> subprocess.Popen[str]:
        env = {**self.env, **({"KRISTAL_NO_WARM": "1"} if cold else {})}
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=self.cwd,
                                env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def warm_env(world: World, prefect_api: str) -> Iterator[dict[str, str]]:
    # A short runtime directory: a Unix socket's path has at most 107 bytes.
    runtime = Path(tempfile.mkdtemp(prefix="kw", dir="/tmp"))
    env = {**os.environ, **world.env, "PREFECT_API_URL": prefect_api,
           "XDG_RUNTIME_DIR": str(runtime), "KRISTAL_HOLD_DIR": str(world.home / "holds")}
    env.pop("KRISTAL_VERBOSE", None)
    (world.home / "holds").mkdir()
    yield env
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
def warm(warm_env: dict[str, str]) -> Iterator[Warm]:
    process = Warm(warm_env, REPO_ROOT)
    yield process
    process.stop()


def _two_live_releases(world: World) -> None:
    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")
    world.activate(2, via="plain")


def _handed(warm: Warm, before: int, command: str) -> int:
    """The child pid the warm process forked for `command` after line `before`."""
    line = warm.wait_for(f"{command} → child ", after=before)
    return int(line.rsplit(" ", 1)[1])


def test_commands_handed_to_a_warm_process_behave_as_cold_ones(
        world: World, warm: Warm) -> None:
    """Same stdout, stderr and exit status as the command run in its own process, for an
    operation, a read, a refusal and a usage error; a run of the command is recorded."""
    _two_live_releases(world)
    who = ("--operator", "pytest", "--reason", "warm")
    before = len(warm.lines)
    rolled = warm.run("rollback", world.channel, "--to", "previous", *who)
    assert rolled.returncode == 0, rolled.stderr
    child = _handed(warm, before, f"rollback {world.channel}")
    warm.wait_for(f"child {child} (rollback {world.channel}) exited 0", after=before)
    lines = rolled.stdout.splitlines()
    assert lines[0].startswith(f"run: rollback {world.channel} → previous  http"), lines
    assert lines[1] == "release 1 is live again (sequence 3)" and rolled.stderr == ""
    record = world.pointer().record
    assert record is not None and record.kind == "rollback" and record.flow_run_id
    assert record.active.release_id == 1 and lines[0].endswith(str(record.flow_run_id))

    # The reads: the same bytes as a cold process prints.
    for args in (("status", world.channel), ("history", world.channel),
                 ("releases", world.channel), ("status", world.channel, "--json")):
        before = len(warm.lines)
        cold = warm.run(*args, extra={"KRISTAL_NO_WARM": "1"})
        hot = warm.run(*args)
        _handed(warm, before, " ".join(args[:2]))
        assert (hot.returncode, hot.stdout, hot.stderr) == \
            (cold.returncode, cold.stdout, cold.stderr), args
    doc = json.loads(warm.run("rollback", world.channel, "--to", "previous", *who,
                              "--json").stdout)
    assert doc["outcome"] == "rolled_back" and doc["release_id"] == 2 and doc["runs"]

    # Refusals keep their one line and exit status (a refused run's own name differs).
    for args, code, status in ((("status", "nobody/prod/eu-west-1"), "channel_unknown", 1),
                               (("rollback", world.channel, "--to", "previous"),
                                "usage_invalid", 2),
                               (("rollback", world.channel, "--to", "99", *who),
                                "rollback_target_missing", 1)):
        cold = warm.run(*args, extra={"KRISTAL_NO_WARM": "1"})
        hot = warm.run(*args)
        assert (hot.returncode, hot.stderr) == (cold.returncode, cold.stderr), args
        _refused(hot, code, status)


def test_other_environments_and_unsafe_directories_run_cold(
        world: World, warm: Warm, warm_env: dict[str, str]) -> None:
    """A command of another environment, one with KRISTAL_NO_WARM, one not on the warm list,
    and any command while the socket directory is open to others, run in their own process;
    a second warm process for the same environment is refused."""
    world.publish(1)
    world.activate(1, via="plain")
    before = len(warm.lines)
    for extra in ({"KRISTAL_NO_WARM": "1"}, {"KRISTAL_S3_READ_TIMEOUT_S": "31"}):
        done = warm.run("status", world.channel, extra=extra)
        assert done.returncode == 0 and "release 1" in done.stdout, done.stderr
    assert warm.run("id", "--help").returncode == 0
    socket_dir = Path(warm_env["XDG_RUNTIME_DIR"]) / "kristalctl"
    socket_dir.chmod(0o750)
    try:
        assert warm.run("status", world.channel).returncode == 0
    finally:
        socket_dir.chmod(0o700)
    assert not [line for line in warm.lines[before:] if "→ child" in line], warm.lines
    assert warm.run("status", world.channel).returncode == 0
    _handed(warm, before, f"status {world.channel}")

    second = subprocess.run([sys.executable, "-m", "flows.cli", "warm"], cwd=REPO_ROOT,
                            env=warm_env, capture_output=True, text=True, timeout=120)
    line = _refused(second, "usage_invalid", 2)
    assert "already serves this environment" in line


def test_signals_reach_the_command_and_a_lost_client_takes_its_command_with_it(
        world: World, warm: Warm) -> None:
    """Ctrl-C on a client reaches its command in the child (held before the switch), which
    ends as a cold process does on Ctrl-C there; nothing switched. A client killed outright
    stops its child."""
    _two_live_releases(world)
    holds = world.home / "holds"
    who = ("--operator", "pytest", "--reason", "held")
    ended: dict[str, tuple[int, str]] = {}
    for how in ("cold", "interrupt", "kill"):
        before = len(warm.lines)
        live = world.snapshot()
        (holds / "before_switch").touch()
        client = warm.start("rollback", world.channel, "--to", "previous", *who,
                            cold=how == "cold")
        try:
            pid = client.pid if how == "cold" else _handed(warm, before,
                                                           f"rollback {world.channel}")
            _wait(lambda p=pid: list(holds.glob(f"before_switch.held.{p}")), "never held")
            if how == "kill":
                client.kill()
                client.wait(30)
                warm.wait_for(f"child {pid}: its client went away", after=before)
            else:
                client.send_signal(signal.SIGINT)
                _out, err = client.communicate(timeout=120)
                ended[how] = (client.returncode, err)
            if how != "cold":
                warm.wait_for(f"child {pid} (rollback", after=before)
                _wait(lambda p=pid: not _alive(p), "the child outlived its command")
        finally:
            if client.poll() is None:
                client.kill()
            for held in holds.glob("before_switch*"):
                held.unlink()
        assert world.snapshot() == live, how
    assert ended["interrupt"] == ended["cold"], ended
    assert ended["cold"][0] == 1, ended  # DESIGN §9's statuses: refused, not typer's 130
    assert ended["cold"][1].strip().splitlines()[-1] == "error: activation_aborted: interrupted"


def test_a_warm_process_lost_mid_command_leaves_the_outcome_unknown(
        world: World, warm: Warm) -> None:
    """The warm process killed while its child is held: the command still finishes (the
    switch happens) and the client, which cannot know that, says `commit_unknown`, exit 4."""
    _two_live_releases(world)
    holds = world.home / "holds"
    (holds / "before_switch").touch()
    before = len(warm.lines)
    client = warm.start("rollback", world.channel, "--to", "previous",
                        "--operator", "pytest", "--reason", "lost")
    try:
        child = _handed(warm, before, f"rollback {world.channel}")
        _wait(lambda: list(holds.glob(f"before_switch.held.{child}")), "never held")
        warm.proc.kill()
        warm.proc.wait(30)
        for held in holds.glob("before_switch*"):
            held.unlink()
        _out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 4, err
    assert err.strip().splitlines()[-1].startswith("error: commit_unknown: the warm process")
    record = world.pointer().record
    assert record is not None and record.active.release_id == 1  # it did run


def test_changed_sources_run_cold_and_restart_the_warm_process(
        warm_env: dict[str, str], tmp_path: Path, world: World) -> None:
    """A warm process of a copy of the sources: once a source file changes, the next command
    runs cold (right), and the warm process starts again on the new sources and serves."""
    world.publish(1)
    world.activate(1, via="plain")
    tree = tmp_path / "tree"
    for name in ("flows", "tasks", "kristal", "deployments"):
        shutil.copytree(REPO_ROOT / name, tree / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tree / "pyproject.toml")
    env = {**warm_env, "PYTHONPATH": str(tree)}
    warm = Warm(env, tree)
    try:
        pid = warm.proc.pid
        before = len(warm.lines)
        assert warm.run("status", world.channel).returncode == 0
        _handed(warm, before, f"status {world.channel}")
        changed = tree / "flows" / "cli" / "reading.py"
        os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
        before = len(warm.lines)
        done = warm.run("status", world.channel)
        assert done.returncode == 0 and "release 1" in done.stdout, done.stderr
        warm.wait_for("the sources changed", after=before)
        warm.wait_for(f"ready (pid {pid})", after=before)
        restarted = len(warm.lines)
        assert warm.run("status", world.channel).returncode == 0
        _handed(warm, restarted, f"status {world.channel}")
    finally:
        warm.stop()


def _wait(ready: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
