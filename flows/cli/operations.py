"""`kristalctl activate`, `rollback`, `downgrade`, `fleet-activate`, `reverify` and
`report-failure`: the operations, run as Prefect flows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from flows.cli import options as opt
from flows.cli.app import (
    Channel,
    CorrelationOpt,
    JsonOpt,
    OperatorOpt,
    ReasonOpt,
    app,
    domain_context,
    request_model,
    store_preflight,
)
from flows.console import emit, follow_runs, quiet_prefect
from kristal.errors import UsageInvalid


def _orchestrator_unreachable() -> str | None:
    """The Prefect API URL when it is set and does not answer (else None: without a URL Prefect
    runs a temporary local server of its own)."""
    import os
    import urllib.error
    import urllib.request

    url = os.environ.get("PREFECT_API_URL", "").rstrip("/")
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=3):
            return None
    except (urllib.error.URLError, OSError, ValueError):
        return url


def _via(deployment: str, request: Any) -> Any:
    from tasks.deployment_runs import run_via_deployment

    return run_via_deployment(deployment, request)


def _run_flow(as_json: bool, call: Callable[[], Any]) -> None:
    quiet_prefect()
    follow_runs(as_json)
    outcome = call()
    doc = outcome.model_dump(mode="json")
    emit(as_json, doc, outcome.message or outcome.outcome)


@app.command("activate")
def activate_command(
    channel: Channel,
    operator: OperatorOpt,
    reason: ReasonOpt,
    release: opt.ReleaseOpt = None,
    exchange: opt.ExchangeOpt = None,
    pack: opt.PackOpt = None,
    force: opt.ForceOpt = False,
    correlation_id: CorrelationOpt = None,
    dry_run: opt.DryRunOpt = False,
    bake: opt.BakeOpt = None,
    bake_interval: opt.BakeIntervalOpt = None,
    via_deployment: opt.ViaDeploymentOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Verify, stage, switch and check a release, then bake it (in its own run).

    Example: kristalctl activate acme/prod/eu-west-1 --release 4 --operator alice --reason
    CHG-42 (add --dry-run first to see the plan and run the pack's expectations)
    """
    from flows.params import ActivateRequest

    if (release is None) == (exchange is None):
        raise UsageInvalid("give --release N, or --exchange ID with --pack ID...")
    request = request_model(
        ActivateRequest,
        channel_id=channel,
        release_id=release,
        exchange_id=exchange,
        runtime_pack_ids=pack or None,
        force=force,
        dry_run=dry_run,
        bake=bake,
        bake_interval=bake_interval,
        operator=operator,
        reason=reason,
        correlation_id=correlation_id,
    )

    def run() -> Any:
        if via_deployment:
            return _via("activate/activate", request)
        store_preflight()
        from flows.activate import activate

        return activate(request)

    _run_flow(as_json, run)


