"""The logger of the run this code works for: the flow or task run's own (its lines reach the
UI), else the `kristal` logger (outside any run: a CLI command's set-up, a break-glass path).
"""

from __future__ import annotations

import logging
from typing import Any


def run_logger() -> Any:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("kristal")
