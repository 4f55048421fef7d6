"""The local stack keeps its data (`kristalctl dev up | status | down [--purge]`), through the
real CLI with a `KRISTAL_HOME` of the test's own, and the README's "Working with the local
stack" sequence as written: a component that died is started again on the same ports and data
(the exports stay right), `dev down` keeps the bucket and Prefect's database for the next `dev
up`, and only `--purge` deletes them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from test_cli import REPO_ROOT

README = REPO_ROOT / "README.md"


def _env(home: Path, exports: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KRISTAL_", "AWS_", "PREFECT_API_URL"))}
    env["KRISTAL_HOME"] = str(home)
    env.update(exports or {})
    return env


def _cli(home: Path, *args: str, exports: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT,
                          env=_env(home, exports), capture_output=True, text=True,
                          timeout=timeout)


def _up(home: Path) -> tuple[dict[str, str], str]:
    done = _cli(home, "dev", "up")
    assert done.returncode == 0, done.stderr
    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in done.stdout.splitlines() if line.startswith("export "))
    return {k: shlex.split(v)[0] if v else "" for k, v in exports.items()}, done.stderr


def _status(home: Path) -> tuple[int, dict[str, dict[str, object]]]:
    done = _cli(home, "dev", "status", "--json")
    doc = json.loads(done.stdout)  # one document, the refusal's too
    return done.returncode, {c["name"]: c for c in doc.get("components", [])}


def _readme_sequence() -> list[list[str]]:
    """The kristalctl lines of the README's local-stack block (without `dev up`/`dev down`)."""
    text = README.read_text()
    block = text.split("## Working with the local stack", 1)[1].split("```bash", 1)[1]
    block = block.split("```", 1)[0]
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines
            if line.startswith("kristalctl ") and " dev " not in f" {line} "]


def test_the_dev_stack_keeps_its_data_and_the_readme_sequence_works(tmp_path: Path) -> None:
    home = tmp_path / "home"
    exports, said = _up(home)
    assert "started seaweedfs, prefect" in said
    try:
        # The README's sequence, as written, from its repository root (samples/ is there).
        for argv in _readme_sequence():
            done = _cli(home, *argv, exports=exports)
            assert done.returncode == 0, (argv, done.stderr)
        live = json.loads(_cli(home, "status", "acme/dev/eu-west-1", "--json",
                               exports=exports).stdout)
        assert live["active"]["release_id"] == 1 and live["kind"] == "rollback"

        # One component dies: `dev up` starts only that one, on the same port and data.
        code, parts = _status(home)
        assert code == 0 and all(p["running"] for p in parts.values())
        os.kill(int(parts["prefect"]["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        code, after = _status(home)
        assert code == 4 and after["prefect"]["running"] is False
        again, said = _up(home)
        assert "started prefect" in said and "seaweedfs" not in said
        assert again == exports  # the same endpoints: a `serve` polling them keeps working
        code, now = _status(home)
        assert code == 0 and now["seaweedfs"]["pid"] == parts["seaweedfs"]["pid"]
        history = _cli(home, "history", "acme/dev/eu-west-1", "--json", exports=exports)
        assert history.returncode == 0, history.stderr
        assert len(json.loads(history.stdout)) == 3

        # `dev down` keeps the data: the next `dev up` has the same bucket, ports and runs.
        down = _cli(home, "dev", "down")
        assert down.returncode == 0 and "data kept" in down.stdout
        assert (home / "dev" / "seaweedfs").is_dir()
        again, said = _up(home)
        assert "started seaweedfs, prefect" in said and again == exports
        live = json.loads(_cli(home, "status", "acme/dev/eu-west-1", "--json",
                               exports=exports).stdout)
        assert live["active"]["release_id"] == 1
    finally:
        purged = _cli(home, "dev", "down", "--purge")
    assert purged.returncode == 0 and "purged" in purged.stdout, purged.stderr
    assert not (home / "dev" / "seaweedfs").exists() and not (home / "dev" / "prefect").exists()
    code, _ = _status(home)
    assert code == 4  # nothing left: "no local stack"
