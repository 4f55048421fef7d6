"""The store as a Prefect block (issue 14): a `kristal-store` block holds the S3 endpoint,
bucket, prefix, region and credentials, so workers are pointed at one saved configuration
(`KRISTAL_STORE_BLOCK=NAME`) instead of each holding its own copy of the variables.

Rules this module keeps:
- Our own small block type, not prefect-aws's `AwsCredentials`/`S3Bucket` (prefect-aws 0.7.12
  pins boto3 below the 1.44 this project needs) and not a Secret plus a JSON block (two
  documents to keep in step, untyped fields, no form in the UI). The secret access key is a
  `SecretStr`: Prefect stores it encrypted and shows it only as `********` (the API hides it
  unless a client asks for secrets, as loading does); nothing here prints it.
- With `KRISTAL_STORE_BLOCK` set the block wins: endpoint, bucket, prefix, region and
  credentials are the block's, `KRISTAL_S3_ENDPOINT`/`_BUCKET`/`_PREFIX` and `AWS_*` are
  ignored (`kristalctl doctor` names any that are set). A block without credentials leaves them
  to boto3's default chain (instance role, profile, `AWS_*`). Timeouts stay this host's.
- A block that is missing, misnamed or not a valid `kristal-store` is `usage_invalid` (exit 2),
  raised before any flow run starts or anything is read from the store; a Prefect API that
  does not answer is `storage_unavailable` (exit 4).
- Without the variable nothing here runs: the store comes from the environment with no Prefect
  call (`tasks.runtime.settings_from_env`).
- A loaded block is kept for `CACHE_S` per process: a CLI's pre-flight and its flow load it
  once; a long-lived process (`respond`) sees a changed block within that time.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, ValidationError

from kristal.config import store_config_of
from kristal.errors import StorageUnavailable, UsageInvalid
from kristal.store.s3 import StoreConfig

BLOCK_TYPE_SLUG = "kristal-store"
CACHE_S = 30.0
_NAME = re.compile(r"^[a-z0-9-]+$")  # Prefect's rule for block document names
_cache: dict[str, tuple[float, StoreConfig]] = {}
_cache_lock = threading.Lock()


class KristalStore(Block):
    """Where kristal-activate's channels live: one bucket (and optional prefix) on an
    S3-compatible endpoint, with the credentials to reach it. Point a worker at it with
    KRISTAL_STORE_BLOCK=<block name>."""

    _block_type_name = "Kristal Store"
    _block_type_slug = BLOCK_TYPE_SLUG
    _description = ("The S3-compatible store of kristal-activate (endpoint, bucket, prefix, "
                    "region, credentials). Workers load it by name from KRISTAL_STORE_BLOCK.")

    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint URL; empty: AWS S3.")
    bucket: str = Field(description="The bucket holding the channels.")
    prefix: str = Field(default="", description="Optional key prefix inside the bucket.")
    region: str = Field(default="us-east-1", description="The bucket's region.")
    access_key_id: str | None = Field(
        default=None, description="Access key id; empty: boto3's default credential chain.")
    secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key (stored encrypted, never shown).")

    @classmethod
    def of(cls, config: StoreConfig) -> KristalStore:
        return cls(endpoint_url=config.endpoint_url, bucket=config.bucket, prefix=config.prefix,
                   region=config.region, access_key_id=config.access_key,
                   secret_access_key=SecretStr(config.secret_key) if config.secret_key else None)

    def store_config(self) -> StoreConfig:
        secret = self.secret_access_key.get_secret_value() if self.secret_access_key else None
        return store_config_of(endpoint_url=self.endpoint_url or None, bucket=self.bucket,
                               prefix=self.prefix, region=self.region,
                               access_key=self.access_key_id or None, secret_key=secret or None)

    def shown(self, name: str) -> dict[str, Any]:
        """What may be printed: every field, the secret as `********` (or null when unset)."""
        return {"block": f"{BLOCK_TYPE_SLUG}/{name}", "endpoint_url": self.endpoint_url,
                "bucket": self.bucket, "prefix": self.prefix, "region": self.region,
                "access_key_id": self.access_key_id,
                "secret_access_key": "********" if self.secret_access_key else None}


def checked_name(name: str) -> str:
    name = name.strip().removeprefix(f"{BLOCK_TYPE_SLUG}/")
    if not _NAME.match(name):
        raise UsageInvalid(f"store block name {name!r}: lowercase letters, digits and dashes "
                           "only", field="KRISTAL_STORE_BLOCK")
    return name


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UsageInvalid("a store block lives on a Prefect server: set PREFECT_API_URL (or "
                           "unset KRISTAL_STORE_BLOCK and set KRISTAL_S3_* / AWS_*)",
                           field="PREFECT_API_URL")
    return str(url)


def _unreachable(name: str, url: str, exc: Exception) -> StorageUnavailable:
    return StorageUnavailable(
        f"cannot load store block {BLOCK_TYPE_SLUG}/{name}: the Prefect API at {url} failed "
        f"({type(exc).__name__}: {exc}); without it, set KRISTAL_S3_* / AWS_* and unset "
        "KRISTAL_STORE_BLOCK (a break-glass rollback needs no Prefect)")


def load_store_block(name: str) -> KristalStore:
    """The `kristal-store` block `name`, secrets included; `usage_invalid` if there is none."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = checked_name(name)
    url = _api_url()
    try:
        with get_client(sync_client=True) as client:
            document = client.read_block_document_by_name(
                name=name, block_type_slug=BLOCK_TYPE_SLUG, include_secrets=True)
    except ObjectNotFound:
        raise UsageInvalid(f"no store block {BLOCK_TYPE_SLUG}/{name} on {url} (save one with "
                           f"`kristalctl config save-block {name}`)",
                           field="KRISTAL_STORE_BLOCK") from None
    except Exception as exc:
        raise _unreachable(name, url, exc) from None
    try:
        return KristalStore.model_validate(document.data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageInvalid(f"store block {BLOCK_TYPE_SLUG}/{name} is not a valid "
                           f"{BLOCK_TYPE_SLUG}: {'.'.join(map(str, first['loc']))}: "
                           f"{first['msg']}", field="KRISTAL_STORE_BLOCK") from None


def block_store_config(name: str) -> StoreConfig:
    """The store block `name` names, loaded at most every `CACHE_S` per process."""
    name = checked_name(name)
    with _cache_lock:
        cached = _cache.get(name)
    if cached is not None and time.monotonic() - cached[0] < CACHE_S:
        return cached[1]
    config = load_store_block(name).store_config()
    with _cache_lock:
        _cache[name] = (time.monotonic(), config)
    return config


def save_store_block(name: str, config: StoreConfig, *, overwrite: bool) -> KristalStore:
    """Save `config` as the block `name` (the block type is registered on first use)."""
    from prefect.exceptions import ObjectNotFound

    name = checked_name(name)
    url = _api_url()
    block = KristalStore.of(config)
    if not overwrite:
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                client.read_block_document_by_name(name=name, block_type_slug=BLOCK_TYPE_SLUG,
                                                   include_secrets=False)
        except ObjectNotFound:
            pass
        except Exception as exc:
            raise _unreachable(name, url, exc) from None
        else:
            raise UsageInvalid(f"store block {BLOCK_TYPE_SLUG}/{name} exists on {url}: "
                               "--overwrite replaces it")
    try:
        block.save(name, overwrite=True)
    except Exception as exc:
        raise _unreachable(name, url, exc) from None
    with _cache_lock:
        _cache.pop(name, None)
    return block
