"""`kristalctl doctor`, the Prefect part: the store block loads (with `KRISTAL_STORE_BLOCK` set;
the local rows then check its bucket), the API answers, the server keeps concurrency leases
somewhere that survives a restart, the automations are applied, and (with `--pool`) the work
pool exists with a worker seen lately. `expected_trust_sha256` is the trust-file digest the
deployment recorded (`kristalctl deploy` saves it as the Prefect variable
`kristal_trust_sha256`), so every worker can be checked against the same file.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kristal.config import store_block_name, store_env_ignored
from kristal.doctor import Row
from kristal.errors import KristalError
from kristal.store.s3 import StoreConfig
from tasks.names import (
    AUTO_ROLLBACK_ON_CHECK_FAILED,
    AUTO_ROLLBACK_ON_FAILED_RUN,
    CRASH_ZOMBIE_RUNS,
    TRUST_DIGEST_VARIABLE,
)

MEMORY_LEASES = "memory"
WORKER_SEEN = timedelta(minutes=2)


def expected_trust_sha256() -> str | None:
    from prefect.variables import Variable

    try:
        value = Variable.get(TRUST_DIGEST_VARIABLE, default=None)
    except Exception:
        return None
    return value if isinstance(value, str) else None


def store_block_row() -> tuple[Row, StoreConfig | None] | None:
    """The `store-block` row and the block's store (None if it did not load); None without
    `KRISTAL_STORE_BLOCK`. Names the store variables of this host the block overrides."""
    name = store_block_name()
    if name is None:
        return None
    from tasks.store_block import BLOCK_TYPE_SLUG, block_store_config

    try:
        config = block_store_config(name)
    except KristalError as exc:
        return Row("store-block", False, exc.message, exc.code), None
    ignored = store_env_ignored(config.access_key is not None)
    credentials = "from the block" if config.access_key else "from boto3's default chain"
    detail = (f"{BLOCK_TYPE_SLUG}/{name}: bucket {config.bucket} at "
              f"{config.endpoint_url or 'AWS'}, credentials {credentials}")
    if ignored:
        detail += f"; the block wins over this host's {', '.join(ignored)}"
    return Row("store-block", True, detail), config


def prefect_rows(pool: str | None) -> list[Row]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return [Row("prefect-api", False, "PREFECT_API_URL is not set (eval \"$(kristalctl dev "
                    "up)\", or point it at the server)", "usage_invalid")]
    rows: list[Row] = []
    with get_client(sync_client=True) as client:
        try:
            client.api_healthcheck()
            health = client.hello()
            rows.append(Row("prefect-api", health.status_code == 200, f"{url} answers"))
        except Exception as exc:
            return [Row("prefect-api", False, f"{url} does not answer: {exc}",
                        "storage_unavailable")]
        rows.append(_lease_storage(client))
        rows.append(_automations(client))
        if pool is not None:
            rows.append(_pool(client, pool))
    return rows


def _lease_storage(client: Any) -> Row:
    try:
        settings = client.request("GET", "/admin/settings").json()
    except Exception as exc:
        return Row("lease-storage", False, f"server settings unreadable: {exc}",
                   "storage_unavailable")
    storage = (settings.get("server", {}).get("concurrency", {}) or {}).get("lease_storage")
    if not storage or str(storage).endswith(MEMORY_LEASES):
        return Row("lease-storage", False, f"the server keeps leases in memory ({storage}): a "
                   "restart wedges a held channel lock; set PREFECT_SERVER_CONCURRENCY_LEASE_"
                   "STORAGE=prefect.server.concurrency.lease_storage.filesystem", "usage_invalid")
    return Row("lease-storage", True, str(storage))


def _automations(client: Any) -> Row:
    names = {a.name for a in client.read_automations()}
    wanted = [AUTO_ROLLBACK_ON_FAILED_RUN, AUTO_ROLLBACK_ON_CHECK_FAILED, CRASH_ZOMBIE_RUNS]
    missing = [n for n in wanted if n not in names]
    if missing:
        return Row("automations", False, "not applied: " + "; ".join(missing) +
                   " (kristalctl automations apply)", "usage_invalid")
    return Row("automations", True, f"{len(wanted)} applied")


def _pool(client: Any, pool: str) -> Row:
    from prefect.exceptions import ObjectNotFound

    try:
        found = client.read_work_pool(pool)
    except ObjectNotFound:
        return Row("work-pool", False, f"no work pool {pool} (kristalctl deploy --pool {pool})",
                   "usage_invalid")
    workers = client.read_workers_for_work_pool(pool)
    now = datetime.now(UTC)
    alive = [w for w in workers if w.last_heartbeat_time is not None
             and now - w.last_heartbeat_time < WORKER_SEEN]
    if not alive:
        return Row("work-pool", False, f"work pool {pool} ({found.type}) has no worker seen in "
                   f"the last {WORKER_SEEN.total_seconds():.0f}s (prefect worker start --pool "
                   f"{pool})", "storage_unavailable")
    return Row("work-pool", True, f"{pool} ({found.type}): {len(alive)} worker(s) alive")
