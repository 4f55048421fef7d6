"""The real `kristalctl` in a subprocess (DESIGN §9): IDs and canonical bytes of the upstream
vectors, key generation, the one-line error contract with its exit statuses, and publish /
status / history / revoke / floor / authorize end to end against SeaweedFS.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from world import World

from kristal.channel.index import read_index_bytes
from kristal.formats import layout

REPO_ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"


def kristalctl(*args: str, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.pop("KRISTAL_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def kristalctl_bytes(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, timeout=60)


def _refused(proc: subprocess.CompletedProcess[str], code: str, status: int) -> str:
    """Exactly one stderr line `error: <code>: ...`, no traceback, the §9 exit status."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {code}: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    return lines[0]


def _vector_params(name: str) -> list[Any]:
    path = VECTORS / name
    if not path.is_file():
        return [pytest.param(None, id=f"{name}-missing")]
    return [pytest.param(v, id=v["id"]) for v in json.loads(path.read_text("utf-8"))["vectors"]]


def _need(vector: Any) -> dict[str, Any]:
    if vector is None:
        pytest.fail(f"vector file missing under {VECTORS}")
    return vector


# --- id and canon --------------------------------------------------------------------------------
@pytest.mark.parametrize("vector", _vector_params("exchange.json"))
def test_id_exchange_prints_each_vectors_recomputed_id(
        vector: Any, vectors_dir: Path, tmp_path: Path) -> None:
    vector = _need(vector)
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(vector["input"], indent=1))
    proc = kristalctl("id", "exchange", str(path))
    assert proc.returncode == 0, proc.stderr
    # EX-004 declares another ID: the printed one is the recomputed one.
    assert proc.stdout == vector["expected_kristal_id"] + "\n"
    if vector["id"] == "EX-004":
        assert vector["input"]["kristal_id"] != vector["expected_kristal_id"]


@pytest.mark.parametrize("vector", _vector_params("runtime-pack.json"))
def test_id_runtime_pack_prints_each_vectors_id(vector: Any, tmp_path: Path) -> None:
    vector = _need(vector)
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(vector["input"]))
    proc = kristalctl("id", "runtime-pack", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"kind": "runtime-pack",
                                       "id": vector["expected_runtime_pack_id"]}


