"""`kristalctl`: the stable command line (DESIGN §9). Scripts depend on its commands, exit codes
and `error: <code>: <message>` lines; a refusal never prints a traceback.

Commands live in one module per group (`config`, `documents`, `local`, `publishing`,
`operations`, `reading`); commands that need no Prefect (id, canon, keys, publish, status,
history, ...) import none, unless `KRISTAL_STORE_BLOCK` names a store block to load.
"""

from __future__ import annotations

import gc
import sys
import uuid

import typer

from flows.cli import (  # noqa: F401 (commands)
    config,
    documents,
    local,
    operations,
    production,
    publishing,
    reading,
    respond,
)
from flows.cli.app import app
from kristal.errors import EXIT_USAGE, KristalError

__all__ = ["app", "main"]


def main() -> None:
    try:
        _run()
    finally:
        # Everything alive now dies with the process: without this, the interpreter's final
        # collection walks Prefect's whole object graph (~0.7 s of every Prefect-backed
        # command). atexit handlers (Prefect's log and event flushes) still run first.
        gc.freeze()


def _run() -> None:
    try:
        # Without standalone mode, click hands a command's typer.Exit back as the return value.
        status = app(standalone_mode=False, prog_name="kristalctl")
    except KristalError as exc:
        typer.echo(exc.line(), err=True)
        sys.exit(exc.exit_status)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: activation_aborted: interrupted", err=True)
        sys.exit(1)
    except Exception as exc:
        usage = _usage_error(exc)
        if usage is not None:
            typer.echo(f"error: usage_invalid: {usage}", err=True)
            sys.exit(EXIT_USAGE)
        ref = uuid.uuid4().hex[:8]
        typer.echo(f"error: internal_error: {type(exc).__name__}: {exc} (ref {ref})", err=True)
        sys.exit(4)
    sys.exit(status if isinstance(status, int) else 0)


def _usage_error(exc: Exception) -> str | None:
    """The message of a command-line usage error (typer bundles its own click)."""
    kinds: list[type[Exception]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            kinds.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except ImportError:
            continue
    if isinstance(exc, tuple(kinds)):
        return " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    return None
