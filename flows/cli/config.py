"""`kristalctl config save-block`: the store settings of this environment saved as a
`kristal-store` Prefect block (`tasks.store_block`), for workers pointed at it with
`KRISTAL_STORE_BLOCK=NAME` (`kristalctl deploy --pool P --store-block NAME` sets it on every
deployment). The secret access key is stored, never printed."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli.app import JsonOpt, app
from flows.console import emit, quiet_prefect

config_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Configuration kept on the Prefect server (store blocks).")
app.add_typer(config_app, name="config")


@config_app.command("save-block")
def save_block_command(
    name: Annotated[str, typer.Argument(help="Block name (lowercase letters, digits, dashes).")],
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace a block of that name.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Save this environment's store (KRISTAL_S3_ENDPOINT, _BUCKET, _PREFIX, AWS_REGION and the
    AWS_* key pair) as the kristal-store block NAME on the Prefect server.

    Example: kristalctl config save-block prod-eu && export KRISTAL_STORE_BLOCK=prod-eu
    """
    from kristal.config import store_config
    from tasks.store_block import checked_name

    name = checked_name(name)
    config = store_config()  # from the environment, even where KRISTAL_STORE_BLOCK is set
    quiet_prefect()
    from tasks.store_block import save_store_block

    block = save_store_block(name, config, overwrite=overwrite)
    doc = block.shown(name)
    credentials = (f"access key {block.access_key_id} (secret stored, not shown)"
                   if block.access_key_id else "none (boto3's default chain on each host)")
    emit(as_json, doc,
         f"saved {doc['block']}: bucket {block.bucket} at {block.endpoint_url or 'AWS'}"
         f"{', prefix ' + block.prefix if block.prefix else ''}, region {block.region}, "
         f"credentials: {credentials}\n"
         f"point a host at it with KRISTAL_STORE_BLOCK={name}, or a pool's deployments with "
         f"kristalctl deploy --pool POOL --store-block {name}")
