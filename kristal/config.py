"""Settings read from the environment (DESIGN §9): the one reader of `KRISTAL_*` variables and
the one place for every default. Nothing here talks to the network.

`KRISTAL_HOME` holds local state (dev stack, keys, trust file, cache) unless a variable points
elsewhere.

The store (endpoint, bucket, prefix, region, credentials) comes from `KRISTAL_S3_*` / `AWS_*`,
or, with `KRISTAL_STORE_BLOCK` set, from that Prefect block (loaded in `tasks.store_block`,
since this package never imports Prefect): then the block wins for every field it holds and
those variables are ignored; the per-request timeouts and download deadlines stay this host's
(`store_config_of`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kristal.errors import UsageInvalid
from kristal.store.s3 import StoreConfig

DEFAULT_RETRY_DELAYS_S = (1.0, 2.0, 4.0)
DEFAULT_CHECKS_TIMEOUT_S = 900.0


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _float(name: str, default: float) -> float:
    text = _env(name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise UsageInvalid(f"{name}={text!r} is not a number", field=name) from None


def _positive(name: str, default: float) -> float:
    value = _float(name, default)
    if not value > 0 or value == float("inf"):
        raise UsageInvalid(f"{name}={value} must be a positive number", field=name)
    return value


def _floats(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    text = _env(name)
    if not text:
        return default
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageInvalid(f"{name}={text!r} is not a comma-separated list of seconds",
                           field=name) from None


def lease_renew_s() -> float:
    """Seconds between channel-lock lease renewals (`KRISTAL_LEASE_RENEW_S`, default 15)."""
    return _positive("KRISTAL_LEASE_RENEW_S", 15.0)


def lock_stale_s() -> float | None:
    """`KRISTAL_LOCK_STALE_S`: a lock holder not seen for this long is gone (default: four
    renewals)."""
    return _positive("KRISTAL_LOCK_STALE_S", 1.0) if _env("KRISTAL_LOCK_STALE_S") else None


def home_dir() -> Path:
    return Path(os.environ.get("KRISTAL_HOME") or Path.home() / ".kristal").expanduser()


# The variables a store block replaces (`store_env_ignored`): the block wins for these.
STORE_LOCATION_ENV = ("KRISTAL_S3_ENDPOINT", "KRISTAL_S3_BUCKET", "KRISTAL_S3_PREFIX",
                      "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                      "AWS_DEFAULT_REGION")


def store_block_name() -> str | None:
    """`KRISTAL_STORE_BLOCK`: the name of the `kristal-store` Prefect block this process takes
    its store from (`kristal-store/NAME` is accepted too); None: the environment's."""
    name = _env("KRISTAL_STORE_BLOCK").removeprefix("kristal-store/")
    return name or None


def store_env_ignored(block_has_credentials: bool) -> list[str]:
    """The store variables set in this environment that a store block overrides (the AWS key
    pair only if the block holds credentials: else boto3's chain may still read it)."""
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    return [name for name in STORE_LOCATION_ENV
            if _env(name) and (block_has_credentials or name not in keys)]


def store_config() -> StoreConfig:
    """KRISTAL_S3_* and AWS_* variables; no credentials -> boto3's default chain."""
    bucket = _env("KRISTAL_S3_BUCKET")
    if not bucket:
        raise UsageInvalid('KRISTAL_S3_BUCKET is not set (for the local stack: '
                           'eval "$(kristalctl dev up)"; or name a store block with '
                           'KRISTAL_STORE_BLOCK)', field="KRISTAL_S3_BUCKET")
    access_key = os.environ.get("AWS_ACCESS_KEY_ID") or None
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY") or None
    return store_config_of(
        endpoint_url=_env("KRISTAL_S3_ENDPOINT") or None,
        bucket=bucket,
        prefix=_env("KRISTAL_S3_PREFIX"),
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        access_key=access_key,
        secret_key=secret_key,
    )


