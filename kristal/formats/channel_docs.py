"""Models of a channel's documents (DESIGN §5, §6): the signed index with its releases,
revocations and rollback authorizations, and the records this system writes (activation,
checks, quarantine).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from kristal.formats.bake_docs import BakePlan
from kristal.formats.models import NonEmpty, Sha256Id, Strict


# --- Channel index ----------------------------------------------------------------------------
class ReleaseEntry(Strict):
    release_id: int = Field(ge=1)
    generation: int = Field(ge=0)
    exchange_id: Sha256Id
    runtime_pack_ids: list[Sha256Id] = Field(min_length=1)
    federation_id: Sha256Id | None = None
    validation_report_ids: list[Sha256Id]
    published_at: datetime


class RevocationTarget(Strict):
    release_id: int | None = None
    artifact_id: Sha256Id | None = None


class Revocation(Strict):
    target: RevocationTarget
    reason_code: NonEmpty
    effective_at: datetime


class RollbackAuthorization(Strict):
    artifact_type: Literal["rollback_authorization"] = "rollback_authorization"
    authorization_id: Sha256Id
    channel_id: str
    target_release_id: int = Field(ge=1)
    target_runtime_pack_ids: list[Sha256Id] = Field(min_length=1)
    reason: NonEmpty
    issuer: NonEmpty
    issued_at: datetime
    expires_at: datetime
    signatures: list[dict[str, Any]] = Field(default_factory=list)


class ChannelIndex(Strict):
    artifact_type: Literal["channel_index"] = "channel_index"
    index_id: Sha256Id
    channel_id: str
    index_version: int = Field(ge=1)
    releases: list[ReleaseEntry]
    minimum_allowed_release_id: int = Field(ge=0)
    revoked: list[Revocation] = Field(default_factory=list)
    rollback_authorizations: list[dict[str, Any]] = Field(default_factory=list)
    expires_at: datetime
    updated_at: datetime | None = None
    signatures: list[dict[str, Any]] = Field(default_factory=list)

    def release(self, release_id: int) -> ReleaseEntry | None:
        return next((r for r in self.releases if r.release_id == release_id), None)

    def revocation_for(self, release: ReleaseEntry, now: datetime) -> Revocation | None:
        """The revocation in effect at `now` naming this release or any of its artifacts."""
        artifact_ids = {release.exchange_id, *release.runtime_pack_ids}
        if release.federation_id:
            artifact_ids.add(release.federation_id)
        for rev in self.revoked:
            if rev.effective_at > now:
                continue
            if rev.target.release_id == release.release_id:
                return rev
            if rev.target.artifact_id is not None and rev.target.artifact_id in artifact_ids:
                return rev
        return None


# --- Activation record (upstream v9 kristal_activation, extended) -----------------------------
class ReleaseRef(Strict):
    release_id: int
    generation: int
    exchange_id: Sha256Id
    runtime_pack_ids: list[Sha256Id]
    federation_id: Sha256Id | None = None

    @classmethod
    def of(cls, entry: ReleaseEntry) -> ReleaseRef:
        return cls(
            release_id=entry.release_id,
            generation=entry.generation,
            exchange_id=entry.exchange_id,
            runtime_pack_ids=list(entry.runtime_pack_ids),
            federation_id=entry.federation_id,
        )


class LastKnownGood(Strict):
    sequence: int
    release_id: int


ActivationKind = Literal["activate", "rollback", "auto_rollback", "downgrade"]


class ActivationRecord(Strict):
    schema_version: Literal["9.0"] = "9.0"
    artifact_type: Literal["kristal_activation"] = "kristal_activation"
    channel_id: str
    sequence: int = Field(ge=1)
    activation_id: str = Field(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
    )
    kind: ActivationKind
    active: ReleaseRef
    previous: ReleaseRef | None
    previous_sequence: int | None = None
    last_known_good: LastKnownGood | None
    highest_activated_release_id: int
    index_version: int
    rollback_mode: bool
    forced: bool
    operator: NonEmpty
    reason: NonEmpty
    correlation_id: NonEmpty
    flow_run_id: str | None
    created_at: datetime
    evidence: dict[str, Any]
    prev_record_sha256: Sha256Id | None
    # The bake this activation promised (None: none; a rollback never bakes).
    bake: BakePlan | None = None
    # Set by signing (DESIGN §6): the record's own ID and its activator signatures.
    record_id: Sha256Id | None = None
    signatures: list[dict[str, Any]] = Field(default_factory=list)


class CheckRecord(Strict):
    artifact_type: Literal["kristal_activation_checks"] = "kristal_activation_checks"
    channel_id: str
    sequence: int
    activation_id: str
    release_id: int
    result: Literal["passed", "failed"]
    reason: str
    figures: dict[str, Any]
    previous_figures: dict[str, Any] | None
    created_at: datetime
    record_id: Sha256Id | None = None
    signatures: list[dict[str, Any]] = Field(default_factory=list)


class QuarantineRecord(Strict):
    artifact_type: Literal["kristal_quarantine"] = "kristal_quarantine"
    channel_id: str
    release_id: int
    reason: str
    sequence: int
    activation_id: str
    created_at: datetime
    record_id: Sha256Id | None = None
    signatures: list[dict[str, Any]] = Field(default_factory=list)