@app.command("rollback")
def rollback_command(
    channel: Channel,
    operator: OperatorOpt,
    reason: ReasonOpt,
    to: Annotated[str, typer.Option(
        "--to", help="Target: last-known-good, previous, or a history sequence number.")] = (
        "last-known-good"
    ),
    expected_activation_id: Annotated[str | None, typer.Option(
        "--expected-activation-id", help="Only roll back if this activation id is still live "
        "(no double rollback). Default: whatever is live.")] = None,
    correlation_id: CorrelationOpt = None,
    via_deployment: opt.ViaDeploymentOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Go back to a release this channel had live.

    Example: kristalctl rollback acme/prod/eu-west-1 --to previous --operator alice --reason
    INC-7
    """
    from flows.params import RollbackRequest

    # Only ASCII digits name a sequence (str.isdigit() also takes '²', which int() refuses).
    target: Any = int(to) if to.isascii() and to.isdigit() else to
    request = request_model(
        RollbackRequest,
        channel_id=channel,
        to=target,
        expected_activation_id=expected_activation_id,
        operator=operator,
        reason=reason,
        correlation_id=correlation_id,
    )

    unreachable = _orchestrator_unreachable()
    if unreachable is not None:
        _break_glass_rollback(as_json, request, unreachable)
        return

    def run() -> Any:
        if via_deployment:
            return _via("rollback/rollback", request)
        store_preflight()
        from flows.rollback import rollback

        return rollback(request)

    _run_flow(as_json, run)


def _break_glass_rollback(as_json: bool, request: Any, api_url: str) -> None:
    """With the Prefect API down, the same rollback operation with the plain runner: no lock
    (the conditional write is the one correctness relies on), no run, artifacts or events; the
    record says no orchestrator was reachable."""
    from kristal.config import retry_delays_s
    from kristal.operations.outcome import Who
    from kristal.operations.rollback import rollback
    from kristal.operations.runner import PlainRunner

    outcome = rollback(
        PlainRunner(retry_delays_s=retry_delays_s()), domain_context(),
        channel_id=request.channel_id, to=request.to,
        expected_activation_id=request.expected_activation_id,
        who=Who.of(request.operator, request.reason, request.correlation_id, None,
                   orchestrator="none"),
    )
    note = (f"no orchestrator was reachable ({api_url} does not answer): the rollback ran "
            "without Prefect (no lock, run, artifacts or events)")
    emit(as_json, {**outcome.model_dump(mode="json"), "note": note},
         f"{outcome.message or outcome.outcome}\n{note}")


@app.command("downgrade")
def downgrade_command(
    channel: Channel,
    release: Annotated[int, typer.Option(
        "--release", help="Release id to go to: the target of the authorization.")],
    authorization: Annotated[str, typer.Option(
        "--authorization", help="The rollback authorization ID (sha256:...) that kristalctl "
        "authorize printed; it must be unexpired.")],
    operator: OperatorOpt,
    reason: ReasonOpt,
    require_approval: Annotated[bool, typer.Option(
        "--require-approval", help="Pause before switching until a human approves on the "
        "paused run's form in the Prefect UI.")] = False,
    correlation_id: CorrelationOpt = None,
    via_deployment: opt.ViaDeploymentOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Move to an older generation, only to a release a rollback authorization blesses.

    Example: kristalctl downgrade acme/prod/eu-west-1 --release 2 --authorization sha256:3f9a...
    --operator alice --reason INC-7 --require-approval
    """
    from flows.params import DowngradeRequest

    request = request_model(DowngradeRequest, channel_id=channel, release_id=release,
                     authorization_id=authorization, require_approval=require_approval,
                     operator=operator, reason=reason, correlation_id=correlation_id)

    def run() -> Any:
        if via_deployment:
            return _via("downgrade/downgrade", request)
        store_preflight()
        from flows.downgrade import downgrade

        return downgrade(request)

    _run_flow(as_json, run)


@app.command("fleet-activate")
def fleet_activate_command(
    channels: opt.FleetChannels,
    release: opt.FleetReleaseOpt,
    operator: OperatorOpt,
    reason: ReasonOpt,
    canary: opt.CanaryOpt = None,
    no_canary: opt.NoCanaryOpt = False,
    wave_size: opt.WaveSizeOpt = 10,
    max_parallel: opt.MaxParallelOpt = 4,
    revoke_vetoed: opt.RevokeVetoedOpt = False,
    dry_run: opt.FleetDryRunOpt = False,
    fan_out: opt.FanOutOpt = False,
    plot: opt.FleetPlotOpt = None,
    correlation_id: CorrelationOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Activate one release across many channels in waves (canary first); halt and veto.

    Example: kristalctl fleet-activate acme/prod/eu-west-1 acme/prod/us-east-1 --release 4
    --operator alice --reason CHG-42 --wave-size 10 --plot fleet.svg
    """
    from flows.params import FleetRequest

    request = request_model(FleetRequest, channel_ids=channels, release_id=release,
                     canary_channel_ids=[] if no_canary else (canary or None),
                     wave_size=wave_size, max_parallel=max_parallel, revoke_vetoed=revoke_vetoed,
                     dry_run=dry_run, fan_out=fan_out, operator=operator, reason=reason,
                     correlation_id=correlation_id)
    quiet_prefect()
    follow_runs(as_json)
    store_preflight()
    from flows.fleet import run_fleet

    outcome, _ = run_fleet(request)
    if plot is not None:
        from flows.cli.pictures import write_picture
        from kristal.operations.fleet_channel import fleet_grid

        write_picture(plot, fleet_grid(outcome))
    if outcome.outcome == "planned":
        refused = [o for o in outcome.channels if o.result in ("refused", "error")]
        would = sum(o.result == "planned" for o in outcome.channels)
        live = sum(o.result == "already_live" for o in outcome.channels)
        emit(as_json, outcome.model_dump(mode="json"),
              f"release {release}: dry run: {would} would change, {live} already live, "
              f"{len(refused)} would refuse" + "".join(
                  f"\n  {o.channel_id}: {o.error_code or o.result}: {o.message}"
                  for o in refused))
        raise typer.Exit(outcome.exit_status)
    live = sum(o.result in ("activated", "already_live", "resumed") for o in outcome.channels)
    emit(as_json, outcome.model_dump(mode="json"),
          f"release {release}: {outcome.outcome} ({live}/{len(outcome.channels)} live, "
          f"{len(outcome.vetoed)} vetoed)")
    raise typer.Exit(outcome.exit_status)


@app.command("bake")
def bake_command(
    channels: Annotated[list[str] | None, typer.Argument(
        help="Channels whose live release to bake.")] = None,
    activation_id: Annotated[str | None, typer.Option(
        "--activation-id", help="With one channel: the activation to bake (default: the live "
        "one; another one live ends the bake at once).")] = None,
    target: Annotated[list[str] | None, typer.Option(
        "--target", help="CHANNEL=ACTIVATION_ID, repeatable (how a fleet's bake starts).")
    ] = None,
    operator: Annotated[str, typer.Option("--operator", help="Recorded on a rollback.")] = "bake",
    as_json: JsonOpt = False,
) -> None:
    """Run live releases' bakes here, in the foreground, to their verdicts (exit 5: one failed
    and was rolled back). Activations start this by themselves.

    Example: kristalctl bake acme/prod/eu-west-1 --operator alice
    """
    from flows.params import BakeRequest

    pairs: list[dict[str, Any]] = [{"channel_id": c, "activation_id": None}
                                   for c in channels or []]
    if activation_id is not None:
        if len(pairs) != 1:
            raise UsageInvalid("--activation-id goes with exactly one channel")
        pairs[0]["activation_id"] = activation_id
    for item in target or []:
        channel, sep, activation = item.partition("=")
        if not sep or not activation:
            raise UsageInvalid(f"--target {item!r} is not CHANNEL=ACTIVATION_ID")
        pairs.append({"channel_id": channel, "activation_id": activation})
    if not pairs:
        raise UsageInvalid("name a channel to bake (or --target CHANNEL=ACTIVATION_ID)")
    request = request_model(BakeRequest, **pairs[0], more=pairs[1:], operator=operator,
                            reason="bake")
    quiet_prefect()
    follow_runs(as_json)
    store_preflight()
    from flows.bake import bake

    outcomes = bake(request)
    docs = [o.model_dump(mode="json") for o in outcomes]
    emit(as_json, docs[0] if len(docs) == 1 else docs,
         "\n".join(o.message or o.outcome for o in outcomes))


@app.command("reverify")
def reverify_command(
    channels: Annotated[list[str] | None, typer.Argument(help="Channels (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-verify live stores: chain, signatures, expiry, objects, local index, checks.

    Example: kristalctl reverify acme/prod/eu-west-1 acme/prod/us-east-1 --json
    """
    from flows.params import ReverifyRequest

    request = request_model(ReverifyRequest, channel_ids=list(channels) if channels else None)
    quiet_prefect()
    follow_runs(as_json)
    store_preflight()
    from flows.reverify import reverify

    result = reverify(request)
    doc = result.model_dump(mode="json")
    emit(as_json, doc, lambda: _print_reverify(doc))


def _print_reverify(doc: dict[str, Any]) -> None:
    for channel in doc.get("channels", []):
        typer.echo(f"{channel.get('channel_id')}: {'ok' if channel.get('ok') else 'FAILED'}")
        for row in channel.get("rows", []):
            typer.echo(f"  {'ok ' if row.get('ok') else 'BAD'} {row.get('name')}: "
                       f"{row.get('detail')}")


@app.command("report-failure")
def report_failure_command(channel: Channel, reason: ReasonOpt, as_json: JsonOpt = False) -> None:
    """Emit kristal.check.failed for the live activation (a monitor's report).

    Example: kristalctl report-failure acme/prod/eu-west-1 --reason "p95 latency over 200 ms"
    """
    from kristal.channel import records

    ctx = domain_context()
    live = records.read_pointer(ctx, channel).record
    if live is None:
        from kristal.errors import RollbackTargetMissing

        raise RollbackTargetMissing(f"{channel} has no live activation to report on")
    quiet_prefect()
    from kristal.operations.events import CHECK_FAILED
    from tasks.events_api import deliver_event
    from tasks.names import channel_resource_id

    # Delivered through the events API and acknowledged, or exit 4: a report that only
    # reached a background queue (emit_event) may be dropped while the CLI says it was sent.
    event = deliver_event(
        CHECK_FAILED,
        resource={"prefect.resource.id": channel_resource_id(channel),
                  "prefect.resource.name": channel},
        payload={"channel_id": channel, "activation_id": live.activation_id, "reason": reason,
                 "release_id": live.active.release_id, "sequence": live.sequence},
    )
    doc = {"event": "kristal.check.failed", "event_id": str(event),
           "channel_id": channel, "activation_id": live.activation_id, "reason": reason}
    emit(as_json, doc, f"reported a failed check of activation {live.activation_id} "
                        f"(release {live.active.release_id}) in {channel}")
