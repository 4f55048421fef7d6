"""Every `kristalctl` option and argument says what it does, and every command's docstring shows
an invocation (`Example: kristalctl ...`), like `helm` and `kubectl argo rollouts`."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from typer.models import ArgumentInfo, OptionInfo
from typer.utils import get_params_from_function

REPO_ROOT = Path(__file__).resolve().parent.parent
_EXAMPLE = re.compile(r"\n\s*\n\s*Examples?: [^\n]*kristalctl ")


def _commands(app: typer.Typer, prefix: str = "") -> Iterator[tuple[str, Callable[..., Any]]]:
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__.replace("_", "-")
        yield prefix + name, command.callback
    for group in app.registered_groups:
        assert group.typer_instance is not None and group.name
        yield from _commands(group.typer_instance, f"{prefix}{group.name} ")


def _all_commands() -> list[tuple[str, Callable[..., Any]]]:
    from flows.cli.command_line import app

    found = list(_commands(app))
    assert len(found) >= 25, [name for name, _ in found]  # the import registered them all
    return found


def _callbacks() -> Iterator[tuple[str, Callable[..., Any]]]:
    """Commands, plus the app's own callback (`--version`)."""
    from flows.cli.command_line import app

    yield from _all_commands()
    if app.registered_callback is not None and app.registered_callback.callback is not None:
        yield "(kristalctl)", app.registered_callback.callback


def test_every_option_and_argument_has_help() -> None:
    missing = []
    for name, callback in _callbacks():
        for param_name, param in get_params_from_function(callback).items():
            info = param.default
            # A bare parameter (no typer.Option/Argument) is an argument without help.
            if not isinstance(info, OptionInfo | ArgumentInfo) or not (info.help or "").strip():
                missing.append(f"{name}: {param_name}")
    assert not missing, f"options/arguments without help=: {missing}"


def test_help_has_no_angle_brackets() -> None:
    """`<...>` renders badly in the Prefect UI's forms where a text is shared: use CAPS."""
    bad = []
    for name, callback in _callbacks():
        for param_name, param in get_params_from_function(callback).items():
            info = param.default
            if isinstance(info, OptionInfo | ArgumentInfo) and re.search(r"<\w", info.help or ""):
                bad.append(f"{name}: {param_name}: {info.help}")
    assert not bad, bad


def test_every_command_docstring_has_an_example() -> None:
    missing = [name for name, callback in _all_commands()
               if not _EXAMPLE.search(inspect.getdoc(callback) or "")]
    assert not missing, f"commands without an 'Example: kristalctl ...' paragraph: {missing}"


def test_activate_help_shows_the_flag_help_and_an_example() -> None:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("KRISTAL_VERBOSE", None)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "activate", "--help"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "Release id from the channel's index." in out, out
    assert re.search(r"^\s*Example: kristalctl activate ", out, re.MULTILINE), out
