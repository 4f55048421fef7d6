"""Running one `kristalctl` command: `main` parses the command line onto `app` (whatever command
modules were imported onto it, `flows.cli.command_line` imports them all) and turns every
outcome into DESIGN §9's output and exit status: one `error: <code>: <message>` line on
stderr, never a traceback.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import uuid
from typing import NoReturn

import typer

from flows.cli.app import app
from flows.console import json_written
from kristal.errors import EXIT_USAGE, Infrastructure, KristalError

__all__ = ["main"]


def main() -> None:
    # A command's start-up is imports (Prefect's alone ~1 s): the cyclic collector's passes
    # over the growing heap cost ~0.2 s of it and free nothing. It is on again, over a frozen
    # heap, once a Prefect-backed command has its imports (`flows.console.startup_over`); a
    # command without Prefect is short and runs without it.
    gc.disable()
    # httpcore imports trio (~0.1 s) when it is installed, only to tell whether it runs under
    # it; nothing here does. Without it, httpcore takes the asyncio/anyio path it always took.
    sys.modules.setdefault("trio", None)  # type: ignore[arg-type]
    try:
        _run()
    finally:
        # Everything alive now dies with the process: without this, the interpreter's final
        # collection walks Prefect's whole object graph (~0.7 s of every Prefect-backed
        # command). atexit handlers (Prefect's log and event flushes) still run first.
        gc.freeze()


_every: tuple[list[typer.models.CommandInfo], list[typer.models.TyperInfo]] | None = None


def _only_the_invoked_command(argv: list[str]) -> None:
    """Typer builds a click command for every registered one on each call, annotations and all
    (~0.08 s for ours): keep only the one named on the command line. With no name (help,
    `--version`, shell completion) or one not found (its error lists them all), keep all."""
    global _every
    if _every is None:  # the first call, before any trimming
        _every = (list(app.registered_commands), list(app.registered_groups))
    # A warm process's child runs this again, over the trimmed lists of `kristalctl warm`.
    app.registered_commands[:], app.registered_groups[:] = _every
    name = argv[0] if argv else ""
    if not name or name.startswith("-"):
        return
    commands = [c for c in app.registered_commands
                if (c.name or (c.callback.__name__ if c.callback else "")) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if commands or groups:
        app.registered_commands[:] = commands
        app.registered_groups[:] = groups


def _run() -> None:
    _only_the_invoked_command(sys.argv[1:])
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_interrupt)
    from flows.cli.progress_bars import install_bars

    install_bars("--json" in sys.argv[1:])
    try:
        # Without standalone mode, click hands a command's typer.Exit back as the return value.
        status = app(standalone_mode=False, prog_name="kristalctl")
    except KristalError as exc:
        _fail(exc.code, exc.message, exc.exit_status, live=not isinstance(exc, Infrastructure))
    except typer.Exit as exc:
        status = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _fail("activation_aborted", "interrupted", 1, live=True)
    except Exception as exc:
        usage = _usage_error(exc)
        if usage is not None:
            _fail("usage_invalid", usage, EXIT_USAGE, live=False)
        ref = uuid.uuid4().hex[:8]
        _fail("internal_error", f"{type(exc).__name__}: {exc} (ref {ref})", 4, live=False)
    if _interrupted:  # typer turns the KeyboardInterrupt into a 130 (returned or raised)
        _fail("activation_aborted", "interrupted", 1, live=True)
    sys.exit(status if isinstance(status, int) else 0)


_interrupted = False


def _on_interrupt(_signum: int, _frame: object) -> None:
    """Ctrl-C: Python's KeyboardInterrupt (Prefect marks the run Crashed by it), noted so the
    command ends as DESIGN §9 says (`activation_aborted`, exit 1), not with typer's 130."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _fail(code: str, message: str, status: int, *, live: bool) -> NoReturn:
    """The one `error:` line on stderr and the exit status; with `--json`, also one JSON
    document on stdout (unless the command printed its own): the code, the message, the exit
    status, for a refusal, conflict or rollback, what is live in the command's channel, and
    the Prefect runs it started (`runs`)."""
    typer.echo(f"error: {code}: {message}", err=True)
    if "--json" in sys.argv[1:] and not json_written():
        doc: dict[str, object] = {"ok": False, "error": {"code": code, "message": message,
                                                         "exit_status": status}}
        if live:
            doc.update(_live_in_channel())
        from flows.console import runs_followed

        if runs_followed():
            doc["runs"] = runs_followed()
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.exit(status)


def _live_in_channel() -> dict[str, object]:
    """`channel_id` and `live` (the pointer's release, sequence and activation) of the first
    argument that is a channel id; nothing if there is none or it cannot be read."""
    from kristal.formats.models import validate_channel_id

    for arg in sys.argv[2:]:
        try:
            channel = validate_channel_id(arg)
        except Exception:
            continue
        try:
            from kristal.channel import records
            from tasks.runtime import domain_context

            record = records.read_pointer(domain_context(), channel).record
        except Exception:
            return {"channel_id": channel}
        live = None if record is None else {
            "release_id": record.active.release_id, "sequence": record.sequence,
            "activation_id": record.activation_id, "kind": record.kind}
        return {"channel_id": channel, "live": live}
    return {}


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
