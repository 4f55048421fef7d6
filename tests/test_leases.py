"""Channel locks as Prefect concurrency leases (`tasks.leases`), against the real Prefect server
of the session: mutual exclusion, timeouts, a missing limit, the holder shown on the server,
and a busy server (503) asked again at once instead of after Prefect's 2 s retry sleep, through
a fault proxy in front of the API.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from faultproxy import Action, FaultProxy

from tasks.leases import Lease, LimitMissing, hold_limits
from tasks.locks import ensure_channel_limits
from tasks.names import lock_name


def _channels(count: int = 2) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    return [f"acme/lease{i}/{tag}" for i in range(count)]


def _active_slots(name: str) -> int:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_a_held_limit_excludes_another_holder_until_released(prefect_api: str) -> None:
    channels = _channels()
    names = ensure_channel_limits(channels)
    first = Lease(names)
    first.acquire(wait_s=5)
    try:
        assert first.held and [_active_slots(n) for n in names] == [1, 1]
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="still held after"):
            Lease([names[1]]).acquire(wait_s=1.5)
        assert 1.4 < time.monotonic() - started < 4
    finally:
        first.release()
    assert not first.held and [_active_slots(n) for n in names] == [0, 0]
    first.release()  # idempotent
    started = time.monotonic()
    with hold_limits([names[1]], wait_s=5) as second:
        assert second.held and _active_slots(names[1]) == 1
    assert time.monotonic() - started < 1.5
    assert _active_slots(names[1]) == 0


def test_a_limit_that_does_not_exist_is_refused_and_nothing_stays_held(prefect_api: str) -> None:
    existing = ensure_channel_limits(_channels(1))[0]
    missing = lock_name(_channels(1)[0])  # never created
    with pytest.raises(LimitMissing, match="do not exist"), hold_limits(
            [existing, missing], wait_s=5):
        pass
    assert _active_slots(existing) == 0


def test_a_busy_server_is_asked_again_at_once(prefect_api: str) -> None:
    """Two 503s on acquisition: taken in well under Prefect's own 2 s retry sleep."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = ensure_channel_limits(_channels(1))[0]
    with FaultProxy(prefect_api.removesuffix("/api"), access_key="-", secret_key="-") as proxy:
        proxy.add_rule(Action.STATUS, method="POST", key_contains="increment-with-lease",
                       status=503, times=2)
        with temporary_settings(updates={PREFECT_API_URL: f"{proxy.url}/api"}):
            started = time.monotonic()
            lease = Lease([name])
            lease.acquire(wait_s=10)
            took = time.monotonic() - started
            try:
                assert lease.held and lease.acquire_attempts == 3
                assert len(proxy.requests("POST", "increment-with-lease")) == 3
            finally:
                lease.release()
    assert took < 1.0, f"acquired after {took:.2f} s"
    assert _active_slots(name) == 0


def test_the_holder_is_the_flow_run(prefect_api: str) -> None:
    from prefect import flow, get_client

    name = ensure_channel_limits(_channels(1))[0]
    seen: dict[str, object] = {}

    @flow
    def holds() -> str:
        from prefect.runtime import flow_run

        with hold_limits([name], wait_s=5) as lease:
            seen["holder"] = lease.holder
            with get_client(sync_client=True) as client:
                limit = client.read_global_concurrency_limit_by_name(name)
                seen["active"] = limit.active_slots
        return str(flow_run.id)

    run_id = holds()
    holder = seen["holder"]
    assert holder is not None and holder.type == "flow_run" and str(holder.id) == run_id
    assert seen["active"] == 1 and _active_slots(name) == 0


def test_a_limit_deleted_behind_the_process_is_created_again(prefect_api: str) -> None:
    from prefect import get_client

    from tasks.locks import channel_lock

    channel = _channels(1)[0]
    name = ensure_channel_limits([channel])[0]  # remembered as created by this process
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)
    with channel_lock([channel], wait_s=5) as held:
        assert held and _active_slots(name) == 1
    assert _active_slots(name) == 0


