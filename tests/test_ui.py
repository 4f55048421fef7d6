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
