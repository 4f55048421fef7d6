"""`flows.prefect_fixes`: a flow run returns at once after its last step, with heartbeats still on
(Prefect 3.9 joined the heartbeat thread, which sleeps in whole seconds: ~1 s per run)."""

from __future__ import annotations

import time

import flows.activate  # noqa: F401 - applies the fixes, as every flow module does on import


def test_a_flow_run_returns_promptly_after_its_last_step(prefect_api: str) -> None:
    import prefect.flow_engine as engine
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import get_current_settings

    assert get_current_settings().flows.heartbeat_frequency is not None  # heartbeats kept
    assert getattr(engine._send_heartbeats, "__kristal_no_heartbeat_join__", False)

    @task(cache_policy=NO_CACHE)
    def step(x: int) -> int:
        return x + 1

    body_done: list[float] = []

    @flow
    def small() -> int:
        result = step(step(1))
        body_done.append(time.perf_counter())
        return result

    small()  # first run: imports and client set-up
    tails = []
    for _ in range(3):
        assert small() == 3
        tails.append(time.perf_counter() - body_done[-1])
    # Before the fix every tail was 0.9-1.0 s (the heartbeat thread's 1 s sleep).
    assert min(tails) < 0.4, tails


def test_the_fix_is_applied_once_and_keeps_the_original(prefect_api: str) -> None:
    import prefect.flow_engine as engine

    from flows.prefect_fixes import no_heartbeat_join

    patched = engine._send_heartbeats
    assert no_heartbeat_join() and engine._send_heartbeats is patched


def test_the_cli_does_not_load_prefect_before_it_sets_prefects_environment() -> None:
    """Prefect reads its settings when first imported: `kristalctl demo` exports the dev
    stack's PREFECT_API_URL first, or every flow would start a temporary server of its own."""
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import sys, flows, flows.cli, flows.demo, flows.prefect_fixes; "
             "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_model_parameters_serialize_as_fastapi_would_without_importing_it() -> None:
    """Our flows' parameters are pydantic models: serialized as FastAPI's `jsonable_encoder`
    would (a run's parameters on the server are unchanged), with FastAPI never imported."""
    import subprocess
    import sys
    from pathlib import Path

    probe = (
        "import sys, json, flows.rollback\n"
        "from flows.params import ActivateRequest, RollbackRequest\n"
        "from flows.activate import activate\n"
        "a = ActivateRequest(channel_id='acme/dev/eu-west-1', release_id=3, operator='o',"
        " reason='r', bake='10m')\n"
        "r = RollbackRequest(channel_id='acme/dev/eu-west-1', to=7, operator='o', reason='r')\n"
        "ours = [activate.serialize_parameters({'request': a}),"
        " flows.rollback.rollback.serialize_parameters({'request': r})]\n"
        "loaded = 'fastapi' in sys.modules\n"
        "from fastapi.encoders import jsonable_encoder\n"
        "theirs = [{'request': jsonable_encoder(a)}, {'request': jsonable_encoder(r)}]\n"
        "print(json.dumps([loaded, ours == theirs, ours]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    import json

    loaded, same, ours = json.loads(done.stdout)
    assert not loaded and same, ours
    assert ours[1]["request"]["to"] == 7
