"""Soak: many mixed operations over many channels, with random faults and kill -9 crashes, then
the invariant checker over every channel.

    python bench/soak.py --ops 1000 --channels 10 --seed 1

Starts its own SeaweedFS (kristal.dev.processes.start_seaweed) and a fault proxy in front of it
(tests/faultproxy.py), publishes a first release per channel and activates it, then runs `--ops`
random operations with the plain runner (no Prefect): activate (of a freshly published
release; some fail their checks, some start a new generation), rollback (last-known-good or
previous), downgrade (to an older generation, under a fresh rollback authorization) and reverify
(whose policy here resumes or finishes the live record's checks when they are missing or failed,
`checks_timeout_s=0`: nothing else runs on the channel meanwhile). A fraction of the operations
carries one random fault (500/503, reset, delay beyond the read timeout, truncated body, dropped
response) on one random kind of S3 call; a fraction of activate/rollback/downgrade runs in a
worker process that SIGKILLs itself at a random crash point of its path.

Afterwards the invariant checker (tests/invariants.py) reads every pointer, history, checks and
quarantine object: chain valid, sequences dense, no activation id twice, every release ever live
published and verifying. Then each channel is converged (the live record's checks resumed) and
checked again, requiring checked-and-live. Prints ops/s and the outcomes by operation and error
code. Exit status 1 if an invariant fails or an operation ended in an exception that is not a
coded `KristalError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO_ROOT = HERE.parent.parent
TESTS_DIR = REPO_ROOT / "tests"
for _path in (str(REPO_ROOT), str(TESTS_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from kristal.channel import records  # noqa: E402  (after the path set-up, from a clone too)

ACCESS_KEY = "kristal-soak"
SECRET_KEY = "kristal-soak-secret"
REGION = "us-east-1"
READ_TIMEOUT_S = 1.5
PROXY_DELAY_S = 2.0  # beyond the read timeout
WORKER_TIMEOUT_S = 180

WEIGHTS = {"activate": 0.4, "rollback": 0.2, "downgrade": 0.1, "reverify": 0.3}
FAULT_ACTIONS = ("500", "503", "reset", "delay", "truncate", "drop_response")
# (method, key substring): every kind of S3 call the operations make.
CALL_KINDS = (
    ("GET", "/active.json"), ("PUT", "/active.json"), ("HEAD", "/activations/"),
    ("GET", "/activations/"), ("PUT", "/activations/"), ("GET", "/index.json"),
    ("GET", "-manifest.json"), ("GET", "validation-reports/"), ("GET", "/data/"),
    ("HEAD", "/data/"), ("GET", "/checks/"), ("PUT", "/checks/"), ("GET", "/quarantine/"),
    ("PUT", "/quarantine/"), ("PUT", "/_probe/"), ("GET", "/_probe/"),
)
CRASH_PATHS = {
    "activate": ("after_verify", "after_stage", "before_switch", "after_switch",
                 "after_history", "after_checks", "before_rollback"),
    "rollback": ("before_switch", "after_switch", "after_history", "after_checks"),
    "downgrade": ("before_switch", "after_switch", "after_history", "after_checks",
                  "before_rollback"),
}
FAILING_EXPECT: dict[str, Any] = {
    "row_count": 40,
    "smoke_queries": [{"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}],
    "latency_p95_ms": 50,
    "max_rss_mb": 512,
}


# --- the operations, with the plain runner (the soak's own processes, no orchestrator) -------
def activate_op(ctx: Any, channel: str, release_id: int, who: Any, *, force: bool = False) -> Any:
    from kristal.operations.activate import activate
    from kristal.operations.runner import PlainRunner

    return activate(PlainRunner(), ctx, channel_id=channel, release_id=release_id, force=force,
                    who=who)


def rollback_op(ctx: Any, channel: str, to: Any, who: Any) -> Any:
    from kristal.operations.rollback import rollback
    from kristal.operations.runner import PlainRunner

    return rollback(PlainRunner(), ctx, channel_id=channel, to=to, who=who)


def downgrade_op(ctx: Any, channel: str, release_id: int, authorization_id: str, who: Any) -> Any:
    from kristal.operations.downgrade import downgrade
    from kristal.operations.runner import PlainRunner

    return downgrade(PlainRunner(), ctx, channel_id=channel, release_id=release_id,
                     authorization_id=authorization_id, who=who)


def channel_report(ctx: Any, channel: str, checks_timeout_s: float) -> Any:
    from kristal.operations.reverify import reverify_channel
    from kristal.operations.runner import PlainRunner

    return reverify_channel(PlainRunner(), ctx, channel, checks_timeout_s=checks_timeout_s)


# --- worker mode: one operation in its own process (for kill -9) --------------------------------
def worker_main(argv: list[str]) -> int:
    from kristal.context import Context
    from kristal.errors import KristalError
    from kristal.operations.outcome import Who

    op, channel, *rest = argv
    ctx = Context.from_settings()
    who = Who(operator="soak-worker", reason="soak", correlation_id=f"w-{uuid.uuid4().hex[:8]}")
    out: dict[str, Any] = {"op": op}
    try:
        if op == "activate":
            activate_op(ctx, channel, int(rest[0]), who, force=rest[1:] == ["force"])
        elif op == "rollback":
            rollback_op(ctx, channel, _to(rest[0]), who)
        elif op == "downgrade":
            downgrade_op(ctx, channel, int(rest[0]), rest[1], who)
        out["code"] = "ok"
    except KristalError as exc:
        out["code"] = exc.code
    except Exception as exc:  # reported as uncoded by the parent
        out["code"] = f"uncoded:{type(exc).__name__}"
        out["trace"] = traceback.format_exc()[-1500:]
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


def _to(text: str) -> Any:
    return int(text) if text.isdigit() else text


# --- the harness ---------------------------------------------------------------------------------
@dataclass
class Channel:
    channel_id: str
    next_release: int = 1
    generation: int = 1
    published: dict[int, tuple[int, bool]] = field(default_factory=dict)  # rid -> (gen, failing)


@dataclass
class SoakResult:
    ops: int
    channels: int
    seed: int
    seconds: float
    outcomes: Counter = field(default_factory=Counter)  # (op, code) -> count
    faults: Counter = field(default_factory=Counter)  # fault -> fired count
    faults_not_fired: int = 0
    crashes: Counter = field(default_factory=Counter)  # point -> killed count
    uncoded: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    converged: int = 0
    pending_history: int = 0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return not self.violations and not self.uncoded

    def failures_by_code(self) -> Counter:
        out: Counter = Counter()
        for (_op, code), n in self.outcomes.items():
            if code not in ("ok", "noop"):
                out[code] += n
        return out

    def report(self) -> str:
        lines = [
            f"soak: {self.ops} operations over {self.channels} channels (seed {self.seed}) in "
            f"{self.seconds:.1f} s: {self.ops_per_s:.2f} ops/s",
            f"faults injected: {sum(self.faults.values())} fired "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()))}); "
            f"{self.faults_not_fired} not on the operation's path",
            f"crashes (kill -9): {sum(self.crashes.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.crashes.items()))})",
            "outcomes by operation:",
        ]
        for op in WEIGHTS:
            row = {code: n for (o, code), n in self.outcomes.items() if o == op}
            total = sum(row.values())
            shown = ", ".join(f"{c} {n}" for c, n in sorted(row.items(), key=lambda x: -x[1]))
            lines.append(f"  {op:9s} {total:5d}: {shown}")
        lines.append("failures by cause: " + (", ".join(
            f"{c} {n}" for c, n in self.failures_by_code().most_common()) or "none"))
        lines.append(f"invariants: {'hold' if not self.violations else 'VIOLATED'} on "
                     f"{self.channels} channels ({self.pending_history} with a history record "
                     f"pending repair after a crash); {self.converged} converged to "
                     "checked-and-live afterwards")
        lines += [f"  VIOLATION {v}" for v in self.violations]
        lines += [f"  UNCODED {u}" for u in self.uncoded[:10]]
        return "\n".join(lines)


def write_triples(path: Path, count: int, tag: str) -> Path:
    with path.open("w") as out:
        for i in range(count):
            out.write(json.dumps({"statement_id": f"stmt:{tag}:{i:05d}",
                                  "subject": f"entity:{i % 40:03d}",
                                  "predicate": f"relation:{i % 3}",
                                  "object": f"value:{tag}:{i}"}) + "\n")
    return path


class Soak:
    def __init__(self, workdir: Path, endpoint: str, seed: int, *, fault_rate: float,
                 crash_rate: float) -> None:
        from faultproxy import FaultProxy

        from kristal.config import Settings
        from kristal.context import Context
        from kristal.dev.devstack import ensure_dev_keys, without_bakes
        from kristal.publish.publisher import PublisherKeys
        from kristal.store.blobcache import BlobCache
        from kristal.store.s3 import ObjectStore, StoreConfig
        from kristal.trust.keys import load_role_key
        from kristal.trust.roots import load_trust_file

        self.rng = random.Random(seed)
        self.seed = seed
        self.workdir = workdir
        self.fault_rate = fault_rate
        self.crash_rate = crash_rate
        self.proxy = FaultProxy(endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                region=REGION).start()
        trust_file = without_bakes(ensure_dev_keys(workdir / "dev"))
        key_dir = workdir / "dev" / "keys"
        self.keys = PublisherKeys(publisher=load_role_key(key_dir, "publisher"),
                                  validator=load_role_key(key_dir, "validator"),
                                  authority=load_role_key(key_dir, "channel-authority"))
        bucket = f"soak-{uuid.uuid4().hex[:16]}"
        direct = StoreConfig(endpoint_url=endpoint, bucket=bucket, access_key=ACCESS_KEY,
                             secret_key=SECRET_KEY, region=REGION)
        ObjectStore(direct).ensure_bucket()
        proxied = dataclasses.replace(direct, endpoint_url=self.proxy.url, connect_timeout=2,
                                      read_timeout=READ_TIMEOUT_S)
        cache_dir = workdir / "cache"

        def context(config: StoreConfig) -> Context:
            settings = Settings(home=workdir, trust_file=trust_file, key_dir=key_dir,
                                cache_dir=cache_dir, store=config, checks_timeout_s=0)
            return Context(store=ObjectStore(config), trust_file=load_trust_file(trust_file),
                           cache=BlobCache(cache_dir), settings=settings)

        self.direct = context(direct)  # the harness: publishing, authorizations, checking
        self.ctx = context(proxied)  # the operations under test, through the proxy
        self.worker_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("KRISTAL_", "AWS_"))},
            "KRISTAL_HOME": str(workdir), "KRISTAL_S3_ENDPOINT": self.proxy.url,
            "KRISTAL_S3_BUCKET": bucket, "KRISTAL_TRUST_FILE": str(trust_file),
            "KRISTAL_KEY_DIR": str(key_dir), "KRISTAL_CACHE_DIR": str(cache_dir),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                      os.environ.get("PYTHONPATH")) if p),
        }
        self.channels: list[Channel] = []

    def close(self) -> None:
        self.proxy.stop()

    # --- harness actions (direct, never faulted) -------------------------------------------------
    def publish(self, ch: Channel, *, generation: int, failing: bool) -> int:
        from kristal.publish.publisher import publish

        rid = ch.next_release
        ch.next_release += 1
        tag = f"{ch.channel_id.replace('/', '-')}-r{rid}"
        data = write_triples(self.workdir / f"{tag}.jsonl", 40, tag)
        expect_file = None
        if failing:
            expect_file = self.workdir / f"{tag}.expect.json"
            expect_file.write_text(json.dumps(FAILING_EXPECT))
        publish(self.direct.store, self.direct.trust(ch.channel_id), self.keys, data=data,
                channel_id=ch.channel_id, release_id=rid, generation=generation,
                expect_file=expect_file, now=self.direct.now)
        data.unlink()
        ch.published[rid] = (generation, failing)
        return rid

    def who(self, op: str) -> Any:
        from kristal.operations.outcome import Who

        return Who(operator="soak", reason=op, correlation_id=f"soak-{uuid.uuid4().hex[:8]}")

    def setup(self, channels: int) -> None:

        for i in range(channels):
            ch = Channel(f"soak/ch{i:02d}/s{self.seed}")
            self.channels.append(ch)
            rid = self.publish(ch, generation=1, failing=False)
            activate_op(self.direct, ch.channel_id, rid, self.who("setup"))

    # --- one random operation --------------------------------------------------------------------
    def plan(self, ch: Channel) -> tuple[str, list[str]]:
        from kristal.channel import records

        op = self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        live = records.read_pointer(self.direct, ch.channel_id).record
        live_gen = live.active.generation if live else 1
        if op == "activate":
            if self.rng.random() < 0.15:
                ch.generation += 1
            rid = self.publish(ch, generation=ch.generation, failing=self.rng.random() < 0.12)
            return op, [str(rid)]
        if op == "rollback":
            return op, [self.rng.choice(["last-known-good", "previous"])]
        if op == "downgrade":
            candidates = [rid for rid, (gen, _f) in ch.published.items()
                          if gen < live_gen and (live is None or rid != live.active.release_id)
                          and records.read_quarantine(self.direct, ch.channel_id,
                                                      rid) is None]
            if not candidates:
                return "reverify", []
            from kristal.channel.governance import authorize

            rid = self.rng.choice(candidates)
            auth = authorize(self.direct, self.keys.authority, ch.channel_id, rid, "soak", "1h")
            return op, [str(rid), auth["authorization_id"]]
        return op, []

    def run_inline(self, op: str, ch: Channel, args: list[str]) -> str:
        from kristal.operations.reverify_checks import CHECKS_RECORD

        who = self.who(op)
        if op == "activate":
            activate_op(self.ctx, ch.channel_id, int(args[0]), who)
        elif op == "rollback":
            result = rollback_op(self.ctx, ch.channel_id, _to(args[0]), who)
            if result.outcome == "nothing_to_do":
                return "noop"
        elif op == "downgrade":
            downgrade_op(self.ctx, ch.channel_id, int(args[0]), args[1], who)
        else:
            report = channel_report(self.ctx, ch.channel_id, checks_timeout_s=0)
            if report.ok:
                return "ok"
            codes = sorted({r.code or "failed" for r in report.failures})
            if any(r.name == CHECKS_RECORD for r in report.failures):
                # Policy: the live record's checks are missing or failed: re-run them (or
                # finish the rollback they call for) with the forced re-activation.
                live = records.read_pointer(self.ctx, ch.channel_id).record
                assert live is not None
                activate_op(self.ctx, ch.channel_id, live.active.release_id, who,
                                 force=True)
                return "repaired:" + ",".join(codes)
            return "rows:" + ",".join(codes)
        return "ok"

    def run_worker(self, op: str, ch: Channel, args: list[str], point: str) -> str:
        proc = subprocess.run(
            [sys.executable, str(HERE), "--worker", op, ch.channel_id, *args],
            env={**self.worker_env, "KRISTAL_CRASH_AT": point}, cwd=REPO_ROOT,
            capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, check=False,
        )
        if proc.returncode == -9:
            return f"killed:{point}"
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            return f"uncoded:worker-exit-{proc.returncode}:{proc.stderr[-300:]}"
        outcome = json.loads(lines[-1])
        if "trace" in outcome:
            return f"{outcome['code']}:{outcome['trace'][-300:]}"
        return str(outcome["code"])

    def add_fault(self) -> Any:
        from faultproxy import Action

        action = self.rng.choice(FAULT_ACTIONS)
        method, needle = self.rng.choice(CALL_KINDS)
        common = {"method": method, "key_contains": needle, "times": 1}
        name = f"{action} {method} {needle.strip('/')}"
        if action in ("500", "503"):
            return name, self.proxy.add_rule(Action.STATUS, status=int(action), **common)
        if action == "reset":
            return name, self.proxy.add_rule(Action.RESET, **common)
        if action == "delay":
            return name, self.proxy.add_rule(Action.DELAY, delay=PROXY_DELAY_S, **common)
        if action == "truncate":
            return name, self.proxy.add_rule(Action.TRUNCATE, truncate_to=7, **common)
        return name, self.proxy.add_rule(Action.DROP_RESPONSE, **common)

    def settle(self) -> None:
        from faultproxy import Action

        end = time.monotonic() + PROXY_DELAY_S + 10
        while time.monotonic() < end and any(
            s.action is Action.DELAY and s.upstream_status is None
            for s in self.proxy.requests()
        ):
            time.sleep(0.05)
        self.proxy.clear_rules()

    def step(self, result: SoakResult) -> None:
        from kristal.errors import KristalError

        ch = self.rng.choice(self.channels)
        op, args = self.plan(ch)
        fault = self.add_fault() if self.rng.random() < self.fault_rate else None
        crash = op in CRASH_PATHS and self.rng.random() < self.crash_rate
        try:
            if crash:
                point = self.rng.choice(CRASH_PATHS[op])
                code = self.run_worker(op, ch, args, point)
                if code.startswith("killed:"):
                    result.crashes[point] += 1
                    code = "killed"
            else:
                code = self.run_inline(op, ch, args)
        except KristalError as exc:
            code = exc.code
        except Exception as exc:
            code = f"uncoded:{type(exc).__name__}"
            result.uncoded.append(f"{op} {ch.channel_id} {args} fault={fault and fault[0]}: "
                                  f"{traceback.format_exc()[-600:]}")
        if code.startswith("uncoded:") and ":" in code[8:]:
            result.uncoded.append(f"{op} {ch.channel_id} {args} fault={fault and fault[0]}: "
                                  f"{code}")
            code = code.split(":")[0] + ":" + code.split(":")[1]
        self.settle()
        if fault is not None:
            if fault[1].fired:
                result.faults[fault[0].split()[0]] += 1
            else:
                result.faults_not_fired += 1
        result.outcomes[(op, code)] += 1

    # --- afterwards ------------------------------------------------------------------------------
    def check(self, result: SoakResult) -> None:
        from invariants import read_channel

        from kristal.errors import KristalError

        for ch in self.channels:
            facts = read_channel(self.direct, ch.channel_id)
            result.violations += [f"{ch.channel_id}: {v}" for v in facts.violations]
            result.pending_history += int(facts.pending_history)
            # Never live unless published: every record's release is one we published.
            for record in facts.records:
                if record.active.release_id not in ch.published:
                    result.violations.append(
                        f"{ch.channel_id}: release {record.active.release_id} live at "
                        f"sequence {record.sequence} was never published")
            # Converge (invariant 5): the live record's checks resumed or finished.
            try:
                for _ in range(3):
                    live = records.read_pointer(self.direct, ch.channel_id).record
                    assert live is not None
                    checks = records.read_checks(self.direct, live)
                    if checks is not None and checks.result == "passed":
                        break
                    try:
                        activate_op(self.direct, ch.channel_id, live.active.release_id,
                                         self.who("converge"), force=True)
                    except KristalError as exc:
                        if exc.code != "check_failed":
                            raise
            except KristalError as exc:
                result.violations.append(f"{ch.channel_id}: did not converge: {exc.line()}")
                continue
            final = read_channel(self.direct, ch.channel_id, allow_pending_history=False)
            result.violations += [f"{ch.channel_id} (converged): {v}" for v in final.violations]
            if final.live_checked and not final.violations:
                result.converged += 1
            else:
                result.violations.append(f"{ch.channel_id}: not checked-and-live after "
                                         "convergence")


def run_soak(ops: int, channels: int, seed: int, *, endpoint: str | None = None,
             fault_rate: float = 0.3, crash_rate: float = 0.08,
             workdir: Path | None = None, progress: bool = False) -> SoakResult:
    """The whole soak; `endpoint`: an S3 endpoint to use instead of starting SeaweedFS (its
    credentials must be ACCESS_KEY/SECRET_KEY of this module, or set them in the environment)."""
    from kristal.dev.processes import start_seaweed, stop_seaweed

    global ACCESS_KEY, SECRET_KEY
    own = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="kristal-soak-"))
    seaweed = None
    soak = None
    try:
        if endpoint is None:
            seaweed = start_seaweed(workdir / "seaweed", access_key=ACCESS_KEY,
                                    secret_key=SECRET_KEY, log_path=workdir / "weed.log")
            endpoint = seaweed.endpoint_url
        else:
            ACCESS_KEY = os.environ.get("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            SECRET_KEY = os.environ.get("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        soak = Soak(workdir, endpoint, seed, fault_rate=fault_rate, crash_rate=crash_rate)
        soak.setup(channels)
        result = SoakResult(ops=ops, channels=channels, seed=seed, seconds=0.0)
        started = time.monotonic()
        for i in range(ops):
            soak.step(result)
            if progress and (i + 1) % 50 == 0:
                rate = (i + 1) / (time.monotonic() - started)
                print(f"  {i + 1}/{ops} operations, {rate:.2f} ops/s", file=sys.stderr,
                      flush=True)
        result.seconds = time.monotonic() - started
        soak.check(result)
        return result
    finally:
        if soak is not None:
            soak.close()
        if seaweed is not None:
            stop_seaweed(seaweed)
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--crash-rate", type=float, default=0.08)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    result = run_soak(args.ops, args.channels, args.seed, fault_rate=args.fault_rate,
                      crash_rate=args.crash_rate, progress=True)
    print(result.report())
    if args.json:
        print(json.dumps({
            "ops": result.ops, "channels": result.channels, "seed": result.seed,
            "seconds": round(result.seconds, 2), "ops_per_s": round(result.ops_per_s, 3),
            "failures_by_cause": dict(result.failures_by_code()),
            "outcomes": {f"{op} {code}": n for (op, code), n in result.outcomes.items()},
            "crashes": dict(result.crashes), "faults": dict(result.faults),
            "violations": result.violations, "uncoded": len(result.uncoded),
        }))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
