"""Channel locks as Prefect concurrency leases (`tasks.leases`), against the real Prefect server
of the session: mutual exclusion, timeouts, a missing limit, the holder shown on the server,
and a busy server (503) asked again at once instead of after Prefect's 2 s retry sleep, through
a fault proxy in front of the API.
"""

from __future__ import annotations

import time
import uuid

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


def test_a_held_lease_is_renewed_and_known_lost_when_the_server_forgets_it(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import tasks.leases as leases

    monkeypatch.setattr(leases, "RENEW_EVERY_S", 0.2)
    name = ensure_channel_limits(_channels(1))[0]
    with FaultProxy(prefect_api.removesuffix("/api"), access_key="-", secret_key="-") as proxy, \
            temporary_settings(updates={PREFECT_API_URL: f"{proxy.url}/api"}), \
            hold_limits([name], wait_s=5) as lease:
        time.sleep(1.0)
        renewals = proxy.requests("POST", "/renew")
        assert len(renewals) >= 3 and all(r.upstream_status == 204 for r in renewals)
        assert lease.held
        proxy.add_rule(Action.STATUS, method="POST", key_contains="/renew", status=404, times=1)
        deadline = time.monotonic() + 3
        while lease.held and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lease.held  # a 404: the server no longer has it
    assert _active_slots(name) == 0
