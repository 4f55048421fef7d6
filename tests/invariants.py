"""The invariant checker of the reliability harness (DESIGN §4-§6), shared by the fault, crash
and soak tests (`bench/soak.py` imports it by path).

`check_channel(ctx, channel)` reads one channel's pointer, its full history, every checks and
quarantine object and the signed index, and returns the list of violations (empty: all hold):

- chain valid: `kristal.reverify.verify_chain` (dense 1..N, hash links, `previous` links, the
  pointer equal to history[N]);
- sequences dense: the listed history keys are exactly 1..N (nothing beyond the pointer), and
  checks exist only for sequences 1..N, each naming that record's activation;
- no activation id twice;
- every release that was ever live (each record's `active`) is published in the signed index
  with exactly those artifacts (no release live that was never published), and verifies:
  identity, signatures, reports, no mixing (`kristal.release_io.verify_release`). A release
  revoked since is legitimate state: "verified" means verified when it went live, so a
  revocation is set aside and the rest of the verification still has to hold;
- `highest_activated_release_id` never decreases; every forward activation goes above the
  previous highest (or is forced); a quarantine names a record of that release whose checks
  failed.

Nothing here writes. The one tolerated gap is the one DESIGN §6 invariant 4 allows: right
after a crash between the pointer write and the history write, history[N] may be missing while
the pointer holds it (`allow_pending_history`); any later operation repairs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from kristal.channel import records
from kristal.channel.history import walk_chain
from kristal.context import Context
from kristal.errors import KristalError, ReleaseRevoked, RuntimePackRevoked
from kristal.formats import layout
from kristal.formats.canonical import canonical_sha256
from kristal.formats.channel_docs import ActivationRecord, ReleaseRef
from kristal.verify import verifier as kverify
from kristal.verify.fetch import verify_release


@dataclass
class ChannelFacts:
    """What the checker read, for assertions beyond the invariants."""

    channel_id: str
    live: ActivationRecord | None = None
    records: list[ActivationRecord] = field(default_factory=list)
    checks: dict[int, Any] = field(default_factory=dict)
    quarantined: dict[int, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    pending_history: bool = False  # history[N] missing, the pointer holds it (invariant 4)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def live_checked(self) -> bool:
        """The live record's checks exist and passed (a converged channel)."""
        if self.live is None:
            return True
        checks = self.checks.get(self.live.sequence)
        return checks is not None and checks.result == "passed"


class InvariantViolation(AssertionError):
    pass


@contextlib.contextmanager
def _revocation_set_aside() -> Iterator[None]:
    """verify_release without the current revocation list (verified *at the time*)."""
    with mock.patch.object(kverify, "refuse_revoked", lambda *_a, **_k: None):
        yield


def _verify_at_the_time(ctx: Context, channel: str, ref: ReleaseRef) -> str | None:
    """None when the release verifies (revocations since set aside), else the reason."""
    try:
        try:
            release = verify_release(ctx, channel, release_id=ref.release_id)
        except (ReleaseRevoked, RuntimePackRevoked):
            with _revocation_set_aside():
                release = verify_release(ctx, channel, release_id=ref.release_id)
    except KristalError as exc:
        return f"release {ref.release_id} does not verify: {exc.code}: {exc.message}"
    if ReleaseRef.of(release.entry) != ref:
        return (f"release {ref.release_id} was live with artifacts {ref.model_dump()} but the "
                f"signed index binds {ReleaseRef.of(release.entry).model_dump()}")
    return None


def _sequence_of(key: str) -> int | None:
    name = key.rsplit("/", 1)[-1].removesuffix(".json")
    return int(name) if name.isdigit() else None


