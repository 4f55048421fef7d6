"""`kristalctl deploy`, `automations apply` and `doctor`: running on Prefect's engine the way a
platform team does (a work pool and `prefect worker start` processes), and checking a worker's
set-up end to end."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.cli.app import JsonOpt, app
from flows.console import emit, quiet_prefect
from kristal.errors import UsageInvalid, error_class

automations_app = typer.Typer(add_completion=False, no_args_is_help=True,
                              help="The automations kristal-activate relies on.")
app.add_typer(automations_app, name="automations")

PoolOpt = Annotated[str, typer.Option("--pool", help="The Prefect work pool (process type; "
                                                     "created if missing).")]


def _require_api() -> None:
    import os

    if not os.environ.get("PREFECT_API_URL"):
        raise UsageInvalid('needs PREFECT_API_URL: the server to deploy to (eval "$(kristalctl '
                           'dev up)", or point it at the server)')


def _warn(warnings: list[str]) -> None:
    import sys

    for warning in warnings:
        print(warning, file=sys.stderr, flush=True)


@app.command("deploy")
def deploy_command(
    pool: PoolOpt,
    store_block: Annotated[str | None, typer.Option(
        "--store-block", help="Runs take their store from this kristal-store block "
        "(KRISTAL_STORE_BLOCK in every deployment's job variables; it must exist).")] = None,
    region: Annotated[list[str] | None, typer.Option(
        "--region", help="Create the work queue kristal-REGION in the pool (repeatable): "
        "fleet-activate --fan-out runs that region's channels there.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy every flow to a work pool (run them with `prefect worker start --pool NAME`),
    record the trust file's digest for `doctor`, and apply the automations.

    Example: kristalctl deploy --pool kristal --store-block prod-eu && prefect worker start
    --pool kristal; per region: kristalctl deploy --pool kristal --region eu-west-1 && prefect
    worker start --pool kristal --work-queue kristal-eu-west-1
    """
    _require_api()
    if store_block is not None:
        from tasks.store_block import checked_name, load_store_block

        store_block = checked_name(store_block)
        load_store_block(store_block)  # a missing block: usage_invalid, nothing deployed
    quiet_prefect()
    import contextlib
    import sys

    from prefect.variables import Variable

    from deployments.pool import deploy_and_automate
    from kristal.config import trust_file_path
    from kristal.context import trust_file_sha256
    from tasks.names import TRUST_DIGEST_VARIABLE

    with contextlib.redirect_stdout(sys.stderr):  # Prefect's own messages: stdout is ours
        doc = deploy_and_automate(pool, store_block, regions=region or [])
    digest = trust_file_sha256(trust_file_path())
    if digest:
        Variable.set(TRUST_DIGEST_VARIABLE, digest, overwrite=True)
    doc["trust_file_sha256"] = digest
    _warn(doc["warnings"])
    emit(as_json, doc, f"deployed {len(doc['deployments'])} flows to work pool {pool}"
         f"{' (created)' if doc['pool_created'] else ''}"
         f"{f', store block {store_block}' if store_block else ''}; automations: "
         f"{', '.join(doc['automations'])}; trust file {digest}\n"
         f"start workers with: prefect worker start --pool {pool}"
         + "".join(f"\n  region queue {q}: prefect worker start --pool {pool} --work-queue {q}"
                   for q in doc["work_queues"]))


@automations_app.command("apply")
def automations_apply_command(as_json: JsonOpt = False) -> None:
    """Apply the automations for the deployments already on the server (no serving).

    Example: PREFECT_API_URL=https://prefect.example.com/api kristalctl automations apply
    """
    _require_api()
    quiet_prefect()
    from prefect.client.orchestration import get_client

    from deployments.automations import (
        applied_line,
        applied_report,
        apply_automations,
        registered_on_server,
        reset_warnings,
    )

    with get_client(sync_client=True) as client:
        registered = registered_on_server(client)
    applied = apply_automations(registered)
    warnings = reset_warnings(applied)
    _warn(warnings)
    emit(as_json, {"automations": [a.automation.name for a in applied],
                   "applied": applied_report(applied), "warnings": warnings,
                   "deployments": sorted(registered.ids)},
         "applied: " + applied_line(applied))


@app.command("doctor")
def doctor_command(
    pool: Annotated[str | None, typer.Option("--pool", help="Also check this work pool.")]
    = None,
    as_json: JsonOpt = False,
) -> None:
    """Check this host's set-up end to end: the store block (with KRISTAL_STORE_BLOCK), settings,
    S3 endpoint, trust file (and its digest against the deployment's), activator key, Prefect
    API, lease storage, automations, pool.

    Example: KRISTAL_STORE_BLOCK=prod-eu kristalctl doctor --pool kristal
    """
    quiet_prefect()
    from kristal.doctor import Row, local_rows
    from tasks.doctor import expected_trust_sha256, prefect_rows, store_block_row

    api = prefect_rows(pool)
    block = store_block_row()  # None without KRISTAL_STORE_BLOCK
    rows: list[Row] = [block[0]] if block else []
    if block is None or block[1] is not None:
        rows += local_rows(expected_trust_sha256() if api and api[0].ok else None,
                           store=block[1] if block else None)
    rows += api
    docs: list[dict[str, Any]] = [r.__dict__ for r in rows]
    failed = [r for r in rows if not r.ok]
    emit(as_json, {"ok": not failed, "checks": docs},
         "\n".join(f"{'ok ' if r.ok else 'BAD'} {r.name}: {r.detail}" for r in rows))
    if failed:
        first = failed[0]
        cls = error_class(first.code or "") or UsageInvalid
        raise cls(f"doctor: {len(failed)} of {len(rows)} checks failed: "
                  + "; ".join(f"{r.name}: {r.detail}" for r in failed))
