"""Progress bars on a terminal (rich, on stderr, gone when done) for the domain's meters
(`kristal.progress`): publish, download, index build, a fleet's waves. Nothing when stderr is
not a terminal, with `--json`, or with `KRISTAL_NO_PROGRESS=1`.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any

from kristal import progress


def install_bars(as_json: bool) -> bool:
    """Show the meters as bars if a person is watching; whether they will be."""
    if as_json or not sys.stderr.isatty() or os.environ.get("KRISTAL_NO_PROGRESS") == "1":
        progress.install(None)  # a warm process's child: not the bars of `kristalctl warm`
        return False
    bars = _Bars()
    progress.install(bars.meter)
    atexit.register(bars.stop)
    return True


class _Bars:
    def __init__(self) -> None:
        self._progress: Any = None
        self._lock = threading.Lock()

    def _started(self) -> Any:
        with self._lock:
            if self._progress is None:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self._progress = Progress(
                    TextColumn("{task.description}"), BarColumn(), _amount_column(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                    # Lines printed meanwhile go above the bars only when stdout is the same
                    # terminal; a redirected stdout keeps every byte of its own.
                    redirect_stdout=sys.stdout.isatty(), redirect_stderr=False)
                self._progress.start()
            return self._progress

    def meter(self, description: str, total: float | None, unit: str) -> progress.Meter:
        bars = self._started()
        return _Bar(bars, bars.add_task(description, total=total, unit=unit))

    def stop(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None


class _Bar:
    def __init__(self, bars: Any, task_id: Any) -> None:
        self._bars, self._id = bars, task_id

    def advance(self, amount: float) -> None:
        self._bars.advance(self._id, amount)

    def close(self) -> None:
        self._bars.remove_task(self._id)


def _amount_column() -> Any:
    from rich.filesize import decimal
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        """`12.3/45.6 MB` for bytes, `3/10 channels` otherwise."""

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "")
            total = "?" if task.total is None else task.total
            if unit == "bytes":
                shown = f"{decimal(int(task.completed))}/" + (
                    "?" if task.total is None else decimal(int(task.total)))
            else:
                shown = f"{task.completed:g}/{total:g} {unit}".strip() if task.total else (
                    f"{task.completed:g} {unit}")
            return Text(shown)

    return Amount()
