"""`kristalctl`, the stable command line (DESIGN §9). `main` hands the command to a warm
process when one runs for this environment (`flows.cli.warm_client`) and otherwise runs it here
(`flows.cli.command_line`); the output, exit status and records are the same either way.
"""

from __future__ import annotations

import sys

__all__ = ["main"]  # the commands: `flows.cli.command_line.app`


def main() -> None:
    from flows.cli.warm_client import exit_as, run_warm

    status = run_warm(sys.argv[1:])
    if status is not None:
        exit_as(status)
    from flows.cli.command_line import main as run_here

    run_here()

