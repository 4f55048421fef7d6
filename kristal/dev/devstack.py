"""`kristalctl dev up | status | down`: the local stack (SeaweedFS S3 + Prefect server) on
127.0.0.1, keeping its data.

State lives in `$KRISTAL_HOME/dev/` (pids, ports, credentials, keys, trust file, the bucket's
data, Prefect's database). `dev up` is idempotent: a running component is reused, one that
died is started again on the same ports and data, so the printed exports (and a `serve`
polling that API) stay right; `dev down` stops both and keeps everything; only
`dev down --purge` deletes the data (keys and trust file stay).
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from kristal.dev.processes import (
    SeaweedProcess,
    process_running,
    start_prefect_server,
    start_seaweed,
    stop_process,
    stop_seaweed,
)
from kristal.store.s3 import ObjectStore, StoreConfig
from kristal.trust.keys import generate_key

DEV_BUCKET = "kristal-dev"
DEV_ROLES = ("publisher", "validator", "channel-authority", "activator")


@dataclass
class DevStack:
    home: str
    s3_pid: int
    s3_endpoint: str
    prefect_pid: int
    prefect_api_url: str
    access_key: str
    secret_key: str
    bucket: str
    s3_ports: dict[str, int] | None = None

    @property
    def dev_dir(self) -> Path:
        return Path(self.home) / "dev"

    def exports(self) -> dict[str, str]:
        return {
            "KRISTAL_HOME": self.home,
            "KRISTAL_S3_ENDPOINT": self.s3_endpoint,
            "KRISTAL_S3_BUCKET": self.bucket,
            "KRISTAL_S3_PREFIX": "",
            "KRISTAL_TRUST_FILE": str(self.dev_dir / "trust.json"),
            "KRISTAL_KEY_DIR": str(self.dev_dir / "keys"),
            "KRISTAL_CACHE_DIR": str(self.dev_dir / "cache"),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "PREFECT_API_URL": self.prefect_api_url,
        }


def _alive(pid: int) -> bool:
    return process_running(pid)


def _state_path(home: Path) -> Path:
    return home / "dev" / "stack.json"


def load_stack(home: Path) -> DevStack | None:
    path = _state_path(home)
    if not path.exists():
        return None
    return DevStack(**json.loads(path.read_text()))


def ensure_dev_keys(dev_dir: Path) -> Path:
    """Development key set (one key per role) and a trust file whose `*` entry trusts them."""
    key_dir = dev_dir / "keys"
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = []
    for role in DEV_ROLES:
        key_id = f"dev-{role}"
        pub = key_dir / f"{key_id}.pub.json"
        if pub.exists():
            keys.append(json.loads(pub.read_text()))
        else:
            keys.append(
                generate_key(role, key_id, key_dir).model_dump(mode="json", exclude_none=True)
            )
    trust_path = dev_dir / "trust.json"
    if not trust_path.exists():
        trust = {
            "channels": {
                "*": {
                    "keys": keys,
                    "revoked_key_ids": [],
                    "thresholds": dict.fromkeys(DEV_ROLES, 1),
                    "required_profiles": ["schema", "ordering", "row-count", "source-binding"],
                }
            }
        }
        trust_path.write_text(json.dumps(trust, indent=2) + "\n")
    else:
        # A development home from before a role existed (the activator): trust its new key.
        trust = json.loads(trust_path.read_text())
        entry = trust.get("channels", {}).get("*")
        if isinstance(entry, dict) and isinstance(entry.get("keys"), list):
            known = {k.get("key_id") for k in entry["keys"] if isinstance(k, dict)}
            missing = [k for k in keys if k["key_id"] not in known]
            if missing:
                entry["keys"].extend(missing)
                trust_path.write_text(json.dumps(trust, indent=2) + "\n")
    return trust_path


def dev_env(home: Path, config: StoreConfig) -> dict[str, str]:
    """The KRISTAL_*/AWS_* settings of a development home on a given store (keys + trust made)."""
    dev_dir = home / "dev"
    trust_file = ensure_dev_keys(dev_dir)
    return {
        "KRISTAL_HOME": str(home),
        "KRISTAL_S3_ENDPOINT": config.endpoint_url or "",
        "KRISTAL_S3_BUCKET": config.bucket,
        "KRISTAL_S3_PREFIX": config.prefix,
        "KRISTAL_TRUST_FILE": str(trust_file),
        "KRISTAL_KEY_DIR": str(dev_dir / "keys"),
        "KRISTAL_CACHE_DIR": str(home / "cache"),
        "AWS_ACCESS_KEY_ID": config.access_key or "",
        "AWS_SECRET_ACCESS_KEY": config.secret_key or "",
    }


@dataclass
class Component:
    """One process of the stack, as `dev status` shows it."""

    name: str
    pid: int
    running: bool
    url: str
    data_dir: str


def stack_status(home: Path) -> list[Component] | None:
    """Each component of the stack under `home` (None: `dev up` never ran there, or purged)."""
    home = home.expanduser().resolve()
    stack = load_stack(home)
    if stack is None:
        return None
    return [
        Component("seaweedfs", stack.s3_pid, _alive(stack.s3_pid), stack.s3_endpoint,
                  str(stack.dev_dir / "seaweedfs")),
        Component("prefect", stack.prefect_pid, _alive(stack.prefect_pid),
                  stack.prefect_api_url, str(stack.dev_dir / "prefect")),
    ]


def dev_up(home: Path) -> tuple[DevStack, list[str]]:
    """Start what is not running, on the ports and data of the earlier start if there was one;
    returns the stack and what was (re)started (empty: all was running)."""
    home = home.expanduser().resolve()
    dev_dir = home / "dev"
    dev_dir.mkdir(parents=True, exist_ok=True)
    stack = load_stack(home)
    started: list[str] = []
    access_key = stack.access_key if stack else "kristal-dev"
    secret_key = stack.secret_key if stack else secrets.token_hex(16)
    s3_dir = dev_dir / "seaweedfs"
    seaweed: SeaweedProcess | None = None
    if stack is None or not _alive(stack.s3_pid):
        seaweed = start_seaweed(s3_dir, access_key=access_key, secret_key=secret_key,
                                log_path=dev_dir / "seaweedfs.log",
                                ports=stack.s3_ports if stack else None)
        started.append("seaweedfs")
    if stack is None or not _alive(stack.prefect_pid):
        port = int(stack.prefect_api_url.rsplit(":", 1)[1].split("/")[0]) if stack else None
        try:
            prefect = start_prefect_server(dev_dir / "prefect", log_path=dev_dir / "prefect.log",
                                           port=port)
        except BaseException:
            if seaweed is not None:
                stop_seaweed(seaweed)
            raise
        prefect_pid, prefect_url = prefect.pid, prefect.api_url
        started.append("prefect")
    else:
        prefect_pid, prefect_url = stack.prefect_pid, stack.prefect_api_url
    s3_ports: dict[str, int] | None
    if seaweed is not None:
        s3_pid, s3_endpoint, s3_ports = seaweed.pid, seaweed.endpoint_url, dict(seaweed.ports)
    else:
        assert stack is not None
        s3_pid, s3_endpoint, s3_ports = stack.s3_pid, stack.s3_endpoint, stack.s3_ports
    stack = DevStack(home=str(home), s3_pid=s3_pid, s3_endpoint=s3_endpoint,
                     prefect_pid=prefect_pid, prefect_api_url=prefect_url,
                     access_key=access_key, secret_key=secret_key, bucket=DEV_BUCKET,
                     s3_ports=s3_ports)
    if "seaweedfs" in started:
        ObjectStore(StoreConfig(endpoint_url=stack.s3_endpoint, bucket=DEV_BUCKET,
                                access_key=access_key, secret_key=secret_key)).ensure_bucket()
    ensure_dev_keys(dev_dir)
    _state_path(home).write_text(json.dumps(asdict(stack), indent=2) + "\n")
    return stack, started


def dev_down(home: Path, *, purge: bool = False) -> bool:
    """Stop the stack; its data stays unless `purge`. False: nothing was running (or, with
    `purge`, nothing was there to delete)."""
    home = home.expanduser().resolve()
    stack = load_stack(home)
    if stack is None:
        return False
    stopped = False
    if _alive(stack.prefect_pid):
        stop_process(stack.prefect_pid)
        stopped = True
    if _alive(stack.s3_pid):
        stop_seaweed(SeaweedProcess(pid=stack.s3_pid, s3_port=0, endpoint_url=stack.s3_endpoint,
                                    data_dir=stack.dev_dir / "seaweedfs",
                                    ports=stack.s3_ports or {}))
        stopped = True
    if purge:
        for data in ("seaweedfs", "prefect", "cache"):
            shutil.rmtree(stack.dev_dir / data, ignore_errors=True)
        _state_path(home).unlink(missing_ok=True)
        return True
    return stopped


def without_bakes(trust_file: Path) -> Path:
    """Make the `*` entry of a development trust file say "no bake" (tests and benchmarks opt
    into bakes where they measure them; the default policy would bake non-`dev` channels)."""
    doc = json.loads(trust_file.read_text())
    doc["channels"]["*"]["bake"] = {"duration": "0s"}
    trust_file.write_text(json.dumps(doc, indent=2))
    return trust_file
