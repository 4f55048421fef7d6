"""A private PostgreSQL cluster on 127.0.0.1 for a Prefect server (tests, benchmarks, trials):
Debian's `postgresql` binaries, a data directory of its own, trust auth for one local user,
never the system's cluster. As root, the cluster runs as the `postgres` user (initdb refuses
root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kristal.dev.processes import _spawn, _wait_ready, free_port, stop_process
from kristal.errors import StorageUnavailable

DATABASE = "prefect"


@dataclass
class PostgresProcess:
    pid: int
    port: int
    data_dir: Path

    @property
    def prefect_url(self) -> str:
        """The SQLAlchemy URL a Prefect server takes (`PREFECT_SERVER_DATABASE_CONNECTION_URL`)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{DATABASE}"


def find_pg_bin() -> Path | None:
    """The directory of Debian's newest installed `initdb` and `postgres`, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_cluster_user() -> str | None:
    return "postgres" if os.geteuid() == 0 else None


def start_postgres(data_dir: Path | None = None, *, log_path: Path | None = None,
                   ready_timeout: float = 60) -> PostgresProcess:
    """initdb (once) and start a cluster in `data_dir` on a free port; create the database.

    Every parent of `data_dir` must be traversable by the cluster's user; by default a new
    directory under the system's temp dir (pytest's own tmp dirs are private to root)."""
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="kristal-pg-"))
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    user = _as_cluster_user()
    data_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        shutil.chown(data_dir, user, user)
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.touch()
            shutil.chown(log_path, user, user)
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, user=user, group=user, cwd=data_dir)
    port = free_port()
    argv = [str(bin_dir / "postgres"), "-D", str(data_dir), "-h", "127.0.0.1", "-p", str(port),
            "-k", str(data_dir), "-c", "fsync=off", "-c", "max_connections=200"]
    proc = _spawn(argv, env=dict(os.environ), log_path=log_path, cwd=data_dir, user=user)

    def accepting() -> str | None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError as exc:
            return str(exc)
        ready = subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                               capture_output=True)
        return None if ready.returncode == 0 else "not accepting connections yet"

    _wait_ready(proc, "postgres", f"127.0.0.1:{port}", accepting, ready_timeout, log_path,
                poll=0.2)
    made = subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                           "-U", "postgres", DATABASE], capture_output=True, text=True)
    if made.returncode != 0 and "already exists" not in made.stderr:
        stop_process(proc.pid)
        raise StorageUnavailable(f"createdb {DATABASE} failed: {made.stderr.strip()}")
    return PostgresProcess(pid=proc.pid, port=port, data_dir=data_dir)


def stop_postgres(process: PostgresProcess, *, remove_data: bool = False) -> None:
    stop_process(process.pid, grace=10)
    if remove_data:
        shutil.rmtree(process.data_dir, ignore_errors=True)
