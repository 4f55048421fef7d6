"""The release manager's view: a real `prefect server` with the deployments served, the
`activate` deployment's parameter schema (the typed run form), and a headless Chromium
screenshot of that form saved to docs/ui-activate-form.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kristal.dev.processes import PrefectServerProcess, start_prefect_server, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = REPO_ROOT / "docs" / "ui-activate-form.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-quic", "--hide-scrollbars"]


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        # Debian's package; the only place it cannot be had is a machine without apt or root.
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env,
                       capture_output=True, timeout=900)
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServerProcess]:
    home = tmp_path_factory.mktemp("prefect-ui")
    server = start_prefect_server(home, log_path=home / "server.log")
    try:
        yield server
    finally:
        stop_process(server.pid)


@pytest.fixture(scope="module")
def served_ui(ui_server: PrefectServerProcess, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[PrefectServerProcess]:
    """`kristalctl serve` against the UI server: the deployments exist and are being served."""
    log_dir = tmp_path_factory.mktemp("serve-ui")
    env = {**os.environ, "PREFECT_API_URL": ui_server.api_url,
           "KRISTAL_S3_BUCKET": os.environ.get("KRISTAL_S3_BUCKET", "ui-test")}
    with (log_dir / "serve.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for_deployment(ui_server.api_url, "activate", proc, log_dir / "serve.log")
            yield ui_server
        finally:
            proc.terminate()
            proc.wait(15)


def _wait_for_deployment(api_url: str, name: str, proc: subprocess.Popen[bytes],
                         log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        answer = httpx.post(f"{api_url}/deployments/filter", json={"limit": 50}, timeout=10)
        if any(d["name"] == name for d in answer.json()):
            return
        time.sleep(0.5)
    raise AssertionError("serve did not register the deployments: " + log.read_text()[-3000:])


def _activate_deployment(api_url: str) -> dict[str, object]:
    import httpx

    answer = httpx.get(f"{api_url}/deployments/name/activate/activate", timeout=10)
    answer.raise_for_status()
    return answer.json()


def test_activate_run_form_is_typed(served_ui: PrefectServerProcess) -> None:
    deployment = _activate_deployment(served_ui.api_url)
    schema = deployment["parameter_openapi_schema"]
    assert schema["required"] == ["request"]
    request = schema["definitions"]["ActivateRequest"]
    fields = request["properties"]
    assert {"channel_id", "release_id", "exchange_id", "runtime_pack_ids", "force", "dry_run",
            "operator", "reason", "correlation_id"} <= set(fields)
    assert set(request["required"]) >= {"channel_id", "operator", "reason"}
    assert "pattern" in fields["channel_id"]
    assert fields["force"]["default"] is False and fields["dry_run"]["default"] is False
    # What to act on first, who and why last; help texts the UI can show (no <...> it would
    # take for HTML and eat).
    order = list(fields)
    assert order[:2] == ["channel_id", "release_id"], order
    assert order[-3:] == ["operator", "reason", "correlation_id"], order
    assert all("<" not in str(f.get("description", "")) for f in fields.values())
    # A request naming neither a release nor an Exchange is refused when the run is created:
    # no run starts (and fails, and sets off a pointless rollback).
    import httpx

    assert deployment["enforce_parameter_schema"] is True
    answer = httpx.post(
        f"{served_ui.api_url}/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"request": {"channel_id": "acme/prod/eu-west-1",
                                         "operator": "pytest", "reason": "no target"}}},
        timeout=10)
    assert answer.status_code in (409, 422), answer.text
    runs = httpx.post(f"{served_ui.api_url}/flow_runs/filter", json={
        "limit": 10, "deployments": {"id": {"any_": [deployment["id"]]}}}, timeout=10)
    assert runs.json() == [], runs.text


def test_activate_run_form_screenshot(served_ui: PrefectServerProcess, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium could not be installed here (no apt-get or not root): "
                    "no screenshot taken")
    deployment = _activate_deployment(served_ui.api_url)
    ui = served_ui.api_url.removesuffix("/api")
    url = f"{ui}/deployments/deployment/{deployment['id']}/run"
    shot = tmp_path / "form.png"
    proc = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1400,1500", "--virtual-time-budget=20000", f"--screenshot={shot}", url],
        capture_output=True, timeout=120,
    )
    assert proc.returncode == 0 and shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-dom'}",
         "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, timeout=120, text=True,
    ).stdout
    # The rendered page is the run form of the typed request, not an error page.
    assert "Can't connect" not in dom
    for label in ("Channel Id", "Operator", "Reason", "Dry Run"):
        assert label in dom, f"{label!r} not on the rendered run form"
    # The target first, and the channel's help text rendered as written.
    assert dom.index("Channel Id") < dom.index("Release Id") < dom.index("Operator")
    assert "tenant/environment/region, e.g. acme/prod/eu-west-1" in dom
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)


# --- what a release manager sees of the runs: names, failed tasks, history, fleet, board ---

BROKEN = {"row_count": 1, "smoke_queries": [], "latency_p95_ms": 50, "max_rss_mb": 512}


def _page(chromium: str, url: str, profile: Path, shot: Path | None = None) -> str:
    """The text of the page as the UI renders it (tags stripped), and its `<img>` sources
    (kept as `IMG[...]`); with `shot`, a screenshot too."""
    import re

    if shot is not None:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}-shot",
                        "--window-size=1400,1000", "--virtual-time-budget=20000",
                        f"--screenshot={shot}", url], capture_output=True, timeout=120)
        assert shot.exists(), f"no screenshot of {url}"
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                          "--virtual-time-budget=20000", "--dump-dom", url],
                         capture_output=True, timeout=120, text=True).stdout
    assert "Can't connect" not in dom, url
    dom = re.sub(r'<img[^>]*src="([^"]{0,40})[^"]*"[^>]*>', r" IMG[\1] ", dom)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def _api(server: PrefectServerProcess, path: str, body: dict[str, object]) -> list[dict]:  # type: ignore[type-arg]
    import httpx

    answer = httpx.post(f"{server.api_url}/{path}", json=body, timeout=10)
    answer.raise_for_status()
    return answer.json()  # type: ignore[no-any-return]


def _latest_artifact(server: PrefectServerProcess, key: str) -> dict:  # type: ignore[type-arg]
    found = _api(server, "artifacts/filter", {"artifacts": {"key": {"any_": [key]}},
                                              "sort": "CREATED_DESC", "limit": 1})
    assert found, f"no artifact {key}"
    return found[0]


def test_runs_history_fleet_grid_and_board_as_the_ui_shows_them(
        ui_server: PrefectServerProcess, world: Any, tmp_path: Path) -> None:
    """Through the CLI against a real server, then in headless Chromium: the failed
    activation's run is named for what it did, tagged, Failed, with its check a failed task;
    the channel's history page shows the timeline picture and the rollback's cause; the halted
    fleet's run is Failed and its report shows the grid; the board lists the channels.
    Screenshots go to docs/."""
    import json
    import uuid

    from kristal.operations.fleet_rules import publish_to_channels

    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium could not be installed here (no apt-get or not root)")
    env = {**world.env, "PREFECT_API_URL": ui_server.api_url}
    ui = ui_server.api_url.removesuffix("/api")
    who = ("--operator", "alice", "--reason", "CHG-7")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT,
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=240)

    channel = world.channel
    world.publish(1)
    world.publish(2, expect=BROKEN)
    assert cli("activate", channel, "--release", "1", *who).returncode == 0
    failed = cli("activate", channel, "--release", "2", *who, "--json")
    assert failed.returncode == 5, failed.stderr
    [run] = json.loads(failed.stdout)["runs"]
    assert run["url"] == f"{ui}/runs/flow-run/{run['id']}"

    text = _page(chromium, run["url"], tmp_path / "p1", tmp_path / "run.png")
    assert f"activate {channel} → 2" in text and "Failed" in text, text[:800]
    for tag in (f"channel:{channel}", "release:2", "tenant:acme"):
        assert tag in text, tag
    tasks = _api(ui_server, "task_runs/filter",
                 {"flow_runs": {"id": {"any_": [run["id"]]}}})
    [check] = [t for t in tasks if t["name"].startswith("post-activation-checks")
               and t["state"]["type"] == "FAILED"]
    text = _page(chromium, f"{ui}/runs/task-run/{check['id']}", tmp_path / "p2")
    assert "post-activation-checks" in text and "Failed" in text, text[:800]

    history = _latest_artifact(ui_server, f"history-{channel.replace('/', '-')}")
    text = _page(chromium, f"{ui}/artifacts/artifact/{history['id']}", tmp_path / "p3",
                 tmp_path / "history.png")
    assert "IMG[data:image/svg+xml;base64," in text, text[:800]
    assert "cause: failed checks: row_count" in text and "auto_rollback" in text

    # A fleet whose canary fails: halted, the rest vetoed, the run Failed.
    tag = uuid.uuid4().hex[:6]
    fleet = [f"acme/uifleet{i}/{tag}" for i in range(3)]
    for release, expect in ((1, None), (2, BROKEN)):
        first = world.publish(release, channel=fleet[0], expect=expect)
        publish_to_channels(world.store, world.ctx.trust_file, world.keys,
                            result_of_first_publish=first, channel_ids=fleet,
                            release_id=release, generation=first.generation, now=world.ctx.now)
    assert cli("fleet-activate", *fleet, "--release", "1", *who).returncode == 0
    grid = tmp_path / "grid.png"
    halted = cli("fleet-activate", *fleet, "--release", "2", *who, "--wave-size", "1",
                 "--plot", str(grid), "--json")
    assert halted.returncode == 5, halted.stderr
    doc = json.loads(halted.stdout)
    assert doc["outcome"] == "halted" and grid.read_bytes()[:4] == b"\x89PNG"
    [fleet_run] = doc["runs"]
    state = _api(ui_server, "flow_runs/filter", {"flow_runs": {"id": {"any_": [
        fleet_run["id"]]}}})[0]["state"]
    assert state["type"] == "FAILED" and "halted at wave 1" in state["message"]
    text = _page(chromium, fleet_run["url"], tmp_path / "p4")
    assert f"fleet-activate release 2 → {len(fleet)} channels" in text and "Failed" in text
    waves = next(k for k in doc["artifact_keys"] if k.startswith("fleet-waves-"))
    report = _latest_artifact(ui_server, waves)
    text = _page(chromium, f"{ui}/artifacts/artifact/{report['id']}", tmp_path / "p5",
                 tmp_path / "fleet.png")
    assert "IMG[data:image/svg+xml;base64," in text and "halted at wave 1" in text

    board = _latest_artifact(ui_server, "kristal-board")
    text = _page(chromium, f"{ui}/artifacts/artifact/{board['id']}", tmp_path / "p6",
                 tmp_path / "board.png")
    assert all(c in text for c in (channel, *fleet)), text[:1500]

    SCREENSHOT.parent.mkdir(exist_ok=True)
    for name in ("run", "history", "fleet", "board"):
        shutil.copyfile(tmp_path / f"{name}.png", REPO_ROOT / "docs" / f"ui-{name}.png")
    shutil.copyfile(grid, REPO_ROOT / "docs" / "fleet-grid.png")
