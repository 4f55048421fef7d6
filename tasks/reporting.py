"""Where an operation's reports go under Prefect: markdown and table artifacts attached to the
run, and a progress artifact that moves as a long operation advances (a fleet's waves).
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from kristal.operations.runner import Artifact
from tasks.names import artifact_key
from tasks.run_log import run_logger


def publish_artifact(artifact: Artifact) -> None:
    key = artifact_key(artifact.kind, artifact.scope)
    try:
        markdown = artifact.text()
    except Exception as exc:  # a view built from reads (a history): never fail the run for it
        run_logger().warning(f"{key} not written: {type(exc).__name__}: {exc}")
        return
    if markdown is not None:
        create_markdown_artifact(key=key, markdown=markdown,
                                 description=artifact.description)
    if artifact.table is not None:
        create_table_artifact(key=key, table=artifact.table, description=artifact.description)


class ProgressArtifact:
    """The fleet's progress artifact in the UI: the share of channels done, after each wave.

    Written by a thread of its own, in order, so the waves never wait on the artifact API
    (in line, its seven calls added 0.2-0.4 s to a 50-channel fleet); `close()` waits for the
    last write. A failed write is logged, never a reason to fail the fleet."""

    def __init__(self, key: str, description: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kristal-progress")
        self._writes: list[Future[Any]] = []
        self._id = self._submit(create_progress_artifact, 0.0, key=key, description=description)

    def _submit(self, fn: Any, *args: Any, **kwargs: Any) -> Future[Any]:
        write = self._pool.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        self._writes.append(write)
        return write

    def update(self, fraction: float, description: str) -> None:
        percent = round(100.0 * fraction, 1)
        self._submit(lambda: update_progress_artifact(self._id.result(), percent,
                                                      description=description))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        failed = next((f for f in self._writes if f.exception() is not None), None)
        if failed is not None:
            run_logger().warning(f"fleet progress artifact not written: "
                                          f"{failed.exception()}")
