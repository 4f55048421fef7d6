"""`kristalctl` in full: every command group registered on `app`, and `main`, which runs one
command (`flows.cli.run_command`). Scripts depend on its commands, exit codes and
`error: <code>: <message>` lines (DESIGN §9); a refusal never prints a traceback.

Commands live in one module per group (`config`, `documents`, `local`, `publishing`,
`operations`, `reading`, `production`, `respond`, `warm`); commands that need no Prefect (id,
canon, keys, publish, status, history, ...) import none, unless `KRISTAL_STORE_BLOCK` names a
store block to load.
"""

from __future__ import annotations

from flows.cli import (  # noqa: F401 (commands)
    config,
    documents,
    local,
    operations,
    production,
    publishing,
    reading,
    respond,
    warm,
)
from flows.cli.app import app
from flows.cli.run_command import main

__all__ = ["app", "main"]