def store_config_of(*, endpoint_url: str | None, bucket: str, prefix: str, region: str,
                    access_key: str | None, secret_key: str | None) -> StoreConfig:
    """A store at this location with these credentials (from the environment or a block),
    with this host's timeouts and download deadlines (`KRISTAL_S3_*_TIMEOUT_S`,
    `KRISTAL_DOWNLOAD_*`)."""
    if access_key is None or secret_key is None:
        # Half a key pair is useless; let boto3 find a whole one (profile, IMDS, ...).
        access_key = secret_key = None
    return StoreConfig(
        endpoint_url=endpoint_url,
        bucket=bucket,
        prefix=prefix,
        region=region or "us-east-1",
        access_key=access_key,
        secret_key=secret_key,
        connect_timeout=_float("KRISTAL_S3_CONNECT_TIMEOUT_S", 5.0),
        read_timeout=_float("KRISTAL_S3_READ_TIMEOUT_S", 30.0),
        deadline_base_s=_positive("KRISTAL_DOWNLOAD_DEADLINE_BASE_S", 30.0),
        min_bytes_per_s=_positive("KRISTAL_DOWNLOAD_MIN_BYTES_PER_S", 1_000_000.0),
    )


def trust_file_path() -> Path:
    """`KRISTAL_TRUST_FILE`, default `$KRISTAL_HOME/trust.json` (no store needed)."""
    return Path(os.environ.get("KRISTAL_TRUST_FILE") or home_dir() / "trust.json")


def key_dir() -> Path:
    """`KRISTAL_KEY_DIR`, default `$KRISTAL_HOME/keys` (no store needed)."""
    return Path(os.environ.get("KRISTAL_KEY_DIR") or home_dir() / "keys")


@dataclass(frozen=True)
class Settings:
    home: Path
    trust_file: Path
    key_dir: Path
    cache_dir: Path
    store: StoreConfig
    checks_timeout_s: float
    retry_delays_s: tuple[float, ...] = DEFAULT_RETRY_DELAYS_S

    @classmethod
    def from_env(cls, store: StoreConfig | None = None) -> Settings:
        """Everything from the environment; the store too unless given (a store block's,
        `tasks.runtime.settings_from_env`)."""
        home = home_dir()
        return cls(
            home=home,
            trust_file=trust_file_path(),
            key_dir=key_dir(),
            cache_dir=Path(os.environ.get("KRISTAL_CACHE_DIR") or home / "cache"),
            store=store or store_config(),
            checks_timeout_s=_float("KRISTAL_CHECKS_TIMEOUT_S", DEFAULT_CHECKS_TIMEOUT_S),
            retry_delays_s=_floats("KRISTAL_RETRY_DELAYS_S", DEFAULT_RETRY_DELAYS_S),
        )


@dataclass(frozen=True)
class ServeSettings:
    """What `kristalctl serve` and the automations read."""

    reverify_cron: str
    reverify_timezone: str
    followup_webhook_url: str | None

    @classmethod
    def from_env(cls) -> ServeSettings:
        return cls(
            reverify_cron=_env("KRISTAL_REVERIFY_CRON", "0 3 * * *"),
            reverify_timezone=_env("KRISTAL_REVERIFY_TIMEZONE", "Europe/Paris"),
            followup_webhook_url=_env("KRISTAL_FOLLOWUP_WEBHOOK_URL") or None,
        )


def s3_endpoint_set() -> bool:
    """Whether `KRISTAL_S3_ENDPOINT` names an endpoint (the demo then uses it as it is)."""
    return bool(_env("KRISTAL_S3_ENDPOINT"))


def verbose() -> bool:
    """`KRISTAL_VERBOSE`: show Prefect's console logs from the CLI."""
    return bool(_env("KRISTAL_VERBOSE"))


def crash_request() -> tuple[str | None, str | None]:
    """(`KRISTAL_CRASH_AT`, `KRISTAL_CRASH_ARMED_FILE`) for kill -9 tests (`crashpoints`)."""
    return os.environ.get("KRISTAL_CRASH_AT"), os.environ.get("KRISTAL_CRASH_ARMED_FILE")


