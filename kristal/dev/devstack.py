"""`kristalctl dev up | dev down`: the local stack (SeaweedFS S3 + Prefect server) on 127.0.0.1.

State lives in `$KRISTAL_HOME/dev/` (pids, ports, credentials, keys, trust file), so `dev up`
is idempotent: a stack that is still running is reused and its exports printed again.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from kristal.dev.processes import (
    SeaweedProcess,
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
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


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


def dev_up(home: Path) -> DevStack:
    home = home.expanduser().resolve()
    dev_dir = home / "dev"
    existing = load_stack(home)
    if existing and _alive(existing.s3_pid) and _alive(existing.prefect_pid):
        return existing
    if existing:
        dev_down(home)
    dev_dir.mkdir(parents=True, exist_ok=True)
    access_key = "kristal-dev"
    secret_key = secrets.token_hex(16)
    s3_dir = dev_dir / "seaweedfs"
    shutil.rmtree(s3_dir, ignore_errors=True)
    seaweed = start_seaweed(
        s3_dir, access_key=access_key, secret_key=secret_key, log_path=dev_dir / "seaweedfs.log"
    )
    try:
        prefect = start_prefect_server(dev_dir / "prefect", log_path=dev_dir / "prefect.log")
    except BaseException:
        stop_process(seaweed.pid)
        raise
    stack = DevStack(
        home=str(home),
        s3_pid=seaweed.pid,
        s3_endpoint=seaweed.endpoint_url,
        prefect_pid=prefect.pid,
        prefect_api_url=prefect.api_url,
        access_key=access_key,
        secret_key=secret_key,
        bucket=DEV_BUCKET,
        s3_ports=dict(seaweed.ports),
    )
    ObjectStore(
        StoreConfig(
            endpoint_url=stack.s3_endpoint,
            bucket=DEV_BUCKET,
            access_key=access_key,
            secret_key=secret_key,
        )
    ).ensure_bucket()
    ensure_dev_keys(dev_dir)
    _state_path(home).write_text(json.dumps(asdict(stack), indent=2) + "\n")
    return stack


def dev_down(home: Path) -> bool:
    home = home.expanduser().resolve()
    stack = load_stack(home)
    if stack is None:
        return False
    if _alive(stack.prefect_pid):
        stop_process(stack.prefect_pid)
    if _alive(stack.s3_pid):
        stop_seaweed(
            SeaweedProcess(
                pid=stack.s3_pid,
                s3_port=0,
                endpoint_url=stack.s3_endpoint,
                data_dir=stack.dev_dir / "seaweedfs",
                ports=stack.s3_ports or {},
            )
        )
    shutil.rmtree(stack.dev_dir / "seaweedfs", ignore_errors=True)
    _state_path(home).unlink(missing_ok=True)
    return True


def without_bakes(trust_file: Path) -> Path:
    """Make the `*` entry of a development trust file say "no bake" (tests and benchmarks opt
    into bakes where they measure them; the default policy would bake non-`dev` channels)."""
    doc = json.loads(trust_file.read_text())
    doc["channels"]["*"]["bake"] = {"duration": "0s"}
    trust_file.write_text(json.dumps(doc, indent=2))
    return trust_file
