"""The server half of the warm path (`kristalctl warm`): a process that has imported Prefect,
the flows and every command once, and forks one child per command handed to it
(`flows.cli.warm_client` states the protocol's rules). A child is a fresh `kristalctl` in all
but its start-up: it takes the client's stdio, environment, working directory and arguments,
runs `flows.cli.run_command.main` and exits as a cold process would (threads joined, atexit
handlers run, stdio flushed).

The server itself never starts a thread (forking a threaded process is unsafe) and answers a
child's end on its pidfd; it refuses, and so sends the command back to run cold, a client of
another environment or user, and any command once the sources it imported have changed (it
then restarts itself when its children are done).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from flows.cli.warm_client import (
    SOURCE_ROOT,
    WARM_COMMANDS,
    fingerprint,
    private_dir,
    socket_path,
)
from kristal.errors import UsageInvalid

HEADER_LIMIT = 1 << 20
SOURCE_PACKAGES = ("flows", "tasks", "kristal", "deployments")


@dataclass
class Job:
    pid: int
    conn: socket.socket
    pidfd: int
    go: int  # write end of the pipe the child waits on
    command: str
    started: float = field(default_factory=time.monotonic)
    released: bool = False


def sources_signature() -> tuple[int, int]:
    """(file count, newest mtime in ns) of the Python sources a child would run."""
    count, newest = 0, 0
    for package in SOURCE_PACKAGES:
        for dirpath, _dirs, files in os.walk(SOURCE_ROOT / package):
            for name in files:
                if name.endswith(".py"):
                    count += 1
                    newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime_ns)
    return count, newest


class WarmServer:
    """Listens on the environment's socket and forks a child per accepted command."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.cwd = os.getcwd()
        self.fingerprint = fingerprint(os.environ, self.cwd)
        self.path = socket_path(os.environ, self.cwd)
        self.sources = sources_signature()
        self.jobs: dict[int, Job] = {}
        self.stopping = False
        self.restart = False
        self.selector = selectors.DefaultSelector()
        self.listener = self._listen()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _listen(self) -> socket.socket:
        if len(os.fsencode(self.path)) > 107:  # sun_path's limit
            raise UsageInvalid(f"the socket path {self.path} is too long for a Unix socket: "
                               "set XDG_RUNTIME_DIR to a shorter directory",
                               field="XDG_RUNTIME_DIR")
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not private_dir(self.path.parent):
            raise UsageInvalid(f"{self.path.parent} must be a directory of this user's, mode "
                               "0700", field="XDG_RUNTIME_DIR")
        if self.path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # left by a warm process that was killed
            else:
                raise UsageInvalid(f"a warm process already serves this environment at "
                                   f"{self.path}", field="warm")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        return listener

    def serve(self) -> bool:
        """Until SIGTERM or SIGINT (then the commands in hand finish): True when it should
        start again because its sources changed."""
        previous = signal.set_wakeup_fd(self._wake_w.fileno())
        handlers = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        try:
            while not (self.stopping and not self.jobs):
                for key, _events in self.selector.select(timeout=1.0):
                    try:
                        key.data(key.fileobj)
                    except Exception as exc:  # one request's trouble: the rest still served
                        self.say(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._close_listener()
            signal.set_wakeup_fd(previous)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return self.restart

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:  # a second one: the commands in hand are told to stop too
            for job in self.jobs.values():
                _kill(job.pid, signal.SIGTERM)
        self.stopping = True
        self.say(f"stopping ({signal.Signals(signum).name}): {len(self.jobs)} command(s) "
                 "in hand")

    def _drain_wake(self, sock: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            sock.recv(512)
        if self.stopping:
            self._close_listener()

    def _close_listener(self) -> None:
        if self.listener.fileno() < 0:
            return
        self.selector.unregister(self.listener)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _accept(self, listener: Any) -> None:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        fds: list[int] = []
        try:
            conn.settimeout(2.0)
            header, fds = self._read_header(conn)
            refusal = self._refusal(conn, header, fds)
            if refusal is not None:
                _reply(conn, {"cold": refusal})
                conn.close()
                return
            self._fork(conn, header, fds)
        except (OSError, ValueError) as exc:
            self.say(f"a client went away before its command started: {exc}")
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    @staticmethod
    def _read_header(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
        data, fds, _flags, _addr = socket.recv_fds(conn, HEADER_LIMIT, 3)
        while not data.endswith(b"\n"):
            more = conn.recv(HEADER_LIMIT)
            if not more or len(data) > HEADER_LIMIT:
                raise ValueError("no complete request")
            data += more
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise ValueError("not a request")
        return doc, list(fds)

    def _refusal(self, conn: socket.socket, header: dict[str, Any],
                 fds: list[int]) -> str | None:
        """Why this request must run cold instead (None: it may run here)."""
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  struct.calcsize("3i")))[1]
        argv, env, cwd = header.get("argv"), header.get("env"), header.get("cwd")
        if uid != os.getuid():
            return "another user's command"
        if self.stopping:
            return "the warm process is stopping"
        if len(fds) != 3:
            return "no stdin, stdout and stderr came with the request"
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
                and argv[0] in WARM_COMMANDS):
            return "not a command the warm process runs"
        if not (isinstance(env, dict) and isinstance(cwd, str)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            return "a malformed request"
        if fingerprint(env, cwd) != self.fingerprint:
            return "another environment"
        if sources_signature() != self.sources:
            self.restart = self.stopping = True
            self.say("the sources changed: restarting once the commands in hand are done")
            return "the sources changed since the warm process started"
        if threading.active_count() != 1:
            return "the warm process has threads running (it forks only without)"
        return None

    def _fork(self, conn: socket.socket, header: dict[str, Any], fds: list[int]) -> None:
        go_r, go_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:
            os.close(go_r)
            os.close(go_w)
            raise
        if pid == 0:  # the child never returns into the server's code, whatever happens
            try:
                os.close(go_w)
                self._close_in_child(conn)
            except BaseException:
                os._exit(4)
            run_child(go_r, fds, header)
        os.close(go_r)
        try:
            _reply(conn, {"child": pid})
        except OSError:  # the client gave up waiting and runs the command itself
            os.close(go_w)  # so the child exits without running anything
            go_w = -1
        job = Job(pid=pid, conn=conn, pidfd=os.pidfd_open(pid), go=go_w,
                  command=" ".join(header["argv"][:2]))
        self.jobs[pid] = job
        self.selector.register(job.pidfd, selectors.EVENT_READ, lambda _fd: self._ended(job))
        if go_w >= 0:
            self.selector.register(conn, selectors.EVENT_READ, lambda _c: self._heard(job))
            self.say(f"{job.command} → child {pid}")

    def _close_in_child(self, conn: socket.socket) -> None:
        self.selector.close()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()
        conn.close()
        for job in self.jobs.values():
            job.conn.close()
            os.close(job.pidfd)
            if job.go >= 0:
                os.close(job.go)

    def _heard(self, job: Job) -> None:
        """The client's one byte ("go") or its end: before "go", the child never starts;
        after it, a client gone (killed) takes its command with it."""
        try:
            data = job.conn.recv(1)
        except OSError:
            data = b""
        if data == b"g" and not job.released:
            job.released = True
            with contextlib.suppress(OSError):  # a child already gone: its end reports it
                os.write(job.go, b"g")
            return
        self.selector.unregister(job.conn)
        if not job.released:
            os.close(job.go)  # EOF: the child exits without running anything
            job.go = -1
        else:
            self.say(f"child {job.pid}: its client went away; stopping it")
            _kill(job.pid, signal.SIGTERM)

    def _ended(self, job: Job) -> None:
        _pid, status = os.waitpid(job.pid, 0)
        code = os.waitstatus_to_exitcode(status)  # -N: killed by signal N
        answer = {"signal": -code} if code < 0 else {"exit": code}
        self.selector.unregister(job.pidfd)
        os.close(job.pidfd)
        if job.go >= 0:
            os.close(job.go)
        with contextlib.suppress(OSError):
            _reply(job.conn, answer)
        if job.conn.fileno() >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(job.conn)
            job.conn.close()
        del self.jobs[job.pid]
        how = f"killed by signal {-code}" if code < 0 else f"exited {code}"
        self.say(f"child {job.pid} ({job.command}) {how} after "
                 f"{time.monotonic() - job.started:.2f} s")


def run_child(go: int, fds: list[int], header: dict[str, Any]) -> NoReturn:
    """In the forked child: wait for "go", become the client's command, exit as it does."""
    status = 4
    try:
        os.setsid()  # the warm process's terminal signals are not the command's
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        released = os.read(go, 1) == b"g"
        os.close(go)
        if not released:
            os._exit(0)
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        # The same stream objects, now on the client's descriptors, buffered as Python
        # would have buffered them there.
        sys.stdout.reconfigure(line_buffering=os.isatty(1))  # type: ignore[union-attr]
        os.environ.clear()
        os.environ.update(header["env"])
        os.chdir(header["cwd"])
        sys.argv = ["kristalctl", *header["argv"]]
        status = _run_command()
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            sys.stderr.write(f"error: internal_error: the warm child failed: "
                             f"{type(exc).__name__}: {exc}\n")
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(status)


def _run_command() -> int:
    """`kristalctl`'s main as a process runs it, down to what the interpreter does after:
    non-daemon threads joined, then atexit handlers (Prefect's log and event flushes)."""
    import atexit

    from flows.cli.run_command import main  # every command: preloaded (`flows.cli.command_line`)

    try:
        main()
        status = 0
    except SystemExit as exc:
        status = _exit_code(exc.code)
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    return status


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


def _reply(conn: socket.socket, doc: dict[str, Any]) -> None:
    conn.sendall(json.dumps(doc).encode() + b"\n")


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def restart_argv() -> list[str]:
    return [sys.executable, "-m", "flows.cli", *sys.argv[1:]]
