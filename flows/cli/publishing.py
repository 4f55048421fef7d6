"""`kristalctl publish`, `authorize`, `revoke` and `floor`: what changes a channel's signed
index (the channel-authority key signs every change)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import Channel, JsonOpt, ReasonOpt, app, domain_context, publisher_keys
from flows.console import emit, startup_over


@app.command("publish")
def publish_command(
    data: Annotated[Path, typer.Option("--data", help="Triples JSONL file.")],
    channel: Annotated[str, typer.Option(
        "--channel", help="Channel to publish into: tenant/environment/region.")],
    release_id: Annotated[int, typer.Option(
        "--release-id", help="Id of the new release: above every release in the channel's "
        "index.")],
    generation: Annotated[int, typer.Option(
        "--generation", help="Its generation (0 or more): a rollback stays within one, a "
        "downgrade goes to a lower one.")],
    expect_file: Annotated[Path | None, typer.Option(
        "--expect-file", help="JSON expectations the checks hold it to (row_count, "
        "smoke_queries, latency_p95_ms, max_rss_mb). Default: derived from the data.")] = None,
    shards: Annotated[int, typer.Option(
        "--shards", help="Publish K shard Exchanges (split by subject hash) under a federation "
        "root, with one pack over all of them (2 to 256; 0 or 1: one Exchange).")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Publish a signed release into the channel's index.

    Example: kristalctl publish --data triples.jsonl --channel acme/prod/eu-west-1 --release-id 4
    --generation 1 --expect-file expect.json
    """
    from kristal.publish.publisher import publish

    startup_over()  # a big release takes minutes: the cyclic collector runs again
    ctx = domain_context()
    result = publish(
        ctx.store,
        ctx.trust(channel),
        publisher_keys(),
        data=data,
        channel_id=channel,
        release_id=release_id,
        generation=generation,
        expect_file=expect_file,
        shards=shards,
        now=ctx.now,
        trusted=ctx.trusted,
    )
    human = (
        f"published release {result.release_id} (generation {result.generation}) to "
        f"{channel}: {result.row_count} rows, index v{result.index_version}\n"
        f"  exchange {result.exchange_id}\n"
        + "".join(f"  pack     {p}\n" for p in result.runtime_pack_ids)
        + (f"  root     {result.federation_id}\n" if result.federation_id else "")
        + (
            f"  FAILED validation profiles: {result.failed_profiles}\n"
            if result.failed_profiles
            else ""
        )
    )
    emit(as_json, result.as_dict(), human.rstrip())


@app.command("authorize")
def authorize_command(
    channel: Channel,
    release: Annotated[int, typer.Option(
        "--release", help="Release id from the channel's index to bless as a downgrade target.")],
    reason: ReasonOpt,
    expires_in: Annotated[str, typer.Option(
        "--expires-in", help="How long the authorization holds: 30m, 24h, 7d or ISO 8601.")],
    as_json: JsonOpt = False,
) -> None:
    """Bless a downgrade target; prints the authorization id.

    Example: kristalctl authorize acme/prod/eu-west-1 --release 2 --reason INC-7 --expires-in 24h
    """
    from kristal.channel.governance import authorize

    ctx = domain_context()
    auth = authorize(ctx, publisher_keys().authority, channel, release, reason, expires_in)
    emit(as_json, auth, auth["authorization_id"])


@app.command("revoke")
def revoke_command(
    channel: Channel,
    release: Annotated[int, typer.Option(
        "--release", help="Release id from the channel's index to revoke.")],
    reason: ReasonOpt,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a release in the channel index.

    Example: kristalctl revoke acme/prod/eu-west-1 --release 3 --reason "bad source data"
    """
    from kristal.channel.governance import revoke

    ctx = domain_context()
    index = revoke(ctx, publisher_keys().authority, channel, release, reason)
    emit(
        as_json,
        {
            "channel_id": channel,
            "revoked_release_id": release,
            "index_version": index.index_version,
        },
        f"release {release} revoked in {channel} (index v{index.index_version})",
    )


@app.command("floor")
def floor_command(
    channel: Channel,
    release: Annotated[int, typer.Option(
        "--release", help="The new floor: releases below it go live only by a downgrade (with "
        "an authorization).")],
    as_json: JsonOpt = False,
) -> None:
    """Set the channel's minimum_allowed_release_id.

    Example: kristalctl floor acme/prod/eu-west-1 --release 3
    """
    from kristal.channel.governance import set_floor

    ctx = domain_context()
    index = set_floor(ctx, publisher_keys().authority, channel, release)
    emit(
        as_json,
        {
            "channel_id": channel,
            "minimum_allowed_release_id": release,
            "index_version": index.index_version,
        },
        f"{channel} floor is release {release} (index v{index.index_version})",
    )
