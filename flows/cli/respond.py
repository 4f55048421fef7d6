"""`kristalctl respond`: the failure responder, a long-running process (no deployment) that
rolls back on `kristal.check.failed` in-process (`tasks.responder`). One line per report on
stdout (`--json`: one JSON document per line); the stream's comings and goings on stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from flows.cli.app import app
from flows.console import quiet_prefect
from kristal.errors import KristalError, UsageInvalid

if TYPE_CHECKING:
    from tasks.responder import Responder


@app.command("respond")
def respond_command(
    channel: Annotated[list[str] | None, typer.Option(
        "--channel", help="Only this channel's reports (repeatable; default: every channel).",
    )] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON document per report handled, one per line.")] = False,
) -> None:
    """Roll back on every kristal.check.failed, in this process, guarded by the reported
    activation (the automation stays as the fallback). Runs until SIGTERM or Ctrl-C, then
    finishes the rollbacks in hand.

    Example: kristalctl respond --channel acme/prod/eu-west-1 --json
    """
    if not os.environ.get("PREFECT_API_URL"):
        raise UsageInvalid("respond needs PREFECT_API_URL: the server whose events to follow",
                           field="PREFECT_API_URL")
    from kristal.formats.models import validate_channel_id

    try:
        channels = [validate_channel_id(c) for c in channel or []]
    except KristalError as exc:
        raise UsageInvalid(f"--channel: {exc.message}", field="channel") from None
    quiet_prefect()
    from flows.respond import roll_back, warm_up
    from tasks.responder import Handled, Responder

    def handled(outcome: Handled) -> None:
        text = json.dumps(outcome.doc(), default=str) if as_json else outcome.line()
        print(text, flush=True)

    def status(message: str) -> None:
        print(f"respond: {message}", file=sys.stderr, flush=True)

    warm_up(channels)
    responder = Responder(handle=roll_back, on_handled=handled, on_status=status,
                          channel_ids=channels)
    asyncio.run(_until_signalled(responder))
    status("stopped")


async def _until_signalled(responder: Responder) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await responder.run(stop)
