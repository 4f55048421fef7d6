"""Fault injection on every kind of S3 call of activate, rollback and reverify (the issue's
"fault injection" contract, DESIGN §6).

Each operation runs as its Prefect flow, as production runs it, through the fault proxy
(tests/faultproxy.py) in front of the real SeaweedFS, with a store config whose read timeout
(2 s) a proxy-side delay (2.5 s) exceeds; the flows' tasks retry storage hiccups as configured.
Call kinds (method + kind of key) are enumerated from a clean run of each operation
(`test_call_kinds_are_enumerated` keeps the table below honest). Then, per (operation, fault,
call kind), the fault is injected once on the first call of that kind, and:

- the operation completes correctly, or raises a `KristalError` with an infrastructure code
  (never another exception type, never a verification code that would blame the artifacts);
- afterwards (proxy cleared) the invariant checker (tests/invariants.py) passes: chain valid,
  sequences dense, every release ever live published and verifying, no activation id twice;
- no history record was lost (every earlier record byte-identical) or added beyond the
  operation's own;
- a re-run without faults converges: the same operation completes, or the live record's checks
  are resumed (the forced re-activation of the live release), and the channel ends
  checked-and-live in the expected release.

The matrix: every fault on every write kind (pointer, history, checks, quarantine PUTs), and
one fault per read kind in rotation, so each fault meets every operation (the flows' tasks
retry a read that failed once, so more read faults per kind exercise the same retry). With
`KRISTAL_FAULTS_FULL=1` the full product runs (several minutes).

Each case starts from a snapshot of its channel restored in place (the test harness rewrites
the channel's objects directly; the content-addressed artifacts are shared), with a fresh local
cache so that every payload is downloaded through the proxy.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faultproxy import Action, FaultProxy, Seen
from invariants import check_channel
from world import World, make_world, write_triples

from kristal.channel import records
from kristal.context import Context
from kristal.dev.processes import SeaweedProcess
from kristal.errors import CheckFailed, KristalError
from kristal.store.s3 import ObjectStore

READ_TIMEOUT_S = 2.0
PROXY_DELAY_S = 2.5  # beyond the read timeout: the client gives up, the request still lands
TRUNCATE_TO = 7  # bytes of body sent before the connection is cut
FULL = os.environ.get("KRISTAL_FAULTS_FULL") == "1"

# A release whose smoke query cannot pass: its checks fail after the switch.
FAILING_EXPECT: dict[str, Any] = {
    "row_count": 60,
    "smoke_queries": [{"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}],
    "latency_p95_ms": 50,
    "max_rss_mb": 512,
}

# Errors an infrastructure fault may legitimately end in: the store failed, the outcome of the
# pointer write could not be learned, or (activate of a failing release) the checks failed.
INFRA_CODES = frozenset({"storage_unavailable", "commit_unknown", "pointer_conflict"})


# --- call kinds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    method: str
    label: str
    needle: str  # substring of the (unquoted) request path

    @property
    def name(self) -> str:
        return f"{self.method} {self.label}"


KINDS = {k.name: k for k in (
    Kind("GET", "pointer", "/active.json"),
    Kind("HEAD", "history", "/activations/"),
    Kind("GET", "history", "/activations/"),
    Kind("GET", "index", "/index.json"),
    Kind("GET", "manifests", "-manifest.json"),
    Kind("GET", "reports", "validation-reports/"),
    Kind("GET", "payloads", "/data/"),
    Kind("HEAD", "payloads", "/data/"),
    Kind("GET", "checks", "/checks/"),
    Kind("HEAD", "checks", "/checks/"),  # the switch's look at its record slots
    Kind("GET", "quarantine", "/quarantine/"),
    Kind("PUT", "pointer", "/active.json"),
    Kind("PUT", "history", "/activations/"),
    Kind("PUT", "checks", "/checks/"),
    Kind("PUT", "quarantine", "/quarantine/"),
    # The once-per-process probe of the endpoint before the first conditional write (invariant
    # 6): every case has a fresh proxy, hence a fresh endpoint, so every writing case probes.
    Kind("PUT", "probe", "/_probe/"),
    Kind("GET", "probe", "/_probe/"),
    Kind("DELETE", "probe", "/_probe/"),
)}


def classify(seen: Seen) -> str:
    path = urllib.parse.unquote(seen.path)
    for kind in KINDS.values():
        if kind.method == seen.method and kind.needle in path:
            return kind.name
    return f"{seen.method} other:{path}"


# What a clean run of each operation calls (checked by test_call_kinds_are_enumerated).
OPERATION_KINDS: dict[str, list[str]] = {
    # GET history: the run's history artifact, read after the switch (a view: a fault there
    # is logged, never the run's failure).
    "activate": ["GET pointer", "HEAD history", "GET index", "GET manifests", "GET reports",
                 "GET quarantine", "GET payloads", "HEAD payloads", "GET checks",
                 "HEAD checks", "GET history", "PUT pointer", "PUT history", "PUT checks",
                 "PUT probe", "GET probe", "DELETE probe"],
    "activate-failing": ["GET pointer", "HEAD history", "GET index", "GET manifests",
                         "GET reports", "GET quarantine", "GET payloads", "HEAD payloads",
                         "GET checks", "HEAD checks", "GET history", "PUT pointer",
                         "PUT history", "PUT checks", "PUT quarantine", "PUT probe",
                         "GET probe", "DELETE probe"],
    "rollback": ["GET pointer", "HEAD history", "GET history", "GET checks", "HEAD checks",
                 "GET quarantine", "GET index", "GET manifests", "GET reports", "GET payloads",
                 "PUT pointer", "PUT history", "PUT checks", "PUT probe", "GET probe",
                 "DELETE probe"],
    "reverify": ["GET pointer", "HEAD history", "GET history", "GET index", "GET manifests",
                 "GET reports", "GET payloads", "GET checks"],
}
FAULTS = ("503", "reset", "delay", "truncate", "drop_response")


def _matrix() -> list[Any]:
    cases = []
    rotation = 0
    for op, kinds in OPERATION_KINDS.items():
        for kind in kinds:
            if FULL or (kind.startswith("PUT") and "probe" not in kind):
                faults: tuple[str, ...] = FAULTS
            elif op == "activate-failing":
                continue  # its reads are activate's reads
            else:
                faults = (FAULTS[rotation % 5],)
                rotation += 1
            cases += [pytest.param(op, fault, kind, id=f"{op}-{fault}-{kind.replace(' ', '_')}")
                      for fault in faults]
    return cases


def add_fault(proxy: FaultProxy, fault: str, kind: Kind) -> Any:
    common = {"method": kind.method, "key_contains": kind.needle, "times": 1}
    if fault == "503":
        return proxy.add_rule(Action.STATUS, status=503, **common)
    if fault == "reset":
        return proxy.add_rule(Action.RESET, **common)
    if fault == "delay":
        return proxy.add_rule(Action.DELAY, delay=PROXY_DELAY_S, **common)
    if fault == "truncate":
        return proxy.add_rule(Action.TRUNCATE, truncate_to=TRUNCATE_TO, **common)
    if fault == "drop_response":
        return proxy.add_rule(Action.DROP_RESPONSE, **common)
    raise ValueError(fault)


def settle(proxy: FaultProxy, timeout: float = PROXY_DELAY_S + 10) -> None:
    """Wait until every delayed request has reached the store (it may land after the client
    gave up): the re-run and the checker must see the store's final state."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pending = [s for s in proxy.requests()
                   if s.action is Action.DELAY and s.upstream_status is None]
        if not pending:
            return
        time.sleep(0.05)
    raise AssertionError("a delayed request never reached the store")


