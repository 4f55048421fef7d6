"""`kristalctl status`, `history` and `channels`: what is live in a channel, its every
record, and what is live in every channel of the bucket."""

from __future__ import annotations

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
    """The live record of a channel."""
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
    human = (
        f"{channel}: release {record.active.release_id} (generation "
        f"{record.active.generation}) live since {record.created_at:%Y-%m-%d %H:%M:%S}Z\n"
        f"  sequence {record.sequence} {record.kind} by {record.operator}: {record.reason}\n"
        f"  checks: {checks.result if checks else 'pending'}"
        f"{'  rollback mode' if record.rollback_mode else ''}{baking}"
    )
    emit(as_json, doc, human)


@app.command("history")
def history_command(
    channel: Channel,
    max_rows: Annotated[int | None, typer.Option(
        "--max", min=1, help="Only the last N records.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every record, oldest first, like `helm history`: time, kind, release, its checks and
    bake, and a status (live, superseded, rolled back, failed).

    Example: kristalctl history acme/prod/eu-west-1 --max 10
    """
    from kristal.channel import records
    from kristal.channel.bakes import bake_state
    from kristal.channel.history import history

    ctx = domain_context()
    listed = history(ctx, channel)
    if not listed:
        _require_published(ctx, channel)
    rows = []
    for i, record in enumerate(listed):
        checks = records.read_checks(ctx, record)
        later = listed[i + 1] if i + 1 < len(listed) else None
        bake = bake_state(ctx, record, live=later is None)
        status = (
            "failed" if (checks is not None and checks.result == "failed") or bake == "failed"
            else "live" if later is None
            else "rolled back" if later.kind in ("rollback", "auto_rollback")
            else "superseded")
        rows.append({
            "sequence": record.sequence, "status": status, "kind": record.kind,
            "release_id": record.active.release_id, "generation": record.active.generation,
            "operator": record.operator, "reason": record.reason,
            "created_at": record.created_at.isoformat(), "forced": record.forced,
            "activation_id": record.activation_id,
            "checks": checks.result if checks else "pending", "bake": bake,
        })
    if max_rows is not None:
        rows = rows[-max_rows:]

    def human() -> None:
        import sys

        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Recorded strings are shown verbatim: Text is never parsed as Rich markup.
        table = Table(title=Text(f"history of {channel}"))
        columns = ("created_at", "sequence", "status", "kind", "release_id", "generation",
                   "checks", "bake", "operator", "reason")
        for column in ("time", "seq", "status", "kind", "release", "gen", "checks", "bake",
                       "operator", "reason"):
            table.add_column(column)
        for r in rows:
            style = ("red" if r["status"] == "failed" else "bold green" if r["status"] == "live"
                     else "")
            cells = [Text(str(r[k])[:19].replace("T", " ") if k == "created_at" else
                          ("* live" if k == "status" and r[k] == "live" else str(r[k])))
                     for k in columns]
            table.add_row(*cells, style=style)
        Console(width=160, no_color=not sys.stdout.isatty()).print(table)

    emit(as_json, rows, human)


PartOpt = Annotated[str | None, typer.Option(help="Only channels with this part.")]


@app.command("channels")
def channels_command(tenant: PartOpt = None, environment: PartOpt = None,
                     region: PartOpt = None, as_json: JsonOpt = False) -> None:
    """Every channel in the bucket with what is live there: release, generation, since when,
    by whom, kind, checks, rollback mode."""
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
    activatable, quarantined, revoked, below the floor, needs an authorization."""
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
