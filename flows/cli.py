"""`kristalctl`: the stable command line (DESIGN §9). Scripts depend on its commands, exit codes
and `error: <code>: <message>` lines; a refusal never prints a traceback.

It lives beside the flows because it runs them; commands that need no Prefect (id, canon,
keys, publish, status, history, ...) import none.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kristal.errors import EXIT_USAGE, KristalError, UsageInvalid

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Release activation for Kristal data releases.",
)
dev_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The local stack.")
keys_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Signing keys.")
app.add_typer(dev_app, name="dev")
app.add_typer(keys_app, name="keys")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Channel = Annotated[str, typer.Argument(help="<tenant>/<environment>/<region>")]
OperatorOpt = Annotated[str, typer.Option("--operator", help="Who is doing this (recorded).")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded).")]
CorrelationOpt = Annotated[str | None, typer.Option("--correlation-id")]


def _emit(as_json: bool, document: Any, human: str | Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    elif callable(human):
        human()
    else:
        typer.echo(human)


def _quiet_prefect() -> None:
    """Keep Prefect's console logging off stderr (one error line is the contract)."""
    if os.environ.get("KRISTAL_VERBOSE"):
        return
    import logging

    from prefect.logging.configuration import setup_logging

    setup_logging()
    # Logs still reach the Prefect API (the UI shows them); only the console copy is muted.
    for logger in [logging.getLogger(), *logging.root.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                if handler.__class__.__name__ == "PrefectConsoleHandler":
                    handler.setLevel(logging.CRITICAL + 1)


def _ctx() -> Any:
    from kristal.context import Context

    return Context.from_settings()


# --- identity -----------------------------------------------------------------------------------
@app.command("id")
def id_command(
    kind: Annotated[str, typer.Argument(help="exchange|runtime-pack|federation|validation-report")],
    file: Path,
    as_json: JsonOpt = False,
) -> None:
    """Print the recomputed ID of a document."""
    from kristal.formats.canonical import parse_json
    from kristal.formats.identity import DocKind, compute_id

    kinds = {
        "exchange": DocKind.EXCHANGE,
        "runtime-pack": DocKind.RUNTIME_PACK,
        "federation": DocKind.FEDERATION,
        "validation-report": DocKind.VALIDATION_REPORT,
    }
    if kind not in kinds:
        raise UsageInvalid(f"kind must be one of {sorted(kinds)}")
    doc = parse_json(_read(file), what=str(file))
    if not isinstance(doc, dict):
        from kristal.errors import ManifestSchemaInvalid

        raise ManifestSchemaInvalid(f"{file} is not a JSON object")
    artifact_id = compute_id(doc, kinds[kind])
    _emit(as_json, {"kind": kind, "id": artifact_id}, artifact_id)


@app.command("canon")
def canon_command(file: Path, as_json: JsonOpt = False) -> None:
    """Print the RFC 8785 bytes of a JSON file (no trailing newline)."""
    from kristal.formats.canonical import canonical_bytes, parse_json, sha256_hex

    data = canonical_bytes(parse_json(_read(file), what=str(file)))
    if as_json:
        _emit(True, {"canonical": data.decode(), "sha256": "sha256:" + sha256_hex(data)}, "")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise UsageInvalid(f"cannot read {file}: {exc.strerror}") from None


# --- keys and the local stack -------------------------------------------------------------------
@keys_app.command("generate")
def keys_generate(
    role: Annotated[str, typer.Option("--role")],
    key_id: Annotated[str, typer.Option("--key-id")],
    out: Annotated[Path, typer.Option("--out")],
    as_json: JsonOpt = False,
) -> None:
    """Write <key_id>.pem (PKCS#8, 0600) and <key_id>.pub.json into --out."""
    from kristal.trust.keys import generate_key

    trusted = generate_key(role, key_id, out)
    doc = trusted.model_dump(mode="json", exclude_none=True)
    _emit(as_json, doc, f"{out / (key_id + '.pem')}\n{out / (key_id + '.pub.json')}")


def _home() -> Path:
    return Path(os.environ.get("KRISTAL_HOME", Path.home() / ".kristal")).expanduser()


@dev_app.command("up")
def dev_up_command(as_json: JsonOpt = False) -> None:
    """Start SeaweedFS and a Prefect server on 127.0.0.1; print `export` lines."""
    from kristal.dev.devstack import dev_up

    stack = dev_up(_home())
    exports = stack.exports()
    _emit(as_json, exports, "\n".join(f"export {k}={_shell_quote(v)}" for k, v in exports.items()))


@dev_app.command("down")
def dev_down_command(as_json: JsonOpt = False) -> None:
    """Stop the local stack started by `dev up`."""
    from kristal.dev.devstack import dev_down

    stopped = dev_down(_home())
    _emit(as_json, {"stopped": stopped}, "stopped" if stopped else "no local stack was running")


def _shell_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


# --- publishing and the channel index -----------------------------------------------------------
def _publisher_keys() -> Any:
    from kristal.config import Settings
    from kristal.publish.publisher import load_publisher_keys

    return load_publisher_keys(Settings.from_env().key_dir)


@app.command("publish")
def publish_command(
    data: Annotated[Path, typer.Option("--data", help="Triples JSONL file.")],
    channel: Annotated[str, typer.Option("--channel")],
    release_id: Annotated[int, typer.Option("--release-id")],
    generation: Annotated[int, typer.Option("--generation")],
    expect_file: Annotated[Path | None, typer.Option("--expect-file")] = None,
    shards: Annotated[int, typer.Option("--shards")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Publish a signed release into the channel's index."""
    from kristal.publish.publisher import publish

    ctx = _ctx()
    result = publish(
        ctx.store,
        ctx.trust(channel),
        _publisher_keys(),
        data=data,
        channel_id=channel,
        release_id=release_id,
        generation=generation,
        expect_file=expect_file,
        shards=shards,
        now=ctx.now,
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
    _emit(as_json, result.as_dict(), human.rstrip())


@app.command("authorize")
def authorize_command(
    channel: Channel,
    release: Annotated[int, typer.Option("--release")],
    reason: ReasonOpt,
    expires_in: Annotated[str, typer.Option("--expires-in", help="30m, 24h, 7d or ISO 8601")],
    as_json: JsonOpt = False,
) -> None:
    """Bless a downgrade target; prints the authorization id."""
    from kristal.channel.governance import authorize

    ctx = _ctx()
    auth = authorize(ctx, _publisher_keys().authority, channel, release, reason, expires_in)
    _emit(as_json, auth, auth["authorization_id"])


@app.command("revoke")
def revoke_command(
    channel: Channel,
    release: Annotated[int, typer.Option("--release")],
    reason: ReasonOpt,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a release in the channel index."""
    from kristal.channel.governance import revoke

    ctx = _ctx()
    index = revoke(ctx, _publisher_keys().authority, channel, release, reason)
    _emit(
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
    channel: Channel, release: Annotated[int, typer.Option("--release")], as_json: JsonOpt = False
) -> None:
    """Set the channel's minimum_allowed_release_id."""
    from kristal.channel.governance import set_floor

    ctx = _ctx()
    index = set_floor(ctx, _publisher_keys().authority, channel, release)
    _emit(
        as_json,
        {
            "channel_id": channel,
            "minimum_allowed_release_id": release,
            "index_version": index.index_version,
        },
        f"{channel} floor is release {release} (index v{index.index_version})",
    )


# --- flows --------------------------------------------------------------------------------------
def _run_flow(as_json: bool, call: Callable[[], Any]) -> None:
    _quiet_prefect()
    outcome = call()
    doc = outcome.model_dump(mode="json")
    _emit(as_json, doc, outcome.message or outcome.outcome)


@app.command("activate")
def activate_command(
    channel: Channel,
    operator: OperatorOpt,
    reason: ReasonOpt,
    release: Annotated[int | None, typer.Option("--release")] = None,
    exchange: Annotated[str | None, typer.Option("--exchange")] = None,
    pack: Annotated[list[str] | None, typer.Option("--pack")] = None,
    force: Annotated[bool, typer.Option("--force")] = False,
    correlation_id: CorrelationOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify, stage, switch and check a release."""
    from flows.params import ActivateRequest

    if (release is None) == (exchange is None):
        raise UsageInvalid("give --release N, or --exchange ID with --pack ID...")
    request = _model(
        ActivateRequest,
        channel_id=channel,
        release_id=release,
        exchange_id=exchange,
        runtime_pack_ids=pack or None,
        force=force,
        dry_run=dry_run,
        operator=operator,
        reason=reason,
        correlation_id=correlation_id,
    )

    def run() -> Any:
        from flows.activate import activate

        return activate(request)

    _run_flow(as_json, run)


@app.command("rollback")
def rollback_command(
    channel: Channel,
    operator: OperatorOpt,
    reason: ReasonOpt,
    to: Annotated[str, typer.Option("--to", help="last-known-good, previous or a sequence")] = (
        "last-known-good"
    ),
    expected_activation_id: Annotated[str | None, typer.Option("--expected-activation-id")] = None,
    correlation_id: CorrelationOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Go back to a release this channel had live."""
    from flows.params import RollbackRequest

    target: Any = int(to) if to.isdigit() else to
    request = _model(
        RollbackRequest,
        channel_id=channel,
        to=target,
        expected_activation_id=expected_activation_id,
        operator=operator,
        reason=reason,
        correlation_id=correlation_id,
    )

    def run() -> Any:
        from flows.rollback import rollback

        return rollback(request)

    _run_flow(as_json, run)


@app.command("downgrade")
def downgrade_command(
    channel: Channel,
    release: Annotated[int, typer.Option("--release")],
    authorization: Annotated[str, typer.Option("--authorization")],
    operator: OperatorOpt,
    reason: ReasonOpt,
    require_approval: Annotated[bool, typer.Option("--require-approval")] = False,
    correlation_id: CorrelationOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Move to an older generation, only to a release a rollback authorization blesses."""
    from flows.params import DowngradeRequest

    request = _model(DowngradeRequest, channel_id=channel, release_id=release,
                     authorization_id=authorization, require_approval=require_approval,
                     operator=operator, reason=reason, correlation_id=correlation_id)

    def run() -> Any:
        from flows.downgrade import downgrade

        return downgrade(request)

    _run_flow(as_json, run)


def _model(model: Any, **fields: Any) -> Any:
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageInvalid(f"{loc}: {first['msg']}") from None


# --- reading ------------------------------------------------------------------------------------
@app.command("status")
def status_command(channel: Channel, as_json: JsonOpt = False) -> None:
    """The live record of a channel."""
    from kristal.channel import pointer as ptr

    ctx = _ctx()
    state = ptr.read_pointer(ctx.store, channel)
    if state.record is None:
        _emit(as_json, {"channel_id": channel, "active": None}, f"{channel}: nothing is live")
        return
    record = state.record
    checks = ptr.read_checks(ctx.store, channel, record.sequence)
    doc = record.model_dump(mode="json")
    doc["checks"] = checks.model_dump(mode="json") if checks else None
    human = (
        f"{channel}: release {record.active.release_id} (generation "
        f"{record.active.generation}) live since {record.created_at:%Y-%m-%d %H:%M:%S}Z\n"
        f"  sequence {record.sequence} {record.kind} by {record.operator}: {record.reason}\n"
        f"  checks: {checks.result if checks else 'pending'}"
        f"{'  rollback mode' if record.rollback_mode else ''}"
    )
    _emit(as_json, doc, human)


@app.command("history")
def history_command(channel: Channel, as_json: JsonOpt = False) -> None:
    """Every record, oldest first, with its check outcome."""
    from kristal.channel import pointer as ptr
    from kristal.channel.history import history

    ctx = _ctx()
    rows = []
    for record in history(ctx.store, channel):
        checks = ptr.read_checks(ctx.store, channel, record.sequence)
        rows.append(
            {
                "sequence": record.sequence,
                "kind": record.kind,
                "release_id": record.active.release_id,
                "generation": record.active.generation,
                "operator": record.operator,
                "reason": record.reason,
                "created_at": record.created_at.isoformat(),
                "forced": record.forced,
                "activation_id": record.activation_id,
                "checks": checks.result if checks else "pending",
            }
        )

    def human() -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"history of {channel}")
        for column in ("seq", "kind", "release", "gen", "checks", "operator", "reason"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                str(r["sequence"]),
                r["kind"],
                str(r["release_id"]),
                str(r["generation"]),
                r["checks"],
                r["operator"],
                r["reason"],
            )
        Console(width=120).print(table)

    _emit(as_json, rows, human)


@app.command("fleet-activate")
def fleet_activate_command(
    channels: Annotated[list[str], typer.Argument(help="Channels, in rollout order.")],
    release: Annotated[int, typer.Option("--release")],
    operator: OperatorOpt,
    reason: ReasonOpt,
    canary: Annotated[list[str] | None, typer.Option("--canary", help="Default: first.")] = None,
    no_canary: Annotated[bool, typer.Option("--no-canary")] = False,
    wave_size: Annotated[int, typer.Option("--wave-size")] = 10,
    max_parallel: Annotated[int, typer.Option("--max-parallel")] = 4,
    revoke_vetoed: Annotated[bool, typer.Option("--revoke-vetoed")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Verify in every channel, stage once, switch nothing.")] = False,
    correlation_id: CorrelationOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Activate one release across many channels in waves (canary first); halt and veto."""
    from flows.fleet import FleetRequest

    request = _model(FleetRequest, channel_ids=channels, release_id=release,
                     canary_channel_ids=[] if no_canary else (canary or None),
                     wave_size=wave_size, max_parallel=max_parallel, revoke_vetoed=revoke_vetoed,
                     dry_run=dry_run, operator=operator, reason=reason,
                     correlation_id=correlation_id)
    _quiet_prefect()
    from flows.fleet import fleet_activate

    outcome = fleet_activate(request)
    if outcome.outcome == "planned":
        refused = [o for o in outcome.channels if o.result in ("refused", "error")]
        would = sum(o.result == "planned" for o in outcome.channels)
        live = sum(o.result == "already_live" for o in outcome.channels)
        _emit(as_json, outcome.model_dump(mode="json"),
              f"release {release}: dry run: {would} would change, {live} already live, "
              f"{len(refused)} would refuse" + "".join(
                  f"\n  {o.channel_id}: {o.error_code or o.result}: {o.message}"
                  for o in refused))
        if refused:
            raise typer.Exit(1)
        return
    live = sum(o.result in ("activated", "already_live", "resumed") for o in outcome.channels)
    _emit(as_json, outcome.model_dump(mode="json"),
          f"release {release}: {outcome.outcome} ({live}/{len(outcome.channels)} live, "
          f"{len(outcome.vetoed)} vetoed)")
    if outcome.outcome == "halted":
        rolled_back = any(o.result == "rolled_back" for o in outcome.channels)
        raise typer.Exit(5 if rolled_back else 1)


@app.command("reverify")
def reverify_command(
    channels: Annotated[list[str] | None, typer.Argument(help="Channels (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-verify live stores: chain, signatures, expiry, objects, local index, checks."""
    from flows.reverify import ReverifyRequest

    request = _model(ReverifyRequest, channel_ids=list(channels) if channels else None)
    _quiet_prefect()
    from flows.reverify import reverify

    result = reverify(request)
    doc = result.model_dump(mode="json")
    _emit(as_json, doc, lambda: _print_reverify(doc))


def _print_reverify(doc: dict[str, Any]) -> None:
    for channel in doc.get("channels", []):
        typer.echo(f"{channel.get('channel_id')}: {'ok' if channel.get('ok') else 'FAILED'}")
        for row in channel.get("rows", []):
            typer.echo(f"  {'ok ' if row.get('ok') else 'BAD'} {row.get('name')}: "
                       f"{row.get('detail')}")


@app.command("report-failure")
def report_failure_command(channel: Channel, reason: ReasonOpt, as_json: JsonOpt = False) -> None:
    """Emit kristal.check.failed for the live activation (a monitor's report)."""
    from kristal.channel import pointer as ptr

    ctx = _ctx()
    live = ptr.read_pointer(ctx.store, channel).record
    if live is None:
        from kristal.errors import RollbackTargetMissing

        raise RollbackTargetMissing(f"{channel} has no live activation to report on")
    _quiet_prefect()
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    from tasks.followup import channel_resource_id

    event = emit_event(
        event="kristal.check.failed",
        resource={"prefect.resource.id": channel_resource_id(channel),
                  "prefect.resource.name": channel},
        payload={"channel_id": channel, "activation_id": live.activation_id, "reason": reason,
                 "release_id": live.active.release_id, "sequence": live.sequence},
    )
    EventsWorker.drain_all()
    doc = {"event": "kristal.check.failed", "event_id": str(event.id) if event else None,
           "channel_id": channel, "activation_id": live.activation_id, "reason": reason}
    _emit(as_json, doc, f"reported a failed check of activation {live.activation_id} "
                        f"(release {live.active.release_id}) in {channel}")


@app.command("serve")
def serve_command() -> None:
    """Serve every deployment and apply the automations (blocks until stopped)."""
    _quiet_prefect()
    from deployments.serve import serve_all

    serve_all()


@app.command("demo")
def demo_command(as_json: JsonOpt = False) -> None:
    """The main job end to end on the local stack (the README's first command)."""
    from flows.demo import run_demo

    run_demo(as_json=as_json)  # starts the stack first: Prefect must see PREFECT_API_URL


def main() -> None:
    try:
        # Without standalone mode, click hands a command's typer.Exit back as the return value.
        status = app(standalone_mode=False)
    except KristalError as exc:
        typer.echo(exc.line(), err=True)
        sys.exit(exc.exit_status)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("error: activation_aborted: interrupted", err=True)
        sys.exit(1)
    except Exception as exc:
        usage = _usage_error(exc)
        if usage is not None:
            typer.echo(f"error: usage_invalid: {usage}", err=True)
            sys.exit(EXIT_USAGE)
        ref = uuid.uuid4().hex[:8]
        typer.echo(f"error: internal_error: {type(exc).__name__}: {exc} (ref {ref})", err=True)
        sys.exit(4)
    sys.exit(status if isinstance(status, int) else 0)


def _usage_error(exc: Exception) -> str | None:
    """The message of a command-line usage error (typer bundles its own click)."""
    kinds: list[type[Exception]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            kinds.append(__import__(module, fromlist=["ClickException"]).ClickException)
        except ImportError:
            continue
    if isinstance(exc, tuple(kinds)):
        return " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    return None


if __name__ == "__main__":
    main()