@pytest.mark.parametrize("vector", _vector_params("jcs.json"))
def test_canon_prints_exact_jcs_bytes_without_newline(vector: Any, tmp_path: Path) -> None:
    vector = _need(vector)
    path = tmp_path / "in.json"
    path.write_text(vector["input_json"])
    proc = kristalctl_bytes("canon", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == vector["expected_canonical"].encode("utf-8")


@pytest.mark.parametrize("vector", _vector_params("exchange.json"))
def test_canon_of_an_exchange_hash_target_prints_the_vectors_canonical_bytes(
        vector: Any, tmp_path: Path) -> None:
    vector = _need(vector)
    target = json.loads(vector["expected_canonical"])
    # Re-serialized with reversed key order and indentation: canon must undo both.
    def reverse(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reverse(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reverse(v) for v in value]
        return value

    path = tmp_path / "target.json"
    path.write_text(json.dumps(reverse(target), indent=3, ensure_ascii=True))
    proc = kristalctl_bytes("canon", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == vector["expected_canonical"].encode("utf-8")


def test_canon_json_is_one_document_with_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_text('{ "b": 2, "a": 1 }')
    proc = kristalctl("canon", str(path), "--json")
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["canonical"] == '{"a":1,"b":2}'
    assert doc["sha256"] == ("sha256:43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b"
                             "888292777")


# --- keys ----------------------------------------------------------------------------------------
def test_keys_generate_writes_0600_pem_and_pub_json_and_refuses_to_overwrite(
        tmp_path: Path) -> None:
    out = tmp_path / "keys"
    proc = kristalctl("keys", "generate", "--role", "publisher", "--key-id", "pub-1",
                      "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["key_id"] == "pub-1" and doc["roles"] == ["publisher"]
    pem = out / "pub-1.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = json.loads((out / "pub-1.pub.json").read_text())
    assert pub == {"key_id": "pub-1", "public_key": doc["public_key"], "roles": ["publisher"]}
    before = pem.read_bytes()
    again = kristalctl("keys", "generate", "--role", "publisher", "--key-id", "pub-1",
                       "--out", str(out))
    _refused(again, "usage_invalid", 2)
    assert pem.read_bytes() == before


# --- the error contract --------------------------------------------------------------------------
@pytest.mark.parametrize("case, args, code, status", [
    ("malformed_json", ("id", "exchange", "{bad}"), "manifest_schema_invalid", 1),
    ("duplicate_keys", ("canon", "{dup}"), "manifest_schema_invalid", 1),
    ("missing_file", ("id", "exchange", "{missing}"), "usage_invalid", 2),
    ("unknown_kind", ("id", "bogus", "{good}"), "usage_invalid", 2),
    ("not_an_object", ("id", "exchange", "{array}"), "manifest_schema_invalid", 1),
    ("bad_role", ("keys", "generate", "--role", "admin", "--key-id", "k", "--out", "{dir}"),
     "usage_invalid", 2),
], ids=lambda v: v if isinstance(v, str) and "_" in v else None)
def test_refusal_prints_one_error_line_and_its_exit_status(
        tmp_path: Path, case: str, args: tuple[str, ...], code: str, status: int) -> None:
    files = {"bad": tmp_path / "bad.json", "dup": tmp_path / "dup.json",
             "missing": tmp_path / "missing.json", "good": tmp_path / "good.json",
             "array": tmp_path / "array.json", "dir": tmp_path / "keys"}
    files["bad"].write_text('{"a": ')
    files["dup"].write_text('{"a": 1, "a": 2}')
    files["good"].write_text("{}")
    files["array"].write_text("[1, 2]")
    argv = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    _refused(kristalctl(*argv), code, status)


def test_bad_channel_id_on_the_command_line_is_usage(world: World) -> None:
    line = _refused(kristalctl("status", "Bad/Channel", env=world.env), "usage_invalid", 2)
    assert "Bad/Channel" in line


def test_unreachable_endpoint_is_storage_unavailable_exit_4(world: World) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the CLI runs: nothing listens
    env = {**world.env, "KRISTAL_S3_ENDPOINT": f"http://127.0.0.1:{port}"}
    _refused(kristalctl("status", world.channel, env=env), "storage_unavailable", 4)


@pytest.mark.parametrize("args", [
    ("canon", "--no-such-option"),
    ("publish", "--channel", "acme/test/eu"),  # required options missing
    ("keys", "generate", "--role"),  # option without its value
], ids=["unknown_option", "missing_required_option", "option_without_value"])
def test_command_line_usage_error_is_usage_invalid_exit_2(args: tuple[str, ...]) -> None:
    _refused(kristalctl(*args), "usage_invalid", 2)


# --- end to end against SeaweedFS ----------------------------------------------------------------
def test_publish_status_history_end_to_end(world: World) -> None:
    data = world.data(1, rows=50)
    proc = kristalctl("publish", "--data", str(data), "--channel", world.channel,
                      "--release-id", "1", "--generation", "3", "--json", env=world.env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["release_id"], result["generation"], result["row_count"]) == (1, 3, 50)
    assert result["index_version"] == 1 and result["failed_profiles"] == []
    assert world.store.head(layout.exchange_manifest(result["exchange_id"])) is not None

    human = kristalctl("publish", "--data", str(world.data(2)), "--channel", world.channel,
                       "--release-id", "2", "--generation", "3", env=world.env)
    assert human.returncode == 0, human.stderr
    assert "published release 2" in human.stdout and "index v2" in human.stdout

    again = kristalctl("publish", "--data", str(data), "--channel", world.channel,
                       "--release-id", "2", "--generation", "3", env=world.env)
    _refused(again, "release_id_substitution_blocked", 1)

    status = kristalctl("status", world.channel, "--json", env=world.env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"channel_id": world.channel, "active": None}
    assert "nothing is live" in kristalctl("status", world.channel, env=world.env).stdout

    # A live record (made by the activate flow in-process) shows in status and history.
    world.activate(1, reason="cli test")
    status = kristalctl("status", world.channel, "--json", env=world.env)
    assert status.returncode == 0, status.stderr
    live = json.loads(status.stdout)
    assert live["active"]["release_id"] == 1 and live["sequence"] == 1
    assert live["checks"]["result"] == "passed"
    history = kristalctl("history", world.channel, "--json", env=world.env)
    assert history.returncode == 0, history.stderr
    rows = json.loads(history.stdout)
    assert [(r["sequence"], r["release_id"], r["checks"]) for r in rows] == [(1, 1, "passed")]
    table = kristalctl("history", world.channel, env=world.env)
    assert table.returncode == 0 and "cli test" in table.stdout


def test_publish_with_bad_data_is_refused_with_one_line(world: World) -> None:
    data = world.home / "bad.jsonl"
    world.home.mkdir(parents=True, exist_ok=True)
    data.write_text('{"statement_id": "s", "subject": "a"}\n')
    proc = kristalctl("publish", "--data", str(data), "--channel", world.channel,
                      "--release-id", "1", "--generation", "1", env=world.env)
    line = _refused(proc, "manifest_schema_invalid", 1)
    assert "line 1" in line
    assert read_index_bytes(world.store, world.channel) is None


def test_revoke_floor_and_authorize_print_what_they_did(world: World) -> None:
    world.publish(1)
    world.publish(2)
    auth = kristalctl("authorize", world.channel, "--release", "1", "--reason", "rb",
                      "--expires-in", "7d", env=world.env)
    assert auth.returncode == 0, auth.stderr
    auth_id = auth.stdout.strip()
    index = world.read_json(layout.channel_index(world.channel))
    assert [a["authorization_id"] for a in index["rollback_authorizations"]] == [auth_id]
    assert index["index_version"] == 3

    auth_json = kristalctl("authorize", world.channel, "--release", "2", "--reason", "rb",
                           "--expires-in", "P1D", "--json", env=world.env)
    assert auth_json.returncode == 0, auth_json.stderr
    doc = json.loads(auth_json.stdout)
    assert doc["target_release_id"] == 2 and doc["authorization_id"].startswith("sha256:")

    revoke = kristalctl("revoke", world.channel, "--release", "2", "--reason", "bad-data",
                        env=world.env)
    assert revoke.returncode == 0, revoke.stderr
    assert "release 2 revoked" in revoke.stdout and "index v5" in revoke.stdout

    floor = kristalctl("floor", world.channel, "--release", "2", "--json", env=world.env)
    assert floor.returncode == 0, floor.stderr
    assert json.loads(floor.stdout) == {"channel_id": world.channel,
                                        "minimum_allowed_release_id": 2, "index_version": 6}
    floor_human = kristalctl("floor", world.channel, "--release", "1", env=world.env)
    assert "floor is release 1" in floor_human.stdout

    bad = kristalctl("authorize", world.channel, "--release", "1", "--reason", "rb",
                     "--expires-in", "forever", env=world.env)
    _refused(bad, "usage_invalid", 2)
    missing = kristalctl("revoke", world.channel, "--release", "9", "--reason", "x",
                         "--json", env=world.env)
    _refused(missing, "release_unknown", 1)
    index = world.read_json(layout.channel_index(world.channel))
    assert index["index_version"] == 7


def test_fleet_dry_run_reports_each_channel_and_exits_1_if_one_would_refuse(
    prefect_api: str, world: World
) -> None:
    import uuid

    from kristal.channel import records
    from kristal.channel.governance import revoke
    from kristal.operations.fleet_rules import publish_to_channels

    tag = uuid.uuid4().hex[:6]
    channels = [f"acme/clifleet{i}/{tag}" for i in range(2)]
    first = world.publish(1, channel=channels[0])
    publish_to_channels(world.store, world.ctx.trust_file, world.keys,
                        result_of_first_publish=first, channel_ids=channels, release_id=1,
                        generation=first.generation, now=world.ctx.now)
    revoke(world.ctx, world.keys.authority, channels[1], 1, "bad build here")

    proc = kristalctl("fleet-activate", *channels, "--release", "1", "--operator", "cli",
                      "--reason", "CHG-9 dry run", "--dry-run",
                      env={**world.env, "PREFECT_API_URL": prefect_api}, timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert "dry run: 1 would change, 0 already live, 1 would refuse" in proc.stdout
    assert f"{channels[1]}: release_revoked: " in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert [records.read_pointer(world.ctx, c).record for c in channels] == [None, None]


def test_rollback_with_the_prefect_api_down_runs_without_an_orchestrator(world: World) -> None:
    """Break-glass: the same rollback operation with the plain runner, and the record and the
    output say no orchestrator was reachable."""
    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")
    world.activate(2, via="plain")
    down = {**world.env, "PREFECT_API_URL": f"http://127.0.0.1:{_closed_port()}/api"}
    proc = kristalctl("rollback", world.channel, "--operator", "alice", "--reason", "outage",
                      "--json", env=down)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["outcome"] == "rolled_back" and doc["orchestrator"] == "none"
    assert "no orchestrator was reachable" in doc["note"]
    live = world.pointer().record
    assert (live.kind, live.active.release_id, live.operator) == ("rollback", 1, "alice")
    assert live.flow_run_id is None and live.evidence["orchestrator"] == "none"


def test_status_history_channels_and_releases_work_with_the_prefect_api_down(
        world: World) -> None:
    """Break-glass reading: none of them needs the orchestrator."""
    world.publish(1)
    world.activate(1, via="plain")
    down = {**world.env, "PREFECT_API_URL": f"http://127.0.0.1:{_closed_port()}/api"}
    for args in (("status", world.channel), ("history", world.channel),
                 ("releases", world.channel), ("channels",)):
        proc = kristalctl(*args, "--json", env=down)
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stderr == "", (args, proc.stderr)
        json.loads(proc.stdout)
    assert "release 1" in kristalctl("status", world.channel, env=down).stdout


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_and_history_of_an_unknown_channel_are_errors(world: World) -> None:
    """A typo'd or unpublished channel is `channel_unknown` (exit 1), not an empty answer."""
    unknown = world.channel + "x"
    for command in ("status", "history"):
        proc = kristalctl(command, unknown, env=world.env)
        line = _refused(proc, "channel_unknown", 1)
        assert unknown in line


def test_channels_lists_what_is_live_in_every_channel_of_the_bucket(world: World) -> None:
    other = world.channel + "b"
    world.publish(1)
    world.publish(1, channel=other)
    world.activate(1, via="plain", reason="channels test")
    proc = kristalctl("channels", "--json", env=world.env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["channel"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {world.channel, other}
    live = rows[world.channel]
    assert (live["release_id"], live["sequence"], live["kind"], live["checks"]) == \
        (1, 1, "activate", "passed")
    assert live["operator"] == "pytest" and live["since"].endswith("Z")
    assert rows[other]["release_id"] is None and rows[other]["checks"] == "nothing live"
    region = other.rsplit("/", 1)[1]
    only = kristalctl("channels", "--region", region, "--json", env=world.env)
    assert [r["channel"] for r in json.loads(only.stdout)] == [other]
    table = kristalctl("channels", env=world.env)
    assert table.returncode == 0 and world.channel in table.stdout and "passed" in table.stdout


def test_releases_shows_each_release_state_in_the_channel(world: World) -> None:
    from kristal.channel.governance import revoke
    from kristal.errors import CheckFailed

    broken = {"row_count": 60, "smoke_queries": [
        {"pattern": {"s": "entity:001", "p": None, "o": None}, "expect_count": 999}],
        "latency_p95_ms": 50, "max_rss_mb": 512}
    world.publish(1, generation=1)
    world.publish(2, generation=2)
    world.publish(3, generation=2, expect=broken)
    world.publish(4, generation=2)
    world.activate(1, via="plain")
    world.activate(2, via="plain")
    with pytest.raises(CheckFailed):
        world.activate(3, via="plain")
    revoke(world.ctx, world.keys.authority, world.channel, 4, "bad-data")
    proc = kristalctl("releases", world.channel, "--json", env=world.env)
    assert proc.returncode == 0, proc.stderr
    states = {r["release_id"]: r["state"] for r in json.loads(proc.stdout)}
    assert states == {1: "needs an authorization", 2: "live", 3: "quarantined", 4: "revoked"}
    _refused(kristalctl("releases", world.channel + "x", env=world.env), "channel_unknown", 1)


def test_report_failure_that_prefect_did_not_take_exits_4(world: World) -> None:
    world.publish(1)
    world.activate(1, via="plain")
    from kristal.dev.processes import free_port

    dead = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    lost = kristalctl("report-failure", world.channel, "--reason", "p95 over budget",
                      env={"PREFECT_API_URL": dead})
    line = _refused(lost, "storage_unavailable", 4)
    assert "did not take event kristal.check.failed" in line and "nothing was reported" in line


def test_an_expect_file_may_name_only_some_fields(world: World, tmp_path: Path) -> None:
    from kristal.formats.models import EXPECTATIONS_EXT

    partial = tmp_path / "expect.json"
    partial.write_text(json.dumps({"latency_p95_ms": 20}))
    proc = kristalctl("publish", "--data", str(world.data(1, rows=40)), "--channel",
                      world.channel, "--release-id", "1", "--generation", "1",
                      "--expect-file", str(partial), "--json", env=world.env)
    assert proc.returncode == 0, proc.stderr
    pack_id = json.loads(proc.stdout)["runtime_pack_ids"][0]
    expect = world.read_json(layout.pack_manifest(pack_id))["extensions"][EXPECTATIONS_EXT]
    # The named field as given, the rest derived from the data as without the file.
    assert expect["latency_p95_ms"] == 20 and expect["row_count"] == 40
    assert expect["max_rss_mb"] == 512 and len(expect["smoke_queries"]) == 3
    partial.write_text(json.dumps({"row_cont": 40}))  # a typo is not silently ignored
    typo = kristalctl("publish", "--data", str(world.data(2)), "--channel", world.channel,
                      "--release-id", "2", "--generation", "1", "--expect-file", str(partial),
                      env=world.env)
    assert "row_cont" in _refused(typo, "manifest_schema_invalid", 1)


def test_shell_completion_completes_commands() -> None:
    script = kristalctl("--show-completion", "bash")
    assert script.returncode == 0 and "_kristalctl_completion" in script.stdout, script.stderr
    done = kristalctl(env={"_KRISTALCTL_COMPLETE": "complete_bash",
                           "COMP_WORDS": "kristalctl rollb", "COMP_CWORD": "1"})
    assert done.stdout.split() == ["rollback"], (done.stdout, done.stderr)


def test_json_gives_one_document_for_every_outcome_refusals_and_exit_5_included(
        world: World, prefect_api: str) -> None:
    world.patch.setenv("PREFECT_API_URL", prefect_api)  # else each CLI run starts a server
    world.publish(1)
    world.publish(2, expect={"row_count": 1, "smoke_queries": [], "latency_p95_ms": 50,
                             "max_rss_mb": 512})
    world.activate(1, via="plain")
    who = ("--operator", "pytest", "--reason", "json outcomes")
    # Exit 5: activated, then rolled back by its failed check; the document says what is live.
    rolled = kristalctl("activate", world.channel, "--release", "2", *who, "--json",
                        env=world.env, timeout=180)
    assert rolled.returncode == 5, rolled.stderr
    doc = json.loads(rolled.stdout)
    assert doc["ok"] is False and doc["error"]["code"] == "check_failed"
    assert doc["error"]["exit_status"] == 5 and doc["channel_id"] == world.channel
    assert doc["live"]["release_id"] == 1 and doc["live"]["kind"] == "auto_rollback"
    # ... and which Prefect run it was, by name and UI address.
    [run] = doc["runs"]
    assert run["name"] == f"activate {world.channel} → 2"
    assert run["url"] == f"{prefect_api.removesuffix('/api')}/runs/flow-run/{run['id']}"
    # A refusal (exit 1): a release not in the index.
    refused = kristalctl("activate", world.channel, "--release", "9", *who, "--json",
                         env=world.env)
    assert refused.returncode == 1, refused.stderr
    doc = json.loads(refused.stdout)
    assert doc["error"]["code"] == "release_unknown" and doc["live"]["release_id"] == 1
    # Usage (exit 2): a malformed channel id.
    usage = kristalctl("status", "Acme/Prod", "--json", env=world.env)
    assert usage.returncode == 2, usage.stderr
    assert json.loads(usage.stdout)["error"]["code"] == "usage_invalid"
    assert usage.stderr.startswith("error: usage_invalid: ")


def test_a_command_that_runs_a_flow_prints_its_run_first(world: World, prefect_api: str) -> None:
    """Every command that starts a Prefect run says which, with its UI address, as it starts
    (stdout: stderr holds only an `error:` line)."""
    world.patch.setenv("PREFECT_API_URL", prefect_api)
    world.publish(1)
    proc = kristalctl("activate", world.channel, "--release", "1", "--operator", "pytest",
                      "--reason", "run url", env=world.env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    first, *rest = proc.stdout.splitlines()
    ui = prefect_api.removesuffix("/api")
    assert re.fullmatch(rf"run: activate {re.escape(world.channel)} → 1  {re.escape(ui)}"
                        r"/runs/flow-run/[0-9a-f-]{36}", first), proc.stdout
    assert any("release 1 is live" in line for line in rest), proc.stdout
    assert proc.stderr == ""


def test_history_shows_an_automatic_rollbacks_cause_and_draws_its_timeline(
        world: World, tmp_path: Path) -> None:
    """`history`: each record's status; an automatic rollback shows its cause (the failed
    check), not the failed activation's reason; `--plot` draws the timeline."""
    world.publish(1)
    world.publish(2, expect={"row_count": 1, "smoke_queries": [], "latency_p95_ms": 50,
                             "max_rss_mb": 512})
    world.activate(1, via="plain")
    with pytest.raises(Exception, match="check"):
        world.activate(2, via="plain", reason="CHG-2 ship it")
    proc = kristalctl("history", world.channel, "--json", env=world.env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["sequence"], r["kind"], r["release_id"], r["status"]) for r in rows] == [
        (1, "activate", 1, "superseded"), (2, "activate", 2, "failed"),
        (3, "auto_rollback", 1, "live")]
    assert rows[2]["reason"] == "CHG-2 ship it"  # recorded as the run's reason ...
    assert rows[2]["cause"].startswith("failed checks: row_count")  # ... shown by its cause
    assert rows[1]["checks_reason"].startswith("row_count")
    table = kristalctl("history", world.channel, env=world.env)
    assert table.returncode == 0, table.stderr
    assert "cause: failed checks: row_count" in table.stdout and "* live" in table.stdout
    svg = tmp_path / "timeline.svg"
    drawn = kristalctl("history", world.channel, "--plot", str(svg), env=world.env)
    assert drawn.returncode == 0, drawn.stderr
    picture = svg.read_text()
    assert picture.startswith("<svg") and f"timeline of {world.channel}" in picture
    assert ">r1<" in picture and ">r2<" in picture and "✗" in picture and "↩" in picture
    assert "cause: failed checks: row_count" in picture  # the rollback band's tooltip
    refused = kristalctl("history", world.channel, "--plot", str(tmp_path / "t.gif"),
                         env=world.env)
    _refused(refused, "usage_invalid", 2)


def test_waiting_for_a_channel_lock_says_which_run_holds_it(
        world: World, prefect_api: str, tmp_path: Path) -> None:
    """A second activation of a channel while a first holds its lock (held at a hold point
    after staging) says which run holds it, with that run's address, then goes on."""
    import time

    holds = tmp_path / "holds"
    holds.mkdir()
    env = {**world.env, "PREFECT_API_URL": prefect_api, "KRISTAL_HOLD_DIR": str(holds)}
    world.publish(1)
    world.publish(2)
    (holds / "after_stage").touch()
    who = ("--operator", "pytest", "--reason", "lock holder")
    first = subprocess.Popen([sys.executable, "-m", "flows.cli", "activate", world.channel,
                              "--release", "1", *who], cwd=REPO_ROOT,
                             env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(holds.glob("after_stage.held.*")):
            assert time.monotonic() < deadline and first.poll() is None, "never held"
            time.sleep(0.2)
        assert first.stdout is not None
        holder_line = first.stdout.readline()  # `run: NAME URL` of the holding run
        holder_url = holder_line.split()[-1]
        second = subprocess.Popen([sys.executable, "-m", "flows.cli", "activate",
                                   world.channel, "--release", "2", *who], cwd=REPO_ROOT,
                                  env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
        assert second.stdout is not None
        assert second.stdout.readline().startswith(f"run: activate {world.channel} → 2")
        waiting = second.stdout.readline()
        assert waiting.startswith("waiting for kristal-channel:"), waiting
        assert "held by flow run " in waiting and waiting.strip().endswith(holder_url), (
            waiting, holder_url)
        for held in holds.glob("after_stage.held.*"):
            held.unlink()
        assert first.wait(120) == 0 and second.wait(180) == 0
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert world.pointer().record.active.release_id == 2


def test_a_dry_run_prints_its_plan_and_diff_and_runs_the_checks_on_the_staged_index(
        world: World, prefect_api: str) -> None:
    world.patch.setenv("PREFECT_API_URL", prefect_api)
    world.publish(1)
    world.publish(2)
    world.publish(3, expect={"row_count": 1, "smoke_queries": [], "latency_p95_ms": 50,
                             "max_rss_mb": 512})
    world.activate(1, via="plain")
    who = ("--operator", "pytest", "--reason", "dry")
    proc = kristalctl("activate", world.channel, "--release", "2", *who, "--dry-run",
                      env=world.env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"dry run: release 2 would replace release 1 (sequence 1) in {world.channel}" in out
    assert "release_id: 1 → 2" in out and "generation: 1 (same)" in out
    assert "exchange_id: sha256:" in out and "checks against the staged index:" in out
    assert "✓ row_count: expected 60, measured 60" in out and "nothing switched" in out
    doc = json.loads(kristalctl("activate", world.channel, "--release", "2", *who,
                                "--dry-run", "--json", env=world.env, timeout=180).stdout)
    assert doc["outcome"] == "planned" and doc["plan"]["checks"]["passed"] is True
    # A failing expectation is caught by the dry run: refused, nothing switched.
    before = world.snapshot()
    failing = kristalctl("activate", world.channel, "--release", "3", *who, "--dry-run",
                         env=world.env, timeout=180)
    line = _refused(failing, "check_failed", 1)
    assert "would fail its checks" in line and "row_count: expected 1, measured 60" in line
    assert world.snapshot() == before


def test_a_fleet_dry_run_catches_the_canarys_failing_expectation(
        world: World, prefect_api: str) -> None:
    import uuid

    from kristal.operations.fleet_rules import publish_to_channels

    tag = uuid.uuid4().hex[:6]
    channels = [f"acme/dryfleet{i}/{tag}" for i in range(3)]
    first = world.publish(1, channel=channels[0], expect={
        "row_count": 1, "smoke_queries": [], "latency_p95_ms": 50, "max_rss_mb": 512})
    publish_to_channels(world.store, world.ctx.trust_file, world.keys,
                        result_of_first_publish=first, channel_ids=channels, release_id=1,
                        generation=first.generation, now=world.ctx.now)
    proc = kristalctl("fleet-activate", *channels, "--release", "1", "--operator", "cli",
                      "--reason", "dry", "--dry-run", "--json",
                      env={**world.env, "PREFECT_API_URL": prefect_api}, timeout=240)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(c["channel_id"], c["result"], c["error_code"]) for c in doc["channels"]] == [
        (c, "refused", "check_failed") for c in channels]
    assert "row_count: expected 1, measured 60" in doc["channels"][0]["message"]
    from kristal.channel import records

    assert [records.read_pointer(world.ctx, c).record for c in channels] == [None] * 3


def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout piped): exit status, what the
    terminal showed, stdout."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO_ROOT,
                            env={**os.environ, **env, "COLUMNS": "120"},
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    shown = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                chunk = b""
            shown += chunk
            if not chunk and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read() if proc.stdout else ""
    return proc.wait(), shown.decode(errors="replace"), out


def test_long_work_shows_progress_bars_on_a_terminal_and_none_with_json(world: World) -> None:
    data = world.data(1, rows=300_000)
    status, shown, out = _on_a_terminal(
        ["publish", "--data", str(data), "--channel", world.channel, "--release-id", "1",
         "--generation", "1"], world.env)
    assert status == 0, shown
    assert "read and sort" in shown and "MB" in shown, shown[-2000:]
    assert "published release 1" in out
    status, shown, out = _on_a_terminal(
        ["publish", "--data", str(data), "--channel", world.channel, "--release-id", "2",
         "--generation", "1", "--json"], world.env)
    assert status == 0, shown
    assert "read and sort" not in shown and json.loads(out)["release_id"] == 2


def test_a_missing_environment_says_how_to_get_one_and_starts_no_run(world: World) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRISTAL_S3_")}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "activate", world.channel,
                           "--release", "1", "--operator", "pytest", "--reason", "no env"],
                          cwd=REPO_ROOT, env={**env, "KRISTAL_S3_BUCKET": ""},
                          capture_output=True, text=True, timeout=120)
    line = _refused(proc, "usage_invalid", 2)
    assert 'eval "$(kristalctl dev up)"' in line
    assert "run:" not in proc.stdout  # refused before any Prefect run was created
