"""The UI board: one keyed table artifact (`kristal-board`) with a row per channel (what is
live, since when, by whom, checks, bake), updated by every operation for the channels it
touched and by the nightly reverify for every channel it looked at.

Each update reads the board's latest version, replaces the touched rows and writes a new
version (Prefect keeps every version, so the board's history is the fleet's history). Two runs
updating at once may each drop the other's row change from the newest version; the next update
of that channel, or the nightly reverify, writes it again. The board is a view: the bucket's
records are the truth, and a failed board write is logged, never a reason to fail a run.
"""

from __future__ import annotations

import json
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from tasks.run_log import run_logger

BOARD_KEY = "kristal-board"


def latest_board() -> list[dict[str, Any]]:
    """The rows of the board's newest version ([] before the first)."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[BOARD_KEY])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    if not found:
        return []
    data = found[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def update_board(rows: list[dict[str, Any]]) -> None:
    """Merge `rows` (keyed by `channel`) into the board and write its next version."""
    try:
        merged = {r.get("channel"): r for r in latest_board()}
        merged.update({r["channel"]: r for r in rows})
        table = [merged[c] for c in sorted(merged, key=str)]
        create_table_artifact(key=BOARD_KEY, table=table,
                              description=f"every channel, {len(table)}: what is live, checks "
                                          "and bake")
    except Exception as exc:  # a view: never fail the run for it
        run_logger().warning(f"board not updated: {type(exc).__name__}: {exc}")
