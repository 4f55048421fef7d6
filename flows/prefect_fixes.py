"""Work-arounds for measured Prefect 3.9 costs, applied once when the `flows` package loads.

Flow-run heartbeats: a sync flow run ends by joining its heartbeat thread, which sleeps in whole
1 s steps before it looks at its stop event, so every flow run paid up to 1 s after its last
step (measured: a two-task flow took 1.13 s, 0.99 s of it after the flow function returned;
0.16 s with this fix). The heartbeats are kept; only the join is dropped, as Prefect's own
async engine does (`join_on_exit=False`): the thread is a daemon, checks the run's state
before every beat (no beat after a final state) and stops within a second on its own.

Flow-run parameters: see `parameters_without_fastapi`.
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


_PATCHED_PARAMS = "__kristal_parameters_without_fastapi__"


def parameters_without_fastapi() -> bool:
    """Serialize pydantic-model parameters of a flow run without importing FastAPI; True if
    applied.

    Prefect encodes each parameter with FastAPI's `jsonable_encoder`, whose first import (the
    whole of FastAPI and Starlette) cost every CLI flow run 0.2-0.4 s. For a pydantic model
    (every parameter of our flows) that encoder is `model_dump(mode="json", by_alias=True)`;
    any other value still goes through Prefect's own method.
    """
    try:
        from prefect.flows import Flow
    except ImportError:  # pragma: no cover - prefect is a dependency
        return False
    original: Callable[..., Any] | None = getattr(Flow, "serialize_parameters", None)
    if original is None:
        log.debug("prefect.flows.Flow.serialize_parameters not found: fix not applied")
        return False
    if getattr(original, _PATCHED_PARAMS, False):
        return True
    if list(inspect.signature(original).parameters) != ["self", "parameters"]:
        log.debug("Flow.serialize_parameters has another signature: fix not applied")
        return False
    from pydantic import BaseModel

    def serialize_parameters(self: Any, parameters: dict[str, Any]) -> dict[str, Any]:
        models = {k: v for k, v in parameters.items() if isinstance(v, BaseModel)}
        rest = original(self, {k: v for k, v in parameters.items() if k not in models})
        done = {k: v.model_dump(mode="json", by_alias=True) for k, v in models.items()}
        return {k: done[k] if k in done else rest[k] for k in parameters if k in done or k in rest}

    setattr(serialize_parameters, _PATCHED_PARAMS, True)
    setattr(Flow, "serialize_parameters", serialize_parameters)  # noqa: B010 - a patch
    return True


def apply() -> None:
    """Every fix of this module (each one a no-op on a Prefect it does not fit)."""
    no_heartbeat_join()
    parameters_without_fastapi()
