"""Option types of `activate` and `fleet-activate` (flows/cli/operations.py), kept here so that
module stays short. Typer and typing only: nothing here imports Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ViaDeploymentOpt = Annotated[bool, typer.Option(
    "--via-deployment", help="Submit the run to its deployment (a worker of the pool runs "
    "it), follow it, and print its outcome and exit status as here.")]

# activate
ReleaseOpt = Annotated[int | None, typer.Option(
    "--release", help="Release id from the channel's index.")]
ExchangeOpt = Annotated[str | None, typer.Option(
    "--exchange", help="Or the exact Exchange ID (sha256:...) with --pack.")]
PackOpt = Annotated[list[str] | None, typer.Option(
    "--pack", help="With --exchange: the exact runtime pack ID (sha256:...) to activate with "
    "it; repeatable.")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Re-activate a quarantined release or resume the live one's checks "
    "(recorded).")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Verify and stage, run the pack's expectations on the staged index and "
    "print the plan as a diff against what is live; nothing is switched (a failing "
    "expectation: check_failed, exit 1).")]
BakeOpt = Annotated[str | None, typer.Option(
    "--bake", help="How long it must hold up live before it counts as known-good "
    "(30s, 10m; 0: none). Default: the channel's bake policy.")]
BakeIntervalOpt = Annotated[str | None, typer.Option(
    "--bake-interval", help="How often it is measured while baking (30s, 1m). Default: the "
    "channel's bake policy.")]

# fleet-activate
FleetChannels = Annotated[list[str], typer.Argument(help="Channels, in rollout order.")]
FleetReleaseOpt = Annotated[int, typer.Option(
    "--release", help="Release id, published in every channel's index.")]
CanaryOpt = Annotated[list[str] | None, typer.Option(
    "--canary", help="A channel activated first, alone (repeatable; one of the channels). "
    "Default: the first channel.")]
NoCanaryOpt = Annotated[bool, typer.Option(
    "--no-canary", help="No canary: start with the first wave.")]
WaveSizeOpt = Annotated[int, typer.Option(
    "--wave-size", help="Channels per wave after the canary.")]
MaxParallelOpt = Annotated[int, typer.Option(
    "--max-parallel", help="Channels activated at once (1 to 64).")]
RevokeVetoedOpt = Annotated[bool, typer.Option(
    "--revoke-vetoed", help="On a halt, also revoke the release (reason fleet-veto) in the "
    "vetoed channels' indexes; needs the channel-authority key.")]
FleetDryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Verify in every channel, stage once, switch nothing.")]
FanOutOpt = Annotated[bool, typer.Option(
    "--fan-out", help="Run each channel as a run of the activate deployment on the work queue "
    "of its region (kristal-REGION: kristalctl deploy --pool NAME --region R) and wait for "
    "them; waves, halt and veto as without. With --dry-run: the queues are checked, the dry "
    "run itself runs here.")]
FleetPlotOpt = Annotated[Path | None, typer.Option(
    "--plot", metavar="FILE", help="Also draw the fleet grid (channel by wave, coloured by "
    "outcome) to FILE: .svg, or .png (rendered by a local Chromium).")]
