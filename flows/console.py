"""What the CLI and the demo share about the console: Prefect's console logging kept off
stderr (one `error:` line is the contract), and one JSON document or a human text on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from kristal.config import verbose


def quiet_prefect() -> None:
    """Keep Prefect's console logging off stderr; logs still reach the Prefect API (the UI
    shows them), only the console copy is muted. `KRISTAL_VERBOSE` keeps it."""
    if verbose():
        startup_over()
        return
    # Prefect configures its logging once, when `prefect.main` is imported (by any flow
    # module): that, not a second `setup_logging` (~0.15 s), and its console handler muted.
    import prefect.main  # noqa: F401
    for logger in [logging.getLogger(), *logging.root.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                if handler.__class__.__name__ == "PrefectConsoleHandler":
                    handler.setLevel(logging.CRITICAL + 1)
    startup_over()


def startup_over() -> None:
    """The command has its heavy imports (the CLI starts with the cyclic collector off, see
    `flows.cli.run_command.main`): freeze what is alive now (it lives as long as the process,
    so later passes need not walk it) and collect again, for a command that may run for hours."""
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


_json_written = False
_runs: list[dict[str, str | None]] = []


def follow_runs(as_json: bool) -> None:
    """Say which Prefect run does the work, as soon as it starts: `run: NAME URL` on stdout
    (stderr is for the one `error:` line), and in the JSON document as `runs`."""
    from tasks.run_labels import on_notice, on_run

    def heard(run_id: str, name: str, url: str | None) -> None:
        _runs.append({"id": run_id, "name": name, "url": url})
        if not as_json:  # not print(): inside a run, log_prints sends that to the run's log
            sys.stdout.write(f"run: {name}  {url or run_id}\n")
            sys.stdout.flush()

    def told(message: str, url: str | None) -> None:
        if not as_json:
            sys.stdout.write(f"{message}: {url}\n" if url else f"{message}\n")
            sys.stdout.flush()

    on_run(heard)
    on_notice(told)


def runs_followed() -> list[dict[str, str | None]]:
    return list(_runs)


def json_written() -> bool:
    """Whether this process already printed its JSON document (a refusal then adds none)."""
    return _json_written


def emit(as_json: bool, document: Any, human: str | Callable[[], None]) -> None:
    """One JSON document (`--json`), or the human text (or what `human()` prints)."""
    global _json_written
    if as_json:
        if _runs and isinstance(document, dict) and "runs" not in document:
            document = {**document, "runs": list(_runs)}
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
        _json_written = True
    elif callable(human):
        human()
    else:
        print(human, flush=True)