def hold_dir() -> str | None:
    """`KRISTAL_HOLD_DIR`: where tests arm hold points (`crashpoints`)."""
    return _env("KRISTAL_HOLD_DIR") or None


def zombie_after_s() -> float:
    """`KRISTAL_ZOMBIE_AFTER_S` (default 90): a run of ours with no heartbeat for this long is
    marked Crashed. Heartbeats come every 30 s (Prefect's minimum), so at least 35."""
    value = _positive("KRISTAL_ZOMBIE_AFTER_S", 90.0)
    if value < 35:
        raise UsageInvalid(f"KRISTAL_ZOMBIE_AFTER_S={value:g} must be at least 35 (heartbeats "
                           "come every 30 s)", field="KRISTAL_ZOMBIE_AFTER_S")
    return value


def retry_delays_s() -> tuple[float, ...]:
    """`KRISTAL_RETRY_DELAYS_S` (seconds before each retry of a storage hiccup), without
    needing the rest of the settings."""
    return _floats("KRISTAL_RETRY_DELAYS_S", DEFAULT_RETRY_DELAYS_S)


def checks_timeout_s() -> float:
    """`KRISTAL_CHECKS_TIMEOUT_S`, without needing the rest of the settings."""
    return _float("KRISTAL_CHECKS_TIMEOUT_S", DEFAULT_CHECKS_TIMEOUT_S)


def fanout_start_timeout_s() -> float:
    """`KRISTAL_FANOUT_START_TIMEOUT_S` (default 300): a fanned-out fleet's channel run that no
    worker has started after this long is cancelled (`worker_unavailable`)."""
    return _positive("KRISTAL_FANOUT_START_TIMEOUT_S", 300.0)


@dataclass(frozen=True)
class PrometheusSettings:
    """Where a bake's metric checks are sent (`KRISTAL_PROMETHEUS_URL`, e.g.
    `http://127.0.0.1:9090`), with a bearer token (`KRISTAL_PROMETHEUS_TOKEN`) or basic auth
    (`KRISTAL_PROMETHEUS_USER`, `KRISTAL_PROMETHEUS_PASSWORD`), each query bounded by
    `KRISTAL_PROMETHEUS_TIMEOUT_S` (default 5)."""

    url: str
    token: str | None = None
    user: str | None = None
    password: str | None = None
    timeout_s: float = 5.0


def prometheus_settings() -> PrometheusSettings | None:
    url = _env("KRISTAL_PROMETHEUS_URL").rstrip("/")
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise UsageInvalid(f"KRISTAL_PROMETHEUS_URL={url!r} is not an http(s) URL",
                           field="KRISTAL_PROMETHEUS_URL")
    return PrometheusSettings(
        url=url, token=_env("KRISTAL_PROMETHEUS_TOKEN") or None,
        user=_env("KRISTAL_PROMETHEUS_USER") or None,
        password=_env("KRISTAL_PROMETHEUS_PASSWORD") or None,
        timeout_s=_positive("KRISTAL_PROMETHEUS_TIMEOUT_S", 5.0),
    )


def bake_launch() -> str:
    """`KRISTAL_BAKE_LAUNCH`: `auto` (default) starts a bake run after an activation that
    bakes; `none` leaves it to `kristalctl bake` (a test, or a host that runs bakes itself)."""
    value = _env("KRISTAL_BAKE_LAUNCH", "auto") or "auto"
    if value not in ("auto", "none"):
        raise UsageInvalid(f"KRISTAL_BAKE_LAUNCH={value!r} must be auto or none",
                           field="KRISTAL_BAKE_LAUNCH")
    return value


def cache_exchange_blobs() -> bool:
    """`KRISTAL_CACHE_EXCHANGE_BLOBS` (default on): keep an Exchange's blobs in the cache once
    verified. Off, they are hashed in flight and not kept (the query layer never reads them):
    less disk, but every staging (a rollback's too) downloads them again."""
    return _env("KRISTAL_CACHE_EXCHANGE_BLOBS", "1").lower() not in ("0", "false", "no", "off")
