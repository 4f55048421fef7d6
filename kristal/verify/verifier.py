"""Verification of one release as an ordered state machine (after python-tuf's ngclient).

Rules, in the order `ReleaseVerifier` enforces them (bytes in, verified objects or one coded
error out; no I/O here):
1. The channel index parses, hashes to its `index_id`, is signed by `channel-authority` keys of
   this channel's trust entry (threshold), names this channel, has not expired, and its
   `index_version` is not lower than the version the live record used (`index_replayed`).
2. The release is chosen from that index only: by `release_id`, or by exact IDs that must equal
   one entry (`release_id_substitution_blocked` otherwise). Revocations of the release or any of
   its artifacts refuse it.
3. The Exchange hashes to the entry's `exchange_id`, is signed by `publisher`, carries the
   release's generation, and lists its blobs with safe paths.
4. A federation root (when the entry has one) hashes to `federation_id`, is signed by
   `publisher`, carries the generation, and each shard Exchange hashes to its
   `shard_manifest_hash` with the root's `schema_version` major and the release's generation.
5. Each Runtime Pack hashes to its ID, is signed by `publisher`, was built from exactly this
   Exchange (ID and manifest bytes), carries the generation, declares a supported profile, and
   its expectations parse.
6. Every required profile of the channel (the trust file's, never the publisher's) has a passed
   validation report bound to exactly these IDs, signed by `validator`, unexpired.
Payload bytes are checked where they are read (streaming, in staging), against the inventories
this machine returns; no inventory is trusted before step 5 passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

from kristal.channel.index import verify_index
from kristal.errors import (
    ActivationAborted,
    GenerationMismatch,
    IndexExpired,
    IndexReplayed,
    ManifestSchemaInvalid,
    ProfileUnsupported,
    ReleaseIdSubstitutionBlocked,
    ReleaseRevoked,
    ReleaseUnknown,
    RuntimePackRevoked,
    SourceExchangeMismatch,
    ValidationFailed,
    ValidationReportMissing,
)
from kristal.formats.artifacts import (
    ExchangeManifest,
    FederationManifest,
    FileEntry,
    RuntimePackManifest,
    ValidationReport,
)
from kristal.formats.canonical import parse_json, sha256_hex
from kristal.formats.channel_docs import ChannelIndex, ReleaseEntry
from kristal.formats.expectations import Expectations
from kristal.formats.identity import DocKind, verify_identity
from kristal.formats.models import EXPECTATIONS_EXT, SHARD_MAJOR, SQLITE_PROFILE, M, parse_model
from kristal.trust.roots import ChannelTrust
from kristal.trust.signing import require_signatures

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
SUPPORTED_PROFILES = frozenset({SQLITE_PROFILE})


def parse_signed(
    raw: bytes,
    kind: DocKind,
    model: type[M],
    trust: ChannelTrust,
    role: str,
    *,
    now: datetime,
    what: str,
) -> tuple[M, dict[str, Any], str]:
    """Strict-parse `raw`, validate its shape, recompute its ID and require `role` signatures."""
    doc = parse_json(raw, max_bytes=MAX_MANIFEST_BYTES, what=what)
    if not isinstance(doc, dict):
        raise ManifestSchemaInvalid(f"{what} is not a JSON object")
    parsed = parse_model(model, doc, what=what)
    verify_identity(doc, kind)
    artifact_id = require_signatures(doc, kind, trust, role, now=now, what=what)
    return parsed, doc, artifact_id


@dataclass(frozen=True)
class VerifiedPack:
    pack_id: str
    manifest: RuntimePackManifest
    expectations: Expectations


@dataclass
class VerifiedRelease:
    """What a caller may rely on once `ReleaseVerifier.finish()` returned."""

    channel_id: str
    index: ChannelIndex
    entry: ReleaseEntry
    exchange: ExchangeManifest
    exchange_manifest_sha256: str
    packs: list[VerifiedPack]
    federation: FederationManifest | None
    shard_exchanges: list[ExchangeManifest]
    report_ids: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)

    def exchange_blobs(self) -> list[FileEntry]:
        return self.exchange.blobs()


class _Step(IntEnum):
    START = 0
    INDEX = 1
    RELEASE = 2
    EXCHANGE = 3
    FEDERATION = 4
    PACKS = 5
    REPORTS = 6


class ReleaseVerifier:
    """Walks the steps of the module docstring in order; calling one out of order raises."""

    def __init__(
        self, channel_id: str, trust: ChannelTrust, *, now: datetime, min_index_version: int = 0
    ) -> None:
        self.channel_id = channel_id
        self.trust = trust
        self.now = now
        self.min_index_version = min_index_version
        self._step = _Step.START
        self.index: ChannelIndex | None = None
        self.entry: ReleaseEntry | None = None
        self.exchange: ExchangeManifest | None = None
        self.exchange_sha256 = ""
        self.federation: FederationManifest | None = None
        self.shards: list[ExchangeManifest] = []
        self.packs: list[VerifiedPack] = []
        self.report_ids: list[str] = []
        self.evidence: dict[str, Any] = {}

    def _advance(self, expected: _Step, to: _Step) -> None:
        if self._step != expected:
            raise ActivationAborted(f"verification step {to.name} called after {self._step.name}")
        self._step = to

    def _publisher_doc(
        self, raw: bytes, kind: DocKind, model: type[M], expected_id: str, what: str,
        named_by: str = "the index",
    ) -> tuple[M, str]:
        """A publisher-signed document that must hash to the ID the signed index (or root) names."""
        parsed, _doc, artifact_id = parse_signed(
            raw, kind, model, self.trust, "publisher", now=self.now, what=what
        )
        if artifact_id != expected_id:
            raise ReleaseIdSubstitutionBlocked(
                f"{what} hashes to {artifact_id}, {named_by} names {expected_id}"
            )
        return parsed, artifact_id

    # 1 ---------------------------------------------------------------------------------------
    def update_index(self, raw: bytes) -> ChannelIndex:
        self._advance(_Step.START, _Step.INDEX)
        index, index_id = verify_index(raw, self.channel_id, self.trust, now=self.now)
        if index.expires_at <= self.now:
            raise IndexExpired(
                f"channel index v{index.index_version} expired at {index.expires_at}"
            )
        if index.index_version < self.min_index_version:
            raise IndexReplayed(
                f"channel index v{index.index_version} is older than v{self.min_index_version}, "
                "which the live activation already used"
            )
        self.index = index
        self.evidence["index"] = {"index_id": index_id, "index_version": index.index_version}
        return index

    # 2 ---------------------------------------------------------------------------------------
    def select_release(
        self,
        release_id: int | None = None,
        *,
        exchange_id: str | None = None,
        pack_ids: list[str] | None = None,
    ) -> ReleaseEntry:
        self._advance(_Step.INDEX, _Step.RELEASE)
        assert self.index is not None
        entry = select_entry(self.index, release_id, exchange_id=exchange_id, pack_ids=pack_ids)
        refuse_revoked(self.index, entry, self.now)
        self.entry = entry
        self.evidence["release"] = {"release_id": entry.release_id, "generation": entry.generation}
        return entry

    # 3 ---------------------------------------------------------------------------------------
    def update_exchange(self, raw: bytes) -> ExchangeManifest:
        self._advance(_Step.RELEASE, _Step.EXCHANGE)
        assert self.entry is not None
        exchange, exchange_id = self._publisher_doc(
            raw, DocKind.EXCHANGE, ExchangeManifest, self.entry.exchange_id, "exchange manifest"
        )
        _require_generation("exchange", exchange.generation(), self.entry.generation)
        if exchange.federation_id() != self.entry.federation_id:
            raise ReleaseIdSubstitutionBlocked(
                f"exchange binds federation root {exchange.federation_id()}, the index names "
                f"{self.entry.federation_id}"
            )
        exchange.blobs()  # inventory shape and paths, before anything is downloaded
        self.exchange = exchange
        self.exchange_sha256 = sha256_hex(raw)
        self.evidence["exchange"] = {"id": exchange_id, "manifest_sha256": self.exchange_sha256}
        return exchange

    # 4 ---------------------------------------------------------------------------------------
    def update_federation(self, raw_root: bytes | None, raw_shards: list[bytes]) -> None:
        self._advance(_Step.EXCHANGE, _Step.FEDERATION)
        assert self.entry is not None
        if self.entry.federation_id is None:
            if raw_root is not None:
                raise ManifestSchemaInvalid("federation root given for a release without one")
            return
        if raw_root is None:
            raise ManifestSchemaInvalid("release names a federation root that was not supplied")
        root, federation_id = self._publisher_doc(
            raw_root, DocKind.FEDERATION, FederationManifest, self.entry.federation_id,
            "federation root",
        )
        _require_generation("federation root", root.generation(), self.entry.generation)
        if len(raw_shards) != len(root.shards):
            raise ManifestSchemaInvalid(
                f"federation root lists {len(root.shards)} shards, {len(raw_shards)} supplied"
            )
        root_major = _major(root.schema_version)
        shards: list[ExchangeManifest] = []
        for ref, raw in zip(root.shards, raw_shards, strict=True):
            shard, _shard_id = self._publisher_doc(
                raw, DocKind.EXCHANGE, ExchangeManifest, ref.shard_manifest_hash,
                f"shard exchange {ref.shard_id}", named_by="the federation root",
            )
            if _major(shard.schema_version) != root_major:
                raise GenerationMismatch(
                    f"shard {ref.shard_id} has schema {shard.schema_version}, the root "
                    f"{root.schema_version}: a federation root may not mix shard formats"
                )
            _require_generation(f"shard {ref.shard_id}", shard.generation(), self.entry.generation)
            shard.blobs()
            shards.append(shard)
        self.federation = root
        self.shards = shards
        self.evidence["federation"] = {"id": federation_id, "shards": len(shards)}

    # 5 ---------------------------------------------------------------------------------------
    def update_packs(self, raw_packs: list[bytes]) -> list[VerifiedPack]:
        self._advance(_Step.FEDERATION, _Step.PACKS)
        assert self.entry is not None and self.index is not None
        if len(raw_packs) != len(self.entry.runtime_pack_ids):
            raise ManifestSchemaInvalid("not every runtime pack of the release was supplied")
        verified: list[VerifiedPack] = []
        for expected_id, raw in zip(self.entry.runtime_pack_ids, raw_packs, strict=True):
            pack, pack_id = self._publisher_doc(
                raw, DocKind.RUNTIME_PACK, RuntimePackManifest, expected_id, "runtime pack manifest"
            )
            ref = pack.source_exchange_ref
            if ref.exchange_id != self.entry.exchange_id:
                raise SourceExchangeMismatch(
                    f"runtime pack {pack_id} was built from {ref.exchange_id}, "
                    f"not this release's exchange {self.entry.exchange_id}"
                )
            if ref.exchange_manifest_hash != "sha256:" + self.exchange_sha256:
                raise SourceExchangeMismatch(
                    f"runtime pack {pack_id} names exchange manifest {ref.exchange_manifest_hash}, "
                    f"the manifest read hashes to sha256:{self.exchange_sha256}"
                )
            _require_generation(f"runtime pack {pack_id}", pack.generation(), self.entry.generation)
            profiles = set(pack.profiles or [])
            if not profiles & SUPPORTED_PROFILES:
                raise ProfileUnsupported(
                    f"runtime pack {pack_id} declares profiles {sorted(profiles)}; supported: "
                    f"{sorted(SUPPORTED_PROFILES)}"
                )
            raw_expect = (pack.extensions or {}).get(EXPECTATIONS_EXT)
            if raw_expect is None:
                raise ManifestSchemaInvalid(
                    f"runtime pack {pack_id} carries no {EXPECTATIONS_EXT}", field="extensions"
                )
            expectations = parse_model(Expectations, raw_expect, what=f"expectations of {pack_id}")
            verified.append(VerifiedPack(pack_id, pack, expectations))
        self.packs = verified
        self.evidence["runtime_packs"] = [p.pack_id for p in verified]
        return verified

    # 6 ---------------------------------------------------------------------------------------
    def update_reports(self, raw_reports: list[bytes]) -> list[str]:
        self._advance(_Step.PACKS, _Step.REPORTS)
        assert self.entry is not None
        must_cover = {self.entry.exchange_id, *self.entry.runtime_pack_ids}
        if self.entry.federation_id:
            must_cover.add(self.entry.federation_id)
        passed: dict[str, str] = {}
        failures: list[str] = []
        for raw in raw_reports:
            report, _doc, report_id = parse_signed(
                raw,
                DocKind.VALIDATION_REPORT,
                ValidationReport,
                self.trust,
                "validator",
                now=self.now,
                what="validation report",
            )
            if report_id not in self.entry.validation_report_ids:
                continue  # only the reports the signed index binds to this release count
            if not must_cover <= set(report.target_artifact_ids):
                continue  # a report that passed for other IDs proves nothing
            if report.expires_at <= self.now:
                failures.append(
                    f"{report.profile} report {report_id} expired at {report.expires_at}"
                )
                continue
            if report.result != "passed":
                failed = [f.check_id for f in report.findings if f.status == "failed"]
                raise ValidationFailed(
                    f"validation profile {report.profile!r} failed for this release: {failed}"
                )
            passed.setdefault(report.profile, report_id)
        missing = [p for p in self.trust.required_profiles if p not in passed]
        if missing:
            detail = f" ({'; '.join(failures)})" if failures else ""
            raise ValidationReportMissing(
                "no passed, unexpired report bound to this release for profile(s) "
                f"{missing}{detail}"
            )
        self.report_ids = [passed[p] for p in self.trust.required_profiles]
        self.evidence["validation_reports"] = dict(passed)
        return self.report_ids

    def finish(self) -> VerifiedRelease:
        if self._step != _Step.REPORTS:
            raise ActivationAborted(f"verification incomplete: stopped after {self._step.name}")
        assert self.index and self.entry and self.exchange
        return VerifiedRelease(
            channel_id=self.channel_id,
            index=self.index,
            entry=self.entry,
            exchange=self.exchange,
            exchange_manifest_sha256=self.exchange_sha256,
            packs=self.packs,
            federation=self.federation,
            shard_exchanges=self.shards,
            report_ids=self.report_ids,
            evidence=self.evidence,
        )


def select_entry(
    index: ChannelIndex,
    release_id: int | None,
    *,
    exchange_id: str | None = None,
    pack_ids: list[str] | None = None,
) -> ReleaseEntry:
    """The index entry for a release id, or the one entry that exact IDs name."""
    if release_id is not None:
        entry = index.release(release_id)
        if entry is None:
            raise ReleaseUnknown(
                f"release {release_id} is not in the channel index of {index.channel_id}")
        if exchange_id is not None and exchange_id != entry.exchange_id:
            raise ReleaseIdSubstitutionBlocked(f"release {release_id} does not bind {exchange_id}")
        if pack_ids is not None and sorted(pack_ids) != sorted(entry.runtime_pack_ids):
            raise ReleaseIdSubstitutionBlocked(
                f"release {release_id} does not bind packs {pack_ids}"
            )
        return entry
    if exchange_id is None or not pack_ids:
        raise ActivationAborted("name a release id, or an exchange id with its pack ids")
    matches = [
        r
        for r in index.releases
        if r.exchange_id == exchange_id and sorted(r.runtime_pack_ids) == sorted(pack_ids)
    ]
    if len(matches) != 1:
        raise ReleaseIdSubstitutionBlocked(
            f"exchange {exchange_id} with packs {pack_ids} matches {len(matches)} releases of "
            "the channel index; exact IDs must name exactly one"
        )
    return matches[0]


def refuse_revoked(index: ChannelIndex, entry: ReleaseEntry, now: datetime) -> None:
    revocation = index.revocation_for(entry, now)
    if revocation is None:
        return
    target = revocation.target
    if target.artifact_id is not None and target.artifact_id in entry.runtime_pack_ids:
        raise RuntimePackRevoked(
            f"runtime pack {target.artifact_id} is revoked ({revocation.reason_code})"
        )
    raise ReleaseRevoked(f"release {entry.release_id} is revoked ({revocation.reason_code})")


def _require_generation(what: str, found: int | None, expected: int) -> None:
    if found != expected:
        raise GenerationMismatch(
            f"{what} carries generation {found}, the release is generation {expected}"
        )


def _major(schema_version: str) -> str:
    match = SHARD_MAJOR.match(schema_version)
    return match.group(1) if match else schema_version