@pytest.mark.parametrize("status", [404, 410])
def test_a_held_lease_is_renewed_and_known_lost_when_the_server_forgets_it(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    """Prefect 3.9 answers 410 Gone to the renewal of a lease it no longer has."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("KRISTAL_LEASE_RENEW_S", "0.2")
    name = ensure_channel_limits(_channels(1))[0]
    with FaultProxy(prefect_api.removesuffix("/api"), access_key="-", secret_key="-") as proxy, \
            temporary_settings(updates={PREFECT_API_URL: f"{proxy.url}/api"}), \
            hold_limits([name], wait_s=5) as lease:
        time.sleep(1.0)
        # The last renewal may still be on the wire (no upstream answer recorded yet).
        renewals = [r for r in proxy.requests("POST", "/renew") if r.upstream_status is not None]
        assert len(renewals) >= 3 and all(r.upstream_status == 204 for r in renewals)
        assert lease.held
        proxy.add_rule(Action.STATUS, method="POST", key_contains="/renew", status=status,
                       times=1)
        deadline = time.monotonic() + 3
        while lease.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lease.held  # the server no longer has it: lost, not late
    assert _active_slots(name) == 0


def _migrated_database(tmp_path: Path) -> str:
    """A copy of the session server's database (already migrated: a fresh one costs ~17 s of
    migrations at start-up), as a connection URL for a server of the test's own."""
    import sqlite3

    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    assert url is not None
    source = url.get_secret_value().removeprefix("sqlite+aiosqlite:///")
    target = tmp_path / "prefect.db"
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return f"sqlite+aiosqlite:///{target}"


def test_a_server_restart_does_not_lock_a_channel_for_good(
        prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: with leases in the server's memory (Prefect's default), a restart forgets the
    lease while its slot stays taken. The holder learns its lease is lost (410); the next
    acquisition frees the slot once its holder is stale; `kristalctl unlock` refuses while a
    holder is alive and frees a slot nobody holds."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from test_cli import kristalctl

    from kristal.dev.processes import start_prefect_server, stop_process
    from tasks.locks import channel_lock

    monkeypatch.setenv("KRISTAL_LEASE_RENEW_S", "0.3")
    monkeypatch.setenv("KRISTAL_LOCK_STALE_S", "2")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", _migrated_database(tmp_path))
    home = tmp_path / "prefect"
    memory = "prefect.server.concurrency.lease_storage.memory"
    server = start_prefect_server(home, log_path=tmp_path / "a.log", lease_storage=memory)
    channel = _channels(1)[0]
    env = {"PREFECT_API_URL": server.api_url, "KRISTAL_LOCK_STALE_S": "2"}
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            name = ensure_channel_limits([channel])[0]
            lease = Lease([name])
            lease.acquire(5)
            stop_process(server.pid)
            server = start_prefect_server(home, log_path=tmp_path / "b.log", port=server.port,
                                          lease_storage=memory)
            deadline = time.monotonic() + 10
            while lease.held and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not lease.held, "the renewal's 410 was not taken as a lost lease"
            lease.release()
            assert _active_slots(name) == 1  # the wedge: a slot no lease will ever free
            started = time.monotonic()
            with channel_lock([channel], wait_s=60) as held:
                assert held
            assert time.monotonic() - started < 30  # stale after 2 s; was 600 s, then failed
            assert _active_slots(name) == 0

            with hold_limits([name], wait_s=5):  # alive: renewing every 0.3 s
                proc = kristalctl("unlock", channel, env=env)
                assert proc.returncode == 3, proc.stderr
                assert proc.stderr.startswith("error: channel_locked: "), proc.stderr
                assert _active_slots(name) == 1
            from prefect import get_client
            from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

            with get_client(sync_client=True) as client:  # a slot taken by nobody
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(active_slots=1))
            proc = kristalctl("unlock", channel, "--json", env=env)
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["freed"] is True and _active_slots(name) == 0
    finally:
        stop_process(server.pid)


def test_an_activation_whose_lease_is_lost_stops_before_its_switch(
        world: Any, prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The renewal answers 410 while the run stages: the switch does not start under a lock
    the server no longer knows; nothing in the channel changed, and the next run succeeds."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from kristal.errors import KristalError
    from kristal.runtime import staging

    world.publish(1)
    world.publish(2)
    world.activate(1, via="plain")
    monkeypatch.setenv("KRISTAL_LEASE_RENEW_S", "0.1")
    before = world.snapshot()
    with FaultProxy(prefect_api.removesuffix("/api"), access_key="-", secret_key="-") as proxy, \
            temporary_settings(updates={PREFECT_API_URL: f"{proxy.url}/api"}):
        proxy.add_rule(Action.STATUS, method="POST", key_contains="/renew", status=410,
                       times=1)
        monkeypatch.setattr(staging, "stage_release", _slowly(staging.stage_release))
        with pytest.raises(KristalError) as info:
            world.activate(2)
    assert info.value.code == "activation_aborted" and info.value.exit_status == 1, \
        info.value.line()
    assert world.snapshot() == before
    assert world.activate(2).outcome == "activated"


def _slowly(fn: Any) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # a renewal (every 0.1 s) happens while staging
        return fn(*args, **kwargs)
    return wrapped
