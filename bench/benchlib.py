"""Shared set-up for the benchmarks: a private SeaweedFS, a channel world (keys, trust file,
Context) built the way tests/world.py builds one, and small statistics/report helpers.

Not a test helper: nothing here asserts; scripts print what they measured beside a baseline
measured in the same run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kristal.config import Settings
from kristal.context import Context
from kristal.dev.devstack import dev_env, without_bakes
from kristal.dev.processes import SeaweedProcess, start_seaweed, stop_seaweed
from kristal.operations.outcome import Outcome, Who
from kristal.publish.publisher import PublisherKeys, PublishResult, load_publisher_keys, publish
from kristal.store.s3 import ObjectStore, StoreConfig

BENCH_ACCESS_KEY = "kristal-bench"
BENCH_SECRET_KEY = "kristal-bench-secret"
REGION = "us-east-1"


# --- the local S3 server --------------------------------------------------------------------
def bench_credentials() -> tuple[str, str]:
    """Credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or bench defaults (set in env)."""
    access = os.environ.get("AWS_ACCESS_KEY_ID") or BENCH_ACCESS_KEY
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or BENCH_SECRET_KEY
    os.environ["AWS_ACCESS_KEY_ID"] = access
    os.environ["AWS_SECRET_ACCESS_KEY"] = secret
    os.environ["AWS_DEFAULT_REGION"] = REGION
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    return access, secret


@contextlib.contextmanager
def seaweed(workdir: Path) -> Iterator[SeaweedProcess]:
    """A fresh `weed mini` with its data in `workdir/seaweed`, stopped and deleted afterwards."""
    access, secret = bench_credentials()
    base = workdir / "seaweed"
    process = start_seaweed(base / "data", access_key=access, secret_key=secret,
                            log_path=base / "weed.log")
    try:
        yield process
    finally:
        stop_seaweed(process)
        shutil.rmtree(base, ignore_errors=True)


def store_config(process: SeaweedProcess, bucket: str | None = None) -> StoreConfig:
    access, secret = bench_credentials()
    return StoreConfig(endpoint_url=process.endpoint_url,
                       bucket=bucket or f"bench-{uuid.uuid4().hex[:8]}",
                       region=REGION, access_key=access, secret_key=secret)


@contextlib.contextmanager
def workdir(given: str | None, prefix: str) -> Iterator[Path]:
    """`given` (kept) or a fresh temp dir (deleted at the end)."""
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- a channel world (same pattern as tests/world.py, without pytest) -----------------------
@dataclass
class BenchWorld:
    ctx: Context
    home: Path
    keys: PublisherKeys
    channel: str
    env: dict[str, str]

    @property
    def store(self) -> ObjectStore:
        return self.ctx.store

    def publish(self, release_id: int, data: Path, *, generation: int = 1,
                expect: dict[str, Any] | None = None) -> PublishResult:
        expect_file = None
        if expect is not None:
            expect_file = self.home / f"expect-{release_id}.json"
            expect_file.write_text(json.dumps(expect))
        return publish(self.store, self.ctx.trust(self.channel), self.keys, data=data,
                       channel_id=self.channel, release_id=release_id, generation=generation,
                       expect_file=expect_file, now=self.ctx.now, workdir=self.home)

    def who(self, reason: str = "bench") -> Who:
        return Who(operator="bench", reason=reason,
                   correlation_id=f"bench-{uuid.uuid4().hex[:8]}")


def make_world(home: Path, config: StoreConfig) -> BenchWorld:
    """Dev keys + trust file under `home`, KRISTAL_* in os.environ, a Context, a fresh channel."""
    env = dev_env(home, config)
    without_bakes(Path(env["KRISTAL_TRUST_FILE"]))  # a benchmark that measures bakes sets one
    os.environ.update(env)
    ctx = Context.from_settings(Settings.from_env())
    ctx.store.ensure_bucket()
    keys = load_publisher_keys(Path(env["KRISTAL_KEY_DIR"]))
    channel = f"acme/bench/r{uuid.uuid4().hex[:6]}"
    return BenchWorld(ctx=ctx, home=home, keys=keys, channel=channel, env=env)


# --- statistics and reporting ---------------------------------------------------------------
def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def p95(samples: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (as kristal.runtime.checks)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, StopIteration, ValueError):
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines()
                    if x.startswith("MemTotal:"))
        mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "mem_gib": round(mem_kb / 1024 / 1024, 1),
            "cpu": model, "python": platform.python_version(), "kernel": platform.release()}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A compact fixed-width table; first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                         strict=True)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def note(message: str, *, quiet: bool = False) -> None:
    """Progress on stderr (so --json keeps stdout to one document)."""
    if not quiet:
        import sys

        print(message, file=sys.stderr, flush=True)


# --- the operations with the plain runner (the domain's own steps, no orchestrator) ---------
def kristalctl(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """The real CLI in a subprocess, its stdout; a failure ends the benchmark with its error
    line."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"kristalctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def activate_plain(ctx: Context, channel_id: str, release_id: int, who: Who, *,
                   force: bool = False) -> Outcome:
    from kristal.operations.activate import activate
    from kristal.operations.runner import PlainRunner

    return activate(PlainRunner(), ctx, channel_id=channel_id, release_id=release_id,
                    force=force, who=who)


def rollback_plain(ctx: Context, channel_id: str, who: Who, *, to: Any = "last-known-good",
                   automatic: bool = False,
                   expected_activation_id: str | None = None) -> Outcome:
    from kristal.operations.rollback import rollback
    from kristal.operations.runner import PlainRunner

    return rollback(PlainRunner(), ctx, channel_id=channel_id, to=to, automatic=automatic,
                    expected_activation_id=expected_activation_id, who=who)


def start_warm(env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """`kristalctl warm` for this environment (its stderr in `log`), once it is ready. The
    environment needs a short `XDG_RUNTIME_DIR` of mode 0700 (the socket's directory)."""
    with log.open("wb") as out:
        warm = subprocess.Popen([sys.executable, "-m", "flows.cli", "warm"], env=env, cwd=cwd,
                                stderr=out)
    deadline = time.monotonic() + 120
    while "ready (pid" not in log.read_text():
        if warm.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"kristalctl warm was never ready: {log.read_text()}")
        time.sleep(0.1)
    return warm


def stop_warm(warm: subprocess.Popen[bytes], log: Path) -> int:
    """Stop it; how many children it forked (it says so per command)."""
    warm.terminate()
    warm.wait(60)
    return log.read_text().count(" → child ")
