"""Shared plumbing for the Prefect side: the per-process domain context (its store from the
environment, or from the `kristal-store` block `KRISTAL_STORE_BLOCK` names), and which failures
a task retries (storage hiccups only; a verification failure never gets better by retrying).
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from pydantic import BaseModel

from kristal.config import Settings, store_block_name
from kristal.context import Context
from kristal.errors import StorageUnavailable

_contexts: dict[tuple[Any, ...], Context] = {}


def settings_from_env() -> Settings:
    """The settings, the store a block's when `KRISTAL_STORE_BLOCK` names one (the block wins
    over `KRISTAL_S3_*` / `AWS_*`: `tasks.store_block`). Without it, no Prefect call."""
    name = store_block_name()
    if name is None:
        return Settings.from_env()
    from tasks.store_block import block_store_config

    return Settings.from_env(store=block_store_config(name))


def domain_context() -> Context:
    """One Context per process and configuration (re-read when the trust file changes)."""
    settings = settings_from_env()
    try:
        trust_mtime = os.stat(settings.trust_file).st_mtime_ns
    except OSError:
        trust_mtime = 0
    key = (settings, trust_mtime)
    if key not in _contexts:
        _contexts.clear()
        _contexts[key] = Context.from_settings(settings)
    return _contexts[key]


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only storage hiccups; a verification failure never gets better by retrying."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(exc, StorageUnavailable)


T = TypeVar("T", bound=BaseModel)


def log_outcome(outcome: T) -> T:
    """The run's outcome as one log line (`kristal-outcome {json}`): how a CLI that submitted
    the run to a deployment (`--via-deployment`) reads what it did."""
    from tasks.names import OUTCOME_LOG_PREFIX
    from tasks.run_log import run_logger

    run_logger().info(OUTCOME_LOG_PREFIX + outcome.model_dump_json())
    return outcome
