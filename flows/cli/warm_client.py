"""The client half of the warm path: hand a command to a `kristalctl warm` process of the same
environment, which forks a child that already has Prefect and the commands imported and runs
the command there on this process's own stdin, stdout and stderr. Standard library only:
everything it imports is paid by every command.

The rules: a command is handed over only when a warm process of *exactly* this environment
(variables, interpreter, the Prefect config files of this directory) listens in a private
socket directory; anything else (none running, a refusal, no answer within 3 s) runs the
command here instead. The child starts only on this side's "go", sent once and only after the
child is known, so a command is never run twice; once it is sent, this process forwards its
signals to the child and exits as the child did. A warm process lost mid-command is
`commit_unknown` (exit 4): the command ran, its outcome is not known here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

# What a release manager runs under pressure: the operations and the reads. Not the
# long-running (`respond`, `serve`, `warm`, a `bake`: its own process, for minutes), not the
# local stack's or set-up commands.
WARM_COMMANDS = frozenset({
    "activate", "rollback", "downgrade", "fleet-activate", "reverify",
    "report-failure", "status", "history", "channels", "releases",
})
# Set per shell or per terminal, never read by a command.
VOLATILE = frozenset({
    "_", "PWD", "OLDPWD", "SHLVL", "COLUMNS", "LINES", "PS1", "PS2", "PROMPT_COMMAND",
    "TERM_SESSION_ID", "WINDOWID", "SSH_TTY", "TMUX_PANE", "KRISTAL_NO_WARM",
})
# Files Prefect reads its settings from, relative to the working directory.
CWD_CONFIG = ("prefect.toml", ".env", "pyproject.toml")
ANSWER_TIMEOUT_S = 3.0  # a warm process that does not answer by then: run it here
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def fingerprint(env: dict[str, str] | os._Environ[str], cwd: str) -> str:
    """What a command's behaviour may depend on before it runs: the interpreter, the source
    tree, every environment variable but the volatile ones, and the Prefect config files of
    the working directory (Prefect reads them once, when it is imported)."""
    digest = hashlib.sha256()
    for part in (sys.executable, sys.version, str(SOURCE_ROOT)):
        digest.update(part.encode() + b"\0")
    for key in sorted(env):
        if key not in VOLATILE:
            digest.update(f"{key}={env[key]}".encode("utf-8", "surrogateescape") + b"\0")
    for name in CWD_CONFIG:
        try:
            digest.update(Path(cwd, name).read_bytes()[: 1 << 20])
        except OSError:
            digest.update(b"-")
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def socket_dir(env: dict[str, str] | os._Environ[str]) -> Path:
    """The per-user directory warm processes listen in (mode 0700)."""
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "kristalctl"
    return Path("/tmp") / f"kristalctl-{os.getuid()}"


def private_dir(path: Path) -> bool:
    """Ours alone: a real directory owned by this user that nobody else may enter."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
            and not info.st_mode & 0o077)


def socket_path(env: dict[str, str] | os._Environ[str], cwd: str) -> Path:
    return socket_dir(env) / f"warm-{fingerprint(env, cwd)}.sock"


def run_warm(argv: list[str]) -> int | None:
    """The command's exit status, run by a warm process; None: run it here."""
    if not argv or argv[0] not in WARM_COMMANDS or os.environ.get("KRISTAL_NO_WARM"):
        return None
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    path = socket_path(os.environ, cwd)
    if not private_dir(path.parent) or not path.exists():
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(ANSWER_TIMEOUT_S)
        conn.connect(str(path))
        header = {"argv": argv, "env": dict(os.environ), "cwd": cwd}
        socket.send_fds(conn, [json.dumps(header).encode() + b"\n"], [0, 1, 2])
        answer = _read_line(conn)
        child = answer.get("child")
        if not isinstance(child, int):
            conn.close()
            _say(f"not warm ({answer.get('cold', answer)}); running here")
            return None
        try:  # before "go" the child waits: this is its pid, not a reused one
            ended_fd: int | None = os.pidfd_open(child)
        except OSError:
            ended_fd = None
        # Committed from here: the child runs on our "go" and this process only relays.
        _forward_signals(child)
    except (OSError, ValueError) as exc:
        conn.close()
        _say(f"not warm ({type(exc).__name__}: {exc}); running here")
        return None
    except KeyboardInterrupt:  # Ctrl-C before "go": nothing ran (typer's status for it)
        conn.close()
        return 130
    try:
        conn.settimeout(None)
        conn.sendall(b"g")
        ended = _read_line(conn)
    except (OSError, ValueError):
        ended = {}
    finally:
        conn.close()
    status, killed_by = ended.get("exit"), ended.get("signal")
    if isinstance(killed_by, int):
        _die_of(killed_by)
    if isinstance(status, int):
        return status
    _wait_gone(child, ended_fd)
    sys.stderr.write("error: commit_unknown: the warm process went away while it ran the "
                     f"command (child {child}); its outcome is unknown here: check with "
                     "kristalctl status\n")
    return 4


def exit_as(status: int) -> NoReturn:
    sys.stdout.flush()
    os._exit(status)


def _die_of(signum: int) -> NoReturn:
    """End as the child did, killed by `signum` (the shell sees the same)."""
    sys.stdout.flush()
    try:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    except (OSError, ValueError):
        pass
    os._exit(128 + signum)


def _read_line(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            raise ValueError("the warm process closed the connection")
        data += chunk
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError("not a warm process's answer")
    return doc


def _forward_signals(child: int) -> None:
    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)


def _wait_gone(pid: int, ended_fd: int | None) -> None:
    """Until the child has ended: its pidfd turns readable then, even while nobody reaps it
    (an orphan under a PID 1 that does not)."""
    if ended_fd is not None:
        select.select([ended_fd], [], [])
        return
    while True:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)


def _say(message: str) -> None:
    if os.environ.get("KRISTAL_VERBOSE"):
        sys.stderr.write(f"kristalctl: {message}\n")