# --- the bed: one channel per operation, snapshotted, restored before every case ----------------
@dataclass
class Bed:
    world: World
    channels: dict[str, str]  # operation -> channel
    snapshots: dict[str, dict[str, bytes]]
    tmp: Path

    @property
    def store(self) -> ObjectStore:
        return self.world.store

    def restore(self, op: str) -> None:
        channel = self.channels[op]
        snapshot = self.snapshots[op]
        for key in list(self.store.list_keys(f"channels/{channel}/")):
            if key not in snapshot:
                self.store.delete(key)
        for key, body in snapshot.items():
            try:
                now = self.store.get_bytes(key, max_bytes=1 << 24)[0]
            except KristalError:
                now = None
            if now != body:
                self.store.put_bytes(key, body)

    def take(self, op: str) -> dict[str, bytes]:
        channel = self.channels[op]
        return {k: self.store.get_bytes(k, max_bytes=1 << 24)[0]
                for k in self.store.list_keys(f"channels/{channel}/")}

    def proxied(self, proxy: FaultProxy) -> Context:
        """The flows reach the store through the proxy, short timeouts, a fresh local cache;
        returns their context (for reads in the judgement)."""
        return self.world.flows_through(proxy.url, connect_timeout=2,
                                        read_timeout=READ_TIMEOUT_S,
                                        cache_dir=self.tmp / f"cache-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def bed(seaweed: SeaweedProcess, tmp_path_factory: pytest.TempPathFactory,
        prefect_api: str) -> Iterator[Bed]:
    from conftest import new_bucket

    tmp = tmp_path_factory.mktemp("faults")
    config = new_bucket(seaweed, "f")
    patch = pytest.MonkeyPatch()
    try:
        world = make_world(tmp, config, patch)
        channels: dict[str, str] = {}
        for op in OPERATION_KINDS:
            channel = f"acme/faults/{op}-{uuid.uuid4().hex[:4]}"
            channels[op] = channel
            # Distinct data per channel: the same Exchange re-published elsewhere is re-signed
            # in place (see the report: publisher overwrites content-addressed manifests).
            for rid in (1, 2):
                data = write_triples(tmp / f"{op}-{rid}.jsonl", 60, tag=f"{op}-r{rid}")
                world.publish(rid, channel=channel, data=data,
                              expect=FAILING_EXPECT if (op, rid) == ("activate-failing", 2)
                              else None)
            world.activate(1, channel=channel, via="plain")  # set-up
            if op in ("rollback", "reverify"):
                world.activate(2, channel=channel, via="plain")
        bed = Bed(world, channels, {}, tmp)
        bed.snapshots = {op: bed.take(op) for op in OPERATION_KINDS}
        yield bed
    finally:
        patch.undo()


