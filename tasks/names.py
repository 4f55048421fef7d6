"""Every name kristal-activate gives things in Prefect, in one place: channel lock (global
concurrency limit) names, event resource ids, artifact keys, deployment and automation names.
"""

from __future__ import annotations

import re

from kristal.formats.models import validate_channel_id

# Deployments (`<flow>/<deployment>`) and the automations that run them.
ROLLBACK_DEPLOYMENT = "rollback/rollback"
BAKE_DEPLOYMENT = "bake/bake"
AUTO_ROLLBACK_ON_FAILED_RUN = "kristal: roll back a failed activate or downgrade run"
AUTO_ROLLBACK_ON_CHECK_FAILED = "kristal: roll back on kristal.check.failed"
FOLLOWUP_NOTIFICATION = "kristal: carry rollback follow-ups to the tracker"
CRASH_ZOMBIE_RUNS = "kristal: mark runs whose heartbeats stopped Crashed"
OUTCOME_LOG_PREFIX = "kristal-outcome "  # a run's outcome, one JSON log line (--via-deployment)
TRUST_DIGEST_VARIABLE = "kristal_trust_sha256"  # the trust file every worker must hold
FOLLOWUP_BLOCK = "kristal-followup"

CHANNEL_RESOURCE_PREFIX = "kristal.channel."
_ARTIFACT_KEY = re.compile(r"[^a-z0-9-]+")


def lock_name(channel_id: str) -> str:
    """The channel's global concurrency limit: limit names may not contain `/` (DESIGN §6)."""
    tenant, environment, region = validate_channel_id(channel_id).split("/")
    return f"kristal-channel:{tenant}:{environment}:{region}"


def channel_of_lock(name: str) -> str | None:
    """The channel a lock name belongs to, or None for another limit."""
    if not name.startswith("kristal-channel:"):
        return None
    return name.removeprefix("kristal-channel:").replace(":", "/")


REGION_QUEUE_PREFIX = "kristal-"  # a region's work queue in the pool (a fleet fanned out)
ACTIVATE_DEPLOYMENT = "activate/activate"


def region_queue(region: str) -> str:
    """The work queue whose workers run a region's channels: `kristal-<region>`."""
    return f"{REGION_QUEUE_PREFIX}{region}"


def channel_region_queue(channel_id: str) -> str:
    return region_queue(validate_channel_id(channel_id).split("/")[2])


def channel_resource_id(channel_id: str) -> str:
    """Events about a channel: `kristal.channel.<tenant>.<env>.<region>` (DESIGN §8)."""
    tenant, environment, region = validate_channel_id(channel_id).split("/")
    return f"{CHANNEL_RESOURCE_PREFIX}{tenant}.{environment}.{region}"


def fleet_resource_id(fleet_key: str) -> str:
    return f"kristal.fleet.{fleet_key}"


def artifact_key(kind: str, scope: str) -> str:
    """`<kind>-<scope>` with the scope's `/` and any other character artifact keys do not
    allow (lowercase letters, digits and dashes only) turned into dashes."""
    return _ARTIFACT_KEY.sub("-", f"{kind}-{scope}".lower()).strip("-")