def read_channel(
    ctx: Context, channel: str, *, allow_pending_history: bool = True,
    verify_releases: bool = True,
) -> ChannelFacts:
    """Read everything of one channel and collect every violated invariant."""
    store = ctx.store
    facts = ChannelFacts(channel)
    bad = facts.violations.append
    state = records.read_pointer(ctx, channel)
    facts.live = state.record
    history_keys = sorted(store.list_keys(layout.history_prefix(channel)))
    history_seqs = [s for s in (_sequence_of(k) for k in history_keys) if s is not None]
    checks_prefix = f"channels/{channel}/checks/"
    quarantine_prefix = f"channels/{channel}/quarantine/"
    for key in store.list_keys(checks_prefix):
        seq = _sequence_of(key)
        if seq is None:
            bad(f"stray object {key}")
            continue
        facts.checks[seq] = records.read_checks_at(ctx, channel, seq)
    for key in store.list_keys(quarantine_prefix):
        rid = _sequence_of(key)
        if rid is None:
            bad(f"stray object {key}")
            continue
        facts.quarantined[rid] = records.read_quarantine(ctx, channel, rid)

    if state.record is None:
        if history_seqs or facts.checks or facts.quarantined:
            bad(f"no pointer, yet history {history_seqs}, checks {sorted(facts.checks)}, "
                f"quarantine {sorted(facts.quarantined)} exist")
        return facts

    n = state.sequence
    # Sequences dense: exactly 1..N (N-1 when history[N] is still to be repaired).
    if history_seqs == list(range(1, n + 1)):
        pass
    elif allow_pending_history and history_seqs == list(range(1, n)):
        facts.pending_history = True
    else:
        bad(f"history sequences {history_seqs[:5]}..{history_seqs[-5:]} are not exactly 1..{n}")
        return facts

    # Chain valid (up to the last record stored; the pointer links to it when pending).
    upto = n - 1 if facts.pending_history else n
    try:
        walk_chain(ctx, channel, pointer=state, allow_pending=facts.pending_history)
    except KristalError as exc:
        bad(f"chain invalid: {exc.code}: {exc.message}")
        return facts
    walked = [r for r in (records.read_history(ctx, channel, s) for s in range(1, upto + 1))
               if r is not None]
    if facts.pending_history:
        live = state.record
        last = walked[-1] if walked else None
        expected_link = (canonical_sha256(last.model_dump(mode="json"))
                         if last is not None else None)
        if live.prev_record_sha256 != expected_link or live.previous_sequence != (
            last.sequence if last else None
        ):
            bad(f"the pointer (sequence {n}) does not link to history record {upto}")
        walked.append(live)
    facts.records = walked

    # No activation id twice.
    ids = [r.activation_id for r in walked]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        bad(f"activation ids recorded twice: {dupes}")

    # Checks belong to existing walked, one each, naming that record's activation.
    by_seq = {r.sequence: r for r in walked}
    for seq, checks in sorted(facts.checks.items()):
        record = by_seq.get(seq)
        if record is None:
            bad(f"checks {seq} exist for no history record")
        elif checks.activation_id != record.activation_id or checks.release_id != (
            record.active.release_id
        ):
            bad(f"checks {seq} name activation {checks.activation_id} / release "
                f"{checks.release_id}, the record {record.activation_id} / "
                f"{record.active.release_id}")

    # Quarantines name a record of that release whose checks failed, or one an automatic
    # rollback took the channel away from (a crashed run, a monitor's report: DESIGN §6).
    for rid, quarantine in sorted(facts.quarantined.items()):
        record = by_seq.get(quarantine.sequence)
        failed = facts.checks.get(quarantine.sequence)
        if record is None or record.active.release_id != rid:
            bad(f"quarantine of release {rid} names sequence {quarantine.sequence}, which did "
                "not make it live")
        elif (failed is None or failed.result != "failed") and not any(
                later.kind == "auto_rollback" for later in walked
                if later.sequence > quarantine.sequence):
            bad(f"release {rid} is quarantined but the checks of sequence "
                f"{quarantine.sequence} did not fail")

    # Monotonic highest; forward activations go above it (or are forced).
    highest = 0
    for record in walked:
        if record.highest_activated_release_id < highest:
            bad(f"record {record.sequence}: highest_activated_release_id went down from "
                f"{highest} to {record.highest_activated_release_id}")
        if record.kind == "activate" and record.active.release_id <= highest and not (
            record.forced
        ):
            bad(f"record {record.sequence} activated release {record.active.release_id}, not "
                f"above the highest {highest}, without force")
        highest = max(highest, record.highest_activated_release_id)

    # Every release that was ever live: published, same artifacts, verifies.
    if verify_releases:
        seen: dict[int, ReleaseRef] = {}
        for record in walked:
            ref = record.active
            if ref.release_id in seen:
                if seen[ref.release_id] != ref:
                    bad(f"release {ref.release_id} was live with two different artifact sets")
                continue
            seen[ref.release_id] = ref
            problem = _verify_at_the_time(ctx, channel, ref)
            if problem:
                bad(f"record {record.sequence} ({record.kind}): {problem}")
    return facts


def check_channel(ctx: Context, channel: str, *, allow_pending_history: bool = True,
                  require_checked: bool = False, verify_releases: bool = True) -> ChannelFacts:
    """`read_channel` that raises `InvariantViolation` listing every violation."""
    facts = read_channel(ctx, channel, allow_pending_history=allow_pending_history,
                         verify_releases=verify_releases)
    if require_checked and not facts.live_checked:
        facts.violations.append(
            f"live record {facts.live.sequence if facts.live else None} is not checked-and-live"
        )
    if facts.violations:
        raise InvariantViolation(f"{channel}: " + "; ".join(facts.violations))
    return facts
