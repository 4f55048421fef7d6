"""`kristalctl keys`, `dev`, `serve`, `demo` and `unlock`: keys, the local stack, serving the
deployments, the main job end to end, and freeing a channel lock whose holder is gone."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import Channel, JsonOpt, app, dev_app, keys_app
from flows.console import emit, quiet_prefect
from kristal.config import home_dir


@keys_app.command("generate")
def keys_generate(
    role: Annotated[str, typer.Option(
        "--role", help="publisher, validator, channel-authority or activator.")],
    key_id: Annotated[str, typer.Option(
        "--key-id", help="The key's id (letters, digits, '.', '_', '-'): its file names and "
        "trust entry.")],
    out: Annotated[Path, typer.Option(
        "--out", help="Directory to write the pair into (created if missing; an existing key "
        "is never overwritten).")],
    as_json: JsonOpt = False,
) -> None:
    """Write <key_id>.pem (PKCS#8, 0600) and <key_id>.pub.json into --out.

    Example: kristalctl keys generate --role activator --key-id activator-eu-1 --out ./keys
    """
    from kristal.trust.keys import generate_key

    trusted = generate_key(role, key_id, out)
    doc = trusted.model_dump(mode="json", exclude_none=True)
    emit(as_json, doc, f"{out / (key_id + '.pem')}\n{out / (key_id + '.pub.json')}")


@dev_app.command("up")
def dev_up_command(as_json: JsonOpt = False) -> None:
    """Start SeaweedFS and a Prefect server on 127.0.0.1 (what is not running: a component that
    died starts again on its ports and data); print `export` lines.

    Example: eval "$(kristalctl dev up)"
    """
    from kristal.dev.devstack import dev_up

    stack, started = dev_up(home_dir())
    exports = stack.exports()
    if started:  # stderr: stdout is for `eval`
        typer.echo(f"started {', '.join(started)} under {stack.dev_dir}", err=True)
    emit(as_json, {**exports, "started": started} if as_json else exports,
         "\n".join(f"export {k}={shlex.quote(v)}" for k, v in exports.items()))


@dev_app.command("status")
def dev_status_command(as_json: JsonOpt = False) -> None:
    """Each component of the local stack: running or not, pid, URL, data directory. Exit 0 when
    all run, 4 (`storage_unavailable`) when one does not (`kristalctl dev up` restarts it).

    Example: kristalctl dev status --json
    """
    from kristal.dev.devstack import stack_status
    from kristal.errors import StorageUnavailable

    home = home_dir()
    components = stack_status(home)
    if components is None:
        raise StorageUnavailable(f"no local stack under {home} (kristalctl dev up)")
    rows = [vars(c) for c in components]
    emit(as_json, {"home": str(home), "components": rows}, "\n".join(
        f"{c.name:<10} {'running' if c.running else 'DEAD':<8} pid {c.pid:<8} {c.url}  "
        f"data {c.data_dir}" for c in components))
    dead = [c.name for c in components if not c.running]
    if dead:
        raise StorageUnavailable(f"{', '.join(dead)} not running (kristalctl dev up restarts "
                                 "it on the same ports and data)")


@dev_app.command("down")
def dev_down_command(
    purge: Annotated[bool, typer.Option(
        "--purge", help="Also delete the bucket's data, Prefect's database and the cache "
        "(keys and trust file stay). Without it, nothing is deleted.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop the local stack started by `dev up`; its data stays for the next `dev up`.

    Examples: kristalctl dev down; kristalctl dev down --purge
    """
    from kristal.dev.devstack import dev_down

    done = dev_down(home_dir(), purge=purge)
    what = "stopped and purged" if purge else "stopped (data kept)"
    emit(as_json, {"stopped": done, "purged": purge and done},
         what if done else "no local stack was running")


@app.command("serve")
def serve_command() -> None:
    """Serve every deployment and apply the automations (blocks until stopped).

    Example: eval "$(kristalctl dev up)" && kristalctl serve
    """
    quiet_prefect()
    from deployments.serve import serve_all

    serve_all()


@app.command("demo")
def demo_command(as_json: JsonOpt = False) -> None:
    """The main job end to end on the local stack (the README's first command).

    Example: kristalctl demo
    """
    from flows.demo import run_demo

    run_demo(as_json=as_json)  # starts the stack first: Prefect must see PREFECT_API_URL


@app.command("unlock")
def unlock_command(channel: Channel, as_json: JsonOpt = False) -> None:
    """Free a channel lock whose holder is gone (e.g. its lease was lost to a Prefect server
    restart); refused while a live run holds it.

    Example: kristalctl unlock acme/prod/eu-west-1
    """
    import os

    from kristal.errors import UsageInvalid

    if not os.environ.get("PREFECT_API_URL"):
        raise UsageInvalid("unlock needs PREFECT_API_URL: the server whose lock to free",
                           field="PREFECT_API_URL")
    quiet_prefect()
    from tasks.locks import unlock_channel

    done = unlock_channel(channel)
    human = (f"{done['lock']}: freed (its holder was {done['holder'] or 'not recorded'})"
             if done["freed"] else f"{done['lock']}: not locked")
    emit(as_json, done, human)
