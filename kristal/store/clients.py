"""The process's botocore clients, one per endpoint settings (and retry budget).

A client costs ~0.15 s to build (the S3 service model is parsed per session), so every
`ObjectStore` of a process (a context rebuilt for a changed trust file, a fleet's threads, the
CLI's own reads before a flow's) shares one. Clients are thread-safe; sessions are not, so they
are only touched under the lock.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from kristal.store.s3 import StoreConfig

_CLIENTS: dict[tuple[Any, ...], Any] = {}
_SESSIONS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def shared_client(config: StoreConfig, pool: int, *, attempts: int) -> Any:
    """The process's client for these settings, `attempts` total tries per request (1: the
    conditional writes' client, which botocore must never retry)."""
    who = (config.access_key, config.secret_key, config.region)
    key = (*who, config.endpoint_url, config.connect_timeout, config.read_timeout, pool,
           attempts)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            session = _SESSIONS.get(who)
            if session is None:
                session = _SESSIONS[who] = boto3.session.Session(
                    aws_access_key_id=config.access_key,
                    aws_secret_access_key=config.secret_key,
                    region_name=config.region,
                )
            client = _CLIENTS[key] = session.client(
                "s3",
                endpoint_url=config.endpoint_url,
                config=Config(
                    retries={"total_max_attempts": attempts, "mode": "standard"},
                    region_name=config.region,
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    connect_timeout=config.connect_timeout,
                    read_timeout=config.read_timeout,
                    # Staging downloads, manifest fetches and fleet threads share one client.
                    max_pool_connections=pool,
                    # Our sha256 is the integrity check; boto3>=1.36 default CRC checksums
                    # break several S3-compatible servers and cost a second pass over every
                    # byte.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
    return client
