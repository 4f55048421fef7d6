"""The bake (issue 16) through the real CLI and Prefect flows, against SeaweedFS, the session's
Prefect server and a real Prometheus (Debian's package) scraping an exporter this test
controls: a healthy bake makes a release known-good; a later switch supersedes a bake; an error
rate that crosses its threshold mid-bake, or a Prometheus that is down, fails the bake and
rolls back; a bake whose run was killed is found by `reverify` and failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import REPO_ROOT, kristalctl
from world import World

from kristal.dev.processes import free_port, stop_process
from kristal.dev.prometheus import MetricsExporter, PrometheusProcess, start_prometheus
from kristal.formats import layout

METRIC = "kristal_error_ratio"
ERROR_RATE = {"name": "error-rate", "query": f'max({METRIC}{{channel="$channel"}})',
              "condition": "< 0.05"}


def _prometheus_binary() -> str | None:
    found = shutil.which("prometheus")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "prometheus"], env=env, capture_output=True, timeout=900)
        found = shutil.which("prometheus")
    return found


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[MetricsExporter, PrometheusProcess]]:
    if _prometheus_binary() is None:
        pytest.skip("Debian's prometheus package cannot be installed here (no apt-get or root)")
    exporter = MetricsExporter()
    prom = start_prometheus(tmp_path_factory.mktemp("prometheus"), exporter.port)
    try:
        yield exporter, prom
    finally:
        stop_process(prom.pid)
        exporter.close()


def _bake_policy(world: World, **policy: Any) -> None:
    doc = world.trust_doc()
    doc["channels"]["*"]["bake"] = {"duration": "0s", "interval": "1s", **policy}
    world.write_trust(doc)


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def _status(channel: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = kristalctl("status", channel, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = _json(proc)
    return doc


def _done(world: World, channel: str) -> int:
    """Measurements written so far for the live record (read directly: polling through a
    `kristalctl status` process would cost a Python start per poll)."""
    from kristal.channel import bakes, records

    live = records.read_pointer(world.ctx, channel).record
    return len(bakes.measurements(world.ctx, live)) if live is not None else 0


def _live(world: World, channel: str) -> Any:
    from kristal.channel import records

    return records.read_pointer(world.ctx, channel).record


def _wait(what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _activate(channel: str, release: int, *extra: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    print(f"{time.strftime('%X')} activate {release} {extra}")
    return kristalctl("activate", channel, "--release", str(release), "--operator", "pytest",
                      "--reason", f"bake test {release}", "--json", *extra, env=env,
                      timeout=120)


def _verdict(world: World, channel: str, sequence: int) -> dict[str, Any] | None:
    key = layout.bake_verdict(channel, sequence)
    return world.read_json(key) if world.store.head(key) is not None else None


def _bake_processes_of(world: World) -> list[int]:
    return [int(p.read_text()) for p in (world.home / "bakes").glob("*.pid")]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie of ours counts as gone
        return stat.read().split()[2] == "Z"


@pytest.fixture
def bake_world(world: World, prefect_api: str) -> Iterator[World]:
    # Every kristalctl this test starts, and the bake runs they start, report to the session's
    # server (a process without PREFECT_API_URL would start a temporary one of its own).
    world.patch.setenv("PREFECT_API_URL", prefect_api)
    try:
        yield world
    finally:
        for pid in _bake_processes_of(world):
            if not _gone(pid):
                os.killpg(pid, signal.SIGKILL)


def test_healthy_bake_makes_the_release_known_good_and_a_later_switch_supersedes_one(
        bake_world: World, monitor: tuple[MetricsExporter, PrometheusProcess]) -> None:
    world, (exporter, prom) = bake_world, monitor
    channel = world.channel
    exporter.set(METRIC, {"channel": channel}, 0.001)
    _bake_policy(world, metrics=[ERROR_RATE], max_duration="1h")
    env = {"KRISTAL_PROMETHEUS_URL": prom.url}
    for release in (1, 2, 3, 4):
        world.publish(release)

    refused = _activate(channel, 1, "--bake", "2h", env=env)  # outside the policy's bounds
    assert refused.returncode == 2 and "error: usage_invalid: " in refused.stderr
    assert world.store.head(layout.pointer(channel)) is None  # nothing was switched

    world.activate(1)  # no bake: the policy's duration is 0s
    started = _json(_activate(channel, 2, "--bake", "3s", "--bake-interval", "1s", env=env))
    assert started["outcome"] == "activated" and started["bake"]["state"] == "baking"
    assert started["bake"]["total"] == 3 and "bake process" in started["message"]

    seen = _status(channel)["bake"]
    assert seen["state"] in ("baking", "passed")
    if seen["state"] == "baking":  # known-good only after the bake: not yet a rollback target
        rows = _json(kristalctl("channels", "--tenant", "acme", "--json"))
        row = next(r for r in rows if r["channel"] == channel)
        assert row["bake"].startswith(("baking", "passed")), row
    _wait("the bake's verdict", lambda: _verdict(world, channel, 2) is not None)
    passed = _status(channel)["bake"]
    assert passed["state"] == "passed" and passed["done"] == 3, passed
    assert passed["last"]["metrics"]["error-rate"] == [0.001]
    verdict = _verdict(world, channel, 2)
    assert verdict is not None and verdict["result"] == "passed" and verdict["signatures"]

    # Release 3 bakes long; activating release 4 during its bake supersedes it. A superseded
    # bake is not known-good: last-known-good from release 4 is release 2, whose bake passed.
    baking = _json(_activate(channel, 3, "--bake", "60s", "--bake-interval", "1s", env=env))
    _wait("a first measurement of release 3", lambda: _done(world, channel) >= 1)
    world.activate(4)  # no bake: the policy's duration is 0s
    ended = _verdict(world, channel, baking["sequence"])
    assert ended is not None and ended["result"] == "superseded", ended
    assert ended["superseded_by"] == baking["sequence"] + 1
    back = kristalctl("rollback", channel, "--operator", "pytest", "--reason", "lkg", "--json")
    assert back.returncode == 0, back.stderr
    assert _json(back)["release_id"] == 2
    for pid in _bake_processes_of(world):  # every bake run ended by itself
        _wait(f"bake process {pid} to end", lambda pid=pid: _gone(pid), timeout=30)

    # History like `helm history`: a status per record, each bake's outcome, the last N.
    rows = _json(kristalctl("history", channel, "--json"))
    assert [(r["sequence"], r["status"], r["bake"]) for r in rows] == [
        (1, "superseded", "none"), (2, "superseded", "passed"), (3, "superseded", "superseded"),
        (4, "rolled back", "none"), (5, "live", "none")], rows
    assert [r["sequence"] for r in _json(kristalctl("history", channel, "--max", "2",
                                                    "--json"))] == [4, 5]

    # The UI board (one keyed table artifact) showed the bake as it went, then its outcome.
    board = [r for version in _board_versions() for r in version if r["channel"] == channel]
    shown = [(r["release_id"], r["bake"]) for r in board]
    assert any(rid == 2 and str(bake).startswith("baking ") for rid, bake in shown), shown
    assert any(r["release_id"] == 2 and "error-rate 0.001" in (r["bake_figures"] or "")
               for r in board), board
    assert (2, "passed") in shown, shown
    assert any(rid == 3 and str(bake).startswith("baking ") for rid, bake in shown), shown


def _board_versions() -> list[list[dict[str, Any]]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.board import BOARD_KEY

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[BOARD_KEY])), limit=200)
    return [json.loads(a.data) if isinstance(a.data, str) else a.data for a in found]


def test_error_rate_crossing_mid_bake_and_prometheus_down_both_roll_back(
        bake_world: World, monitor: tuple[MetricsExporter, PrometheusProcess]) -> None:
    world, (exporter, prom) = bake_world, monitor
    crossing, blind = world.channel, world.channel + "-blind"
    _bake_policy(world, metrics=[ERROR_RATE], inconclusive_limit=2)
    for channel in (crossing, blind):
        exporter.set(METRIC, {"channel": channel}, 0.001)
        for release in (1, 2):
            world.publish(release, channel=channel)
        world.activate(1, channel=channel)  # no bake: the policy's duration is 0s
    down = {"KRISTAL_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}"}  # nothing listens
    assert _activate(blind, 2, "--bake", "20s", "--bake-interval", "1s", env=down
                     ).returncode == 0
    assert _activate(crossing, 2, "--bake", "20s", "--bake-interval", "1s",
                     env={"KRISTAL_PROMETHEUS_URL": prom.url}).returncode == 0

    at_flip = _wait("two passed measurements",
                    lambda: (d := _done(world, crossing)) >= 2 and d)
    flipped = time.monotonic()
    exporter.set(METRIC, {"channel": crossing}, 0.5)
    live = _wait("the rollback to release 1",
                 lambda: (r := _live(world, crossing)).active.release_id == 1 and r)
    took = time.monotonic() - flipped
    assert live.kind == "auto_rollback"
    verdict = _verdict(world, crossing, 2)
    assert verdict is not None and verdict["result"] == "failed", verdict
    failing = world.read_json(layout.bake_measurement(crossing, 2, verdict["done"]))
    assert failing["result"] == "failed" and "error-rate: 0.5 not < 0.05" in failing["reason"]
    # The crossing is seen at the next scrape (1 s) and measured at the next interval (1 s).
    assert verdict["done"] <= at_flip + 4, (verdict, at_flip)
    assert took < 60, took
    assert world.store.head(layout.quarantine(crossing, 2)) is not None
    print(f"error-rate crossing to previous release live: {took:.2f}s")

    gone = _wait("the blind bake to fail",
                 lambda: (r := _live(world, blind)).active.release_id == 1 and r)
    assert gone.kind == "auto_rollback"
    verdict = _verdict(world, blind, 2)
    assert verdict is not None and verdict["result"] == "failed"
    assert "2 inconclusive measurements" in verdict["reason"], verdict
    results = [world.read_json(layout.bake_measurement(blind, 2, n))["result"]
               for n in range(1, verdict["done"] + 1)]
    assert results == ["inconclusive", "inconclusive"], results  # never passed


def test_a_killed_bake_run_is_found_by_reverify_and_failed(bake_world: World) -> None:
    world = bake_world
    channel = world.channel
    stale = 8.0
    _bake_policy(world, stale_after=f"{stale:.0f}s")
    for release in (1, 2):
        world.publish(release)
    world.activate(1)  # no bake: the policy's duration is 0s
    quiet = {"KRISTAL_BAKE_LAUNCH": "none"}
    started = _json(_activate(channel, 2, "--bake", "60s", "--bake-interval", "1s", env=quiet))
    assert "KRISTAL_BAKE_LAUNCH=none" in started["message"]
    baker = subprocess.Popen([sys.executable, "-m", "flows.cli", "bake", channel], cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        _wait("a first measurement", lambda: _done(world, channel) >= 1)
    finally:
        os.killpg(baker.pid, signal.SIGKILL)
        baker.wait()
    killed = time.monotonic()
    fresh = kristalctl("reverify", channel, "--json")
    elapsed = time.monotonic() - killed
    # The command's end says nothing of when it looked: under load a check made inside the
    # timeout can end after it. Its answer says which side it saw.
    if fresh.returncode == 0:  # looked within the timeout: still baking, not failed
        assert _json(fresh)["ok"] is True, fresh.stderr
        time.sleep(max(0.0, stale + 1 - elapsed))
        proc = kristalctl("reverify", channel, "--json", timeout=120)
    else:  # a loaded machine: it looked after the timeout, and found the bake stopped
        # (the last measurement precedes the kill by at most a poll and an interval)
        assert elapsed > stale - 3, f"bake called stopped {elapsed:.1f}s after the kill"
        proc = fresh
    assert proc.returncode == 5, (proc.returncode, proc.stderr)
    assert "bake stopped" in proc.stderr
    live = _status(channel)
    assert live["active"]["release_id"] == 1 and live["kind"] == "auto_rollback"
    verdict = _verdict(world, channel, 2)
    assert verdict is not None and verdict["result"] == "failed"
    assert verdict["reason"].startswith("bake stopped")
    assert Path(world.home).exists()


def test_bake_policy_bounds_and_conditions() -> None:
    from kristal.errors import UsageInvalid
    from kristal.formats.bake_docs import BakePolicy, condition_holds, resolve_bake

    assert resolve_bake(None, "acme/dev/eu") is None  # dev: no bake by default
    plan = resolve_bake(None, "acme/prod/eu")
    assert plan is not None and (plan.duration_s, plan.interval_s, plan.total) == (600, 60, 10)
    policy = BakePolicy(duration="10m", min_duration="5m", min_interval="10s")
    with pytest.raises(UsageInvalid, match="outside what"):
        resolve_bake(policy, "acme/prod/eu", duration="1m")
    with pytest.raises(UsageInvalid, match="shorter than"):
        resolve_bake(policy, "acme/prod/eu", interval="1s")
    assert resolve_bake(BakePolicy(), "acme/prod/eu", duration="0") is None
    with pytest.raises(ValueError):
        BakePolicy(metrics=[{"name": "x", "query": "up", "condition": "about 3"}])  # type: ignore[list-item]
    assert condition_holds("< 0.01", 0.001) and not condition_holds("< 0.01", 0.01)
    assert condition_holds("between 1 2", 2) and not condition_holds(">= 5", 4.9)


def test_a_tampered_bake_record_is_refused(world: World) -> None:
    from kristal.channel import bakes
    from kristal.errors import PointerInvalid
    from kristal.operations.activate import activate

    _bake_policy(world)
    world.refresh()
    world.publish(1)
    done = activate(world.plain_runner(), world.ctx, channel_id=world.channel, release_id=1,
                    who=world.who(), bake="2s", bake_interval="1s")
    record = world.pointer().record
    assert done.bake is not None and record is not None and record.bake is not None
    bakes.write_verdict(world.ctx, record, "passed", done=2, reason="ok", now=world.ctx.now())
    key = layout.bake_verdict(world.channel, record.sequence)
    doc = world.read_json(key)
    assert bakes.read_verdict(world.ctx, record) is not None
    world.write_json(key, {**doc, "reason": "edited"})
    with pytest.raises(PointerInvalid):
        bakes.read_verdict(world.ctx, record)
