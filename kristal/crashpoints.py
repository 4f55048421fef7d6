"""Named crash points for kill -9 tests (DESIGN §6 invariant 5).

Setting `KRISTAL_CRASH_AT=<name>` makes the process SIGKILL itself when it reaches that point,
exactly as an OOM kill or a lost node would: no cleanup, no `finally`, no flushed buffers.
With `KRISTAL_CRASH_ARMED_FILE=<path>` it crashes only while that file exists, and removes it
(so a test can arm one crash in a long-running server).

Hold points, for tests that act on the world mid-operation (restart the Prefect server, kill
a worker host): with `KRISTAL_HOLD_DIR=<dir>`, a process reaching point P while `<dir>/P`
exists renames it to `<dir>/P.held.<pid>` (one process takes it) and waits there until that
file is deleted.
"""

from __future__ import annotations

import os
import signal
import time

from kristal.config import crash_request, hold_dir

POINTS = (
    "after_verify",  # verified, nothing staged
    "after_stage",  # staged, pointer untouched
    "before_switch",  # record built, conditional write not sent
    "after_switch",  # pointer written, history not yet
    "after_history",  # pointer + history, checks not run
    "after_checks",  # checks measured, outcome not yet written
    "before_rollback",  # failed check recorded, quarantine/rollback not yet
)


def crash_point(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    _hold(name)
    at, armed = crash_request()
    if at != name:
        return
    if armed:
        try:
            os.unlink(armed)  # atomic: exactly one process consumes an armed crash
        except FileNotFoundError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def _hold(name: str) -> None:
    where = hold_dir()
    if not where:
        return
    armed, held = os.path.join(where, name), os.path.join(where, f"{name}.held.{os.getpid()}")
    try:
        os.rename(armed, held)
    except FileNotFoundError:
        return
    while os.path.exists(held):
        time.sleep(0.1)