# --- the operations, their expected end state and their convergence ------------------------------
def run_op(op: str, bed: Bed) -> Any:
    channel = bed.channels[op]
    world = bed.world
    if op in ("activate", "activate-failing"):
        return world.activate(2, channel=channel, reason=f"fault test {op}")
    if op == "rollback":
        return world.rollback(channel=channel, reason=f"fault test {op}")
    if op == "reverify":
        return world.reverify(channel=channel)
    raise ValueError(op)


EXPECTED_LIVE = {"activate": 2, "activate-failing": 1, "rollback": 1, "reverify": 2}
MAX_NEW_RECORDS = {"activate": 1, "activate-failing": 2, "rollback": 1, "reverify": 0}


def converge(op: str, ctx: Context, bed: Bed) -> None:
    """Re-run without faults until the channel is checked-and-live (at most a few steps)."""
    channel = bed.channels[op]
    world = bed.world
    for _ in range(3):
        live = records.read_pointer(ctx, channel).record
        assert live is not None
        checks = records.read_checks(ctx, live)
        if live.active.release_id == EXPECTED_LIVE[op] and checks is not None and (
            checks.result == "passed"
        ):
            return
        if op == "reverify":
            assert world.reverify(channel=channel).ok
        elif live.active.release_id == 2 and op == "activate-failing":
            # Live with failed or missing checks: the forced re-run finishes (rolls back).
            with pytest.raises(CheckFailed):
                world.activate(2, channel=channel, force=True)
        elif live.active.release_id == 1 and live.sequence == 1 and op == "activate-failing":
            with pytest.raises(CheckFailed):
                world.activate(2, channel=channel)
        elif op == "rollback" and live.active.release_id == 2:
            result = world.rollback(channel=channel)
            assert result.check_result == "passed"
        elif op == "activate" and live.active.release_id == 1:
            result = world.activate(2, channel=channel)
            assert result.check_result == "passed"
        else:
            # The expected release is live, its checks pending: resume them (invariant 5).
            result = world.activate(live.active.release_id, channel=channel, force=True)
            assert result.activation_id == live.activation_id
    raise AssertionError(f"{channel} did not converge")


