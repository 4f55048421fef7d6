"""`kristalctl warm`: keep a process with Prefect and every command imported, so the
operations and reads this environment runs skip their start-up (`flows.cli.warm_server`)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from flows.cli.app import app


@app.command("warm")
def warm_command() -> None:
    """Serve this environment's commands from a warm process: while it runs, `activate`,
    `rollback`, `downgrade`, `fleet-activate`, `reverify`, `report-failure`,
    `status`, `history`, `channels` and `releases` started with exactly this environment
    (variables and working directory's Prefect files) run in a child forked from it, with the
    same output, exit status and records, without paying Python's and Prefect's start-up.
    Any other environment, or KRISTAL_NO_WARM=1, runs as before. Runs until SIGTERM or
    Ctrl-C, then finishes the commands in hand; restarts itself when the sources change.

    Example: eval "$(kristalctl dev up)" && kristalctl warm &
    """
    from flows.cli.warm_server import WarmServer, restart_argv

    def say(message: str) -> None:
        print(f"warm: {message}", file=sys.stderr, flush=True)

    from flows.console import startup_over

    server = WarmServer(say)  # first: a second warm process of this environment stops here
    preload(say)
    startup_over()  # children share the frozen heap copy-on-write
    say(f"ready (pid {os.getpid()}) at {server.path}")
    if server.serve():
        say("restarting on the changed sources")
        os.execv(sys.executable, restart_argv())
    say("stopped")


def preload(say: Callable[[str], None]) -> None:
    """What commands import lazily, imported once here so that no child pays it."""
    import importlib

    started = time.perf_counter()
    for name in PRELOAD:
        importlib.import_module(name)
    _warm_store_client()
    say(f"preloaded {len(sys.modules)} modules in {time.perf_counter() - started:.2f} s")


def _warm_store_client() -> None:
    """Build the environment's S3 client once (botocore parses its service model per
    session, ~0.15 s); it opens no connection until a child uses it."""
    from kristal.config import store_config
    from kristal.errors import KristalError
    from kristal.store.s3 import ObjectStore

    try:
        config = store_config()
    except KristalError:
        return
    store = ObjectStore(config)  # the clients a command's store uses: reads, then writes
    store._cond_client  # noqa: B018


PRELOAD = (
    "flows.cli.command_line",
    "flows.activate", "flows.rollback", "flows.downgrade", "flows.fleet", "flows.bake",
    "flows.reverify",
    "prefect.flow_engine", "prefect.task_engine",
)
