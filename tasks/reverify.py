"""Thin Prefect tasks over `kristal.reverify`: one task per check group of a channel.

Read-only apart from the idempotent history repair, so never cached; storage hiccups retry
with backoff (`StorageUnavailable` only), a failed check never does: it is a row, not an error.
"""

from __future__ import annotations

from prefect import task

from kristal.formats.channel_docs import ActivationRecord
from kristal.operations import reverify
from kristal.operations.reverify import ChainOutcome, CheckRow
from tasks.activation import RETRYING
from tasks.runtime import domain_context


@task(name="list-channels", **RETRYING)
def list_channels() -> list[str]:
    return reverify.list_channels(domain_context())


@task(name="reverify-pointer-chain", **RETRYING)
def pointer_chain(channel_id: str) -> ChainOutcome:
    return reverify.check_pointer_chain(domain_context(), channel_id)


@task(name="reverify-trust", **RETRYING)
def trust(live: ActivationRecord) -> list[CheckRow]:
    return reverify.check_trust(domain_context(), live)


@task(name="reverify-objects", **RETRYING)
def objects(live: ActivationRecord) -> list[CheckRow]:
    return reverify.check_objects(domain_context(), live)


@task(name="reverify-local-index", **RETRYING)
def local_index(live: ActivationRecord) -> list[CheckRow]:
    return reverify.check_local_index(domain_context(), live)


@task(name="reverify-checks-record", **RETRYING)
def checks_record(live: ActivationRecord, checks_timeout_s: float) -> list[CheckRow]:
    return reverify.check_checks_record(
        domain_context(), live, checks_timeout_s=checks_timeout_s
    )