def judge_outcome(op: str, outcome: Any) -> str:
    """'ok' or the error code; fails on anything that is not a coded, plausible outcome."""
    if isinstance(outcome, KristalError):
        assert outcome.code, f"an error without a code: {outcome!r}"
        allowed = INFRA_CODES | ({"check_failed"} if op == "activate-failing" else set())
        assert outcome.code in allowed, (
            f"{op}: an infrastructure fault surfaced as {outcome.code}: {outcome.message}")
        return outcome.code
    if op == "reverify":
        assert outcome.ok  # a failing re-verification raises its first failure's code
        return "ok"
    assert op != "activate-failing", "a failing release activated without CheckFailed"
    assert outcome.check_result == "passed"
    assert outcome.release_id == EXPECTED_LIVE[op]
    return "ok"


def _history(store: ObjectStore, channel: str) -> dict[str, bytes]:
    return {k: store.get_bytes(k, max_bytes=1 << 20)[0]
            for k in store.list_keys(f"channels/{channel}/activations/")}


# --- the tests -----------------------------------------------------------------------------------
def test_call_kinds_are_enumerated(bed: Bed, seaweed: SeaweedProcess) -> None:
    """A clean run of each operation (each through a fresh proxy, as in the cases below) makes
    exactly the call kinds the matrix covers."""
    from conftest import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY

    for op, expected in OPERATION_KINDS.items():
        bed.restore(op)
        with FaultProxy(seaweed.endpoint_url, access_key=TEST_ACCESS_KEY,
                        secret_key=TEST_SECRET_KEY, region=TEST_REGION) as proxy:
            bed.proxied(proxy)
            try:
                outcome: Any = run_op(op, bed)
            except KristalError as exc:
                outcome = exc
            kinds = {classify(s) for s in proxy.requests()}
        assert kinds == set(expected), (op, outcome, sorted(kinds ^ set(expected)))
        if op == "activate-failing":
            assert isinstance(outcome, CheckFailed)
        else:
            judge_outcome(op, outcome)


@pytest.mark.parametrize(("op", "fault", "kind"), _matrix())
def test_fault_once_on_call_kind(
    bed: Bed, fault_proxy: FaultProxy, op: str, fault: str, kind: str
) -> None:
    bed.restore(op)
    channel = bed.channels[op]
    store = bed.store
    history_before = _history(store, channel)
    live_before = records.read_pointer(bed.world.ctx, channel).record
    assert live_before is not None

    ctx = bed.proxied(fault_proxy)
    rule = add_fault(fault_proxy, fault, KINDS[kind])
    try:
        outcome: Any = run_op(op, bed)
    except KristalError as exc:
        outcome = exc
    # Anything else (a botocore exception, an AssertionError...) propagates and fails the test.
    settle(fault_proxy)
    fault_proxy.clear_rules()
    assert rule.fired == 1, f"the {kind} fault never fired: is {kind} on the {op} path?"
    code = judge_outcome(op, outcome)

    # Right after the fault: the invariants hold (chain, density, ids; the releases of these
    # records are verified by the final check below: records never change once written).
    facts = check_channel(bed.world.ctx, channel, verify_releases=False)
    assert facts.live is not None
    assert facts.live.active.release_id in (1, 2)
    # No history record lost or rewritten; nothing beyond the operation's own records.
    history_after = _history(store, channel)
    for key, body in history_before.items():
        assert history_after.get(key) == body, f"history record {key} was lost or rewritten"
    new = len(facts.records) - len(history_before)
    assert 0 <= new <= MAX_NEW_RECORDS[op], f"{new} new record(s) for one {op}"

    # Without faults the same operation converges, and the channel ends checked-and-live.
    converge(op, ctx, bed)
    final = check_channel(bed.world.ctx, channel, allow_pending_history=False,
                          require_checked=True)
    assert final.live is not None and final.live.active.release_id == EXPECTED_LIVE[op]
    assert len(final.records) - len(history_before) <= MAX_NEW_RECORDS[op]
    if op == "activate-failing":
        assert 2 in final.quarantined
    print(f"{op} / {fault} on {kind}: {code}; {new} new record(s) before the re-run")


def test_matrix_covers_every_fault_for_every_operation() -> None:
    cases = _matrix()
    seen = {(c.values[0], c.values[1]) for c in cases}
    assert {(op, f) for op in OPERATION_KINDS for f in FAULTS} <= seen
    covered_kinds = {(c.values[0], c.values[2]) for c in cases}
    for op, kinds in OPERATION_KINDS.items():
        if op != "activate-failing":
            assert {(op, k) for k in kinds} <= covered_kinds
