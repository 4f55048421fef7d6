"""Work-arounds for measured Prefect 3.9 costs, applied once when the `flows` package loads.

Flow-run heartbeats: a sync flow run ends by joining its heartbeat thread, which sleeps in whole
1 s steps before it looks at its stop event, so every flow run paid up to 1 s after its last
step (measured: a two-task flow took 1.13 s, 0.99 s of it after the flow function returned;
0.16 s with this fix). The heartbeats are kept; only the join is dropped, as Prefect's own
async engine does (`join_on_exit=False`): the thread is a daemon, checks the run's state
before every beat (no beat after a final state) and stops within a second on its own.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kristal.prefect_fixes")
_PATCHED = "__kristal_no_heartbeat_join__"


def no_heartbeat_join() -> bool:
    """Make sync flow runs stop their heartbeat thread without waiting on it; True if applied.

    Does nothing (and says so at debug level) if this Prefect has no such function, or one of
    another shape, so an upgrade degrades to Prefect's own behaviour, never to an error.
    """
    try:
        import prefect.flow_engine as engine
    except ImportError:  # pragma: no cover - prefect is a dependency
        return False
    original: Callable[..., Any] | None = getattr(engine, "_send_heartbeats", None)
    if original is None:
        log.debug("prefect.flow_engine._send_heartbeats not found: fix not applied")
        return False
    if getattr(original, _PATCHED, False):
        return True
    if "join_on_exit" not in inspect.signature(original).parameters:
        log.debug("prefect.flow_engine._send_heartbeats has no join_on_exit: fix not applied")
        return False

    def send_heartbeats(flow_engine: Any, join_on_exit: bool = True) -> Any:
        return original(flow_engine, join_on_exit=False)

    setattr(send_heartbeats, _PATCHED, True)
    setattr(engine, "_send_heartbeats", send_heartbeats)  # noqa: B010 - a patch of a private name
    return True
