"""The `kristalctl` command groups and the option types every command shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kristal.errors import UsageInvalid

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Release activation for Kristal data releases.",
)
dev_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The local stack.")
keys_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Signing keys.")
app.add_typer(dev_app, name="dev")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            shown = version("kristal-activate")
        except PackageNotFoundError:
            shown = "unknown (not installed)"
        typer.echo(f"kristalctl {shown}")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")]
        = False) -> None:
    """Release activation for Kristal data releases."""
app.add_typer(keys_app, name="keys")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
def _channel_argument(value: str) -> str:
    """A malformed channel id on the command line is a usage error (exit 2), checked before
    anything is read; in a document it stays `path_invalid`."""
    from kristal.errors import PathInvalid
    from kristal.formats.models import validate_channel_id

    try:
        return validate_channel_id(value)
    except PathInvalid as exc:
        raise UsageInvalid(exc.message) from None


Channel = Annotated[str, typer.Argument(help="tenant/environment/region, e.g. acme/prod/eu-west-1",
                                        callback=_channel_argument)]
OperatorOpt = Annotated[str, typer.Option("--operator", help="Who is doing this (recorded).")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded).")]
CorrelationOpt = Annotated[str | None, typer.Option(
    "--correlation-id", help="Ties the run to a ticket or incident (default: the run id).")]


def domain_context() -> Any:
    """The command's context: its store from the environment, or from the store block
    `KRISTAL_STORE_BLOCK` names (a missing one is `usage_invalid` before anything is read)."""
    from tasks.runtime import domain_context as shared

    return shared()


def store_preflight() -> None:
    """Before a flow runs in this process: with `KRISTAL_STORE_BLOCK` set, load the block now,
    so a missing one fails the command (exit 2) rather than a flow run (which the automations
    would answer). Without it, the environment's store settings, checked the same way (no
    Prefect call): a run that could only fail on them is never created."""
    from kristal.config import store_block_name, store_config

    name = store_block_name()
    if name is not None:
        from tasks.store_block import block_store_config

        block_store_config(name)
    else:
        store_config()


def publisher_keys() -> Any:
    from kristal.config import key_dir
    from kristal.publish.publisher import load_publisher_keys

    return load_publisher_keys(key_dir())


def request_model(model: Any, **fields: Any) -> Any:
    """A flow request from the command's options; a validation error is usage (exit 2)."""
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageInvalid(f"{loc}: {first['msg']}") from None


def read_file(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise UsageInvalid(f"cannot read {file}: {exc.strerror}") from None
