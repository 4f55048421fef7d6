"""`kristalctl status`, `history` and `channels`: what is live in a channel, its every
record, and what is live in every channel of the bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli.app import Channel, JsonOpt, app, domain_context
from flows.console import emit


def _require_published(ctx: Any, channel: str) -> None:
    """A channel with nothing live must at least have an index: else it is unknown here (a
    typo, or another bucket), which is an error, not an empty answer."""
    from kristal.errors import ChannelUnknown
    from kristal.formats import layout

    if ctx.store.head(layout.channel_index(channel)) is None:
        config = ctx.store.config
        where = f"s3://{config.bucket}/{config.prefix.strip('/') + '/' if config.prefix else ''}"
        raise ChannelUnknown(f"{channel} is not published in {where}: no channel index and "
                             "nothing ever live there")


@app.command("status")
def status_command(channel: Channel, as_json: JsonOpt = False) -> None:
    """The live record of a channel.

    Example: kristalctl status acme/prod/eu-west-1 --json
    """
    from kristal.channel import records
    from kristal.channel.bakes import bake_status

    ctx = domain_context()
    state = records.read_pointer(ctx, channel)
    if state.record is None:
        _require_published(ctx, channel)
        emit(as_json, {"channel_id": channel, "active": None}, f"{channel}: nothing is live")
        return
    record = state.record
    checks = records.read_checks(ctx, record)
    bake = bake_status(ctx, record, live=True)
    doc = record.model_dump(mode="json")
    doc["checks"] = checks.model_dump(mode="json") if checks else None
    doc["bake_plan"] = doc.pop("bake")
    doc["bake"] = bake.model_dump(mode="json")
    baking = "" if bake.state == "none" else (
        f"\n  bake: {bake.state} {bake.done}/{bake.total}"
        + (f" (every {bake.interval_s:g}s)" if bake.state == "baking" else "")
        + (f": {bake.reason}" if bake.reason else "")
        + (f"; last: {bake.last['result']} {bake.last['reason']}" if bake.last else ""))
    approver = record.evidence.get("approved_by")
    approved = f" (approved by {approver})" if approver else ""
    doc["approved_by"] = approver
    human = (
        f"{channel}: release {record.active.release_id} (generation "
        f"{record.active.generation}) live since {record.created_at:%Y-%m-%d %H:%M:%S}Z\n"
        f"  sequence {record.sequence} {record.kind} by {record.operator}"
        f"{approved}: {record.reason}\n"
        f"  checks: {checks.result if checks else 'pending'}"
        f"{'  rollback mode' if record.rollback_mode else ''}{baking}"
    )
    emit(as_json, doc, human)


PlotOpt = Annotated[Path | None, typer.Option(
    "--plot", help="Also draw it to FILE: .svg, or .png (rendered by a local Chromium).",
    metavar="FILE")]


@app.command("history")
def history_command(
    channel: Channel,
    max_rows: Annotated[int | None, typer.Option(
        "--max", min=1, help="Only the last N records.")] = None,
    plot: PlotOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every record, oldest first, like `helm history`: time, status (live, superseded,
    rolled back, failed), kind, release, checks, bake, who (and who approved), why (for an
    automatic rollback: its cause).

    Examples: kristalctl history acme/prod/eu-west-1 --max 10;
    kristalctl history acme/prod/eu-west-1 --plot timeline.svg
    """
    from kristal.channel.history_rows import history_rows

    ctx = domain_context()
    rows = history_rows(ctx, channel)
    if not rows:
        _require_published(ctx, channel)
    if max_rows is not None:
        rows = rows[-max_rows:]
    if plot is not None:
        from flows.cli.pictures import write_picture
        from kristal.operations.pictures import timeline_svg

        write_picture(plot, timeline_svg(channel, rows, ctx.now()))

    def human() -> None:
        import sys

        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Recorded strings are shown verbatim: Text is never parsed as Rich markup.
        table = Table(title=Text(f"history of {channel}"))
        for column in ("time", "seq", "status", "kind", "release", "gen", "checks", "bake",
                       "by", "why"):
            table.add_column(column)
        for r in rows:
            style = ("red" if r["status"] == "failed" else "bold green" if r["status"] == "live"
                     else "")
            by = r["operator"] + (f" (approved: {r['approver']})" if r["approver"] else "")
            why = f"cause: {r['cause']}" if r["cause"] else r["reason"]
            cells = [r["created_at"][:19].replace("T", " "), r["sequence"],
                     "* live" if r["status"] == "live" else r["status"], r["kind"],
                     r["release_id"], r["generation"], r["checks"], r["bake"], by, why]
            table.add_row(*(Text(str(c)) for c in cells), style=style)
        Console(width=160, no_color=not sys.stdout.isatty()).print(table)
        if plot is not None:
            print(f"timeline drawn to {plot}")

    emit(as_json, rows, human)


TenantOpt = Annotated[str | None, typer.Option("--tenant", help="Only this tenant's channels.")]
EnvironmentOpt = Annotated[str | None, typer.Option(
    "--environment", help="Only channels of this environment (e.g. prod).")]
RegionOpt = Annotated[str | None, typer.Option(
    "--region", help="Only channels of this region (e.g. eu-west-1).")]


@app.command("channels")
def channels_command(tenant: TenantOpt = None, environment: EnvironmentOpt = None,
                     region: RegionOpt = None, as_json: JsonOpt = False) -> None:
    """Every channel in the bucket with what is live there: release, generation, since when,
    by whom, kind, checks, rollback mode.

    Example: kristalctl channels --tenant acme --environment prod
    """
    from kristal.channel.directory import channel_rows, list_channels

    ctx = domain_context()
    rows = channel_rows(ctx, list_channels(ctx, tenant=tenant, environment=environment,
                                           region=region))

    def human() -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(f"{len(rows)} channel(s)"))
        columns = ("channel", "release_id", "generation", "since", "operator", "kind",
                   "checks", "bake", "rollback_mode")
        for column in ("channel", "release", "gen", "since", "by", "kind", "checks", "bake",
                       "rollback mode"):
            table.add_column(column)
        for r in rows:
            table.add_row(*(Text("" if r[k] is None else str(r[k])) for k in columns))
        Console(width=140).print(table)

    emit(as_json, rows, human)


@app.command("releases")
def releases_command(channel: Channel, as_json: JsonOpt = False) -> None:
    """The channel's releases (its verified index) with each one's state here: live,
    activatable, quarantined, revoked, below the floor, needs an authorization.

    Example: kristalctl releases acme/prod/eu-west-1
    """
    from kristal.channel.directory import release_rows
    from kristal.channel.index import load_verified_index, read_index_bytes

    ctx = domain_context()
    raw = read_index_bytes(ctx.store, channel)
    if raw is None:
        _require_published(ctx, channel)  # raises: no index
        return
    index = load_verified_index(raw[0], channel, ctx.trust(channel), now=ctx.now())
    rows = release_rows(ctx, channel, index, ctx.now())

    def human() -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(f"releases of {channel} (index v{index.index_version}, "
                                 f"floor {index.minimum_allowed_release_id})"))
        for column in ("release", "gen", "state", "published", "exchange"):
            table.add_column(column)
        for r in rows:
            table.add_row(*(Text(str(v)) for v in (
                r["release_id"], r["generation"], r["state"], r["published_at"],
                r["exchange_id"][:19])))
        Console(width=120).print(table)

    emit(as_json, rows, human)
