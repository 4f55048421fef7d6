"""Time from a failure report to the pointer naming the previous release, through the two real
paths, in one run against one `prefect server` and SeaweedFS:

- automation: the event reaches the server, the automation creates a `rollback` run, the
  runner of `kristalctl serve` (polling every second) starts it in a fresh process;
- responder: `kristalctl respond` (running beside `serve`, as in production: the automation
  stays as the fallback) gets the event off the stream and runs the guarded rollback flow in
  its warm process. Who wrote each rollback record is counted (its `operator`).

Each path is timed from two kinds of report: `kristalctl report-failure` (a fresh process,
timed from its start) and an event emitted by this process (a long-running monitor, timed from
the emit). Phases run one after the other: serve alone, then serve + the responder.

    python bench/bench_respond.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib

from kristal.channel import records
from kristal.publish.datagen import generate_triples


def _spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _spawn_respond(env: dict[str, str], work: Path, channel: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "respond", "--channel", channel,
                             "--json"], env=env, stdout=(work / "respond.out").open("wb"),
                            stderr=(work / "respond.err").open("wb"), start_new_session=True)


def _responder_split(work: Path) -> dict[str, float]:
    """Medians from the responder's own lines: report -> arrival, report -> outcome."""
    docs = [json.loads(line) for line in (work / "respond.out").read_text().splitlines()]
    acted = [d for d in docs if d["result"] == "rolled_back"]
    if not acted:
        return {}
    return {"responder_delivery_median_s": round(benchlib.median(
                [d["delivery_s"] for d in acted]), 3),
            "responder_report_to_outcome_median_s": round(benchlib.median(
                [d["seconds"] for d in acted]), 3)}


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _until(what: str, probe: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


class Channel:
    """The bench channel: each sample activates a fresh release over the last good one."""

    def __init__(self, world: benchlib.BenchWorld, env: dict[str, str]) -> None:
        self.world, self.env = world, env
        self.good = 1
        self.next = 2
        benchlib.activate_plain(world.ctx, world.channel, 1, world.who())

    def sample(self, how: str) -> tuple[float, str]:
        """Activate the next release, report it failed, time until the last good one is live.
        Returns (seconds, who wrote the rollback record)."""
        world = self.world
        benchlib.activate_plain(world.ctx, world.channel, self.next, world.who())
        self.next += 1
        live = records.read_pointer(world.ctx, world.channel).record
        assert live is not None
        started = time.monotonic()
        if how == "cli":
            done = subprocess.run([sys.executable, "-m", "flows.cli", "report-failure",
                                   world.channel, "--reason", "bench"], env=self.env,
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise SystemExit(f"report-failure failed: {done.stderr.strip()}")
        else:
            from prefect.events import emit_event

            from tasks.names import channel_resource_id

            emit_event(event="kristal.check.failed",
                       resource={"prefect.resource.id": channel_resource_id(world.channel)},
                       payload={"channel_id": world.channel, "reason": "bench",
                                "activation_id": live.activation_id})
            # No drain: a long-running monitor keeps its events connection open (the
            # first emit opened it), and the worker sends at once.

        def back() -> Any:
            record = records.read_pointer(world.ctx, world.channel).record
            return record if record and record.active.release_id == self.good else None

        rolled = _until(f"release {self.good} live again", back)
        return time.monotonic() - started, rolled.operator


def _settle(seconds: float) -> None:
    """Let the other path's guarded (no-op) rollback run finish before the next sample."""
    time.sleep(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    load_before = os.getloadavg()
    samples: dict[str, list[float]] = {}
    writers: dict[str, list[str]] = {}
    with benchlib.workdir(args.workdir, "kristal-bench-respond-") as work, \
            benchlib.seaweed(work) as server:
        from kristal.dev.processes import start_prefect_server, stop_process

        prefect = start_prefect_server(work / "prefect", log_path=work / "prefect.log")
        os.environ["PREFECT_API_URL"] = prefect.api_url
        serve = responder = None
        split: dict[str, float] = {}
        try:
            world = benchlib.make_world(work / "home", benchlib.store_config(server))
            env = {**os.environ, **world.env, "PREFECT_API_URL": prefect.api_url,
                   "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
            data = work / "triples.jsonl"
            generate_triples(data, 2000)
            for release_id in range(1, 4 * args.runs + 2):
                world.publish(release_id, data)
            serve = _spawn(env, work / "serve.log", "serve")
            time.sleep(8)  # serve registers its deployments and applies the automations
            channel = Channel(world, env)
            for path in ("automation", "responder"):
                if path == "responder":
                    responder = _spawn_respond(env, work, world.channel)
                    _until("the responder to listen",
                           lambda: "listening" in (work / "respond.err").read_text())
                for how in ("cli", "emit"):
                    key = f"{path}/{how}"
                    for _ in range(args.runs):
                        took, writer = channel.sample(how)
                        samples.setdefault(key, []).append(took)
                        writers.setdefault(key, []).append(writer)
                        benchlib.note(f"{key}: {took:.2f} s ({writer})", quiet=args.json)
                        # The automation's run for a report the responder answered is still
                        # to come: let it find nothing to do before the next sample.
                        _settle(6 if path == "responder" else 1)
            split = _responder_split(work)
        finally:
            from prefect.events.worker import EventsWorker

            EventsWorker.drain_all()
            _stop(responder)
            _stop(serve)
            stop_process(prefect.pid)
    result = {
        "runs": args.runs,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        **{f"{key}_median_s": round(benchlib.median(v), 3) for key, v in samples.items()},
        **{f"{key}_max_s": round(max(v), 3) for key, v in samples.items()},
        **split,
        "writers": {key: {w: ws.count(w) for w in set(ws)} for key, ws in writers.items()},
    }
    if args.json:
        print(json.dumps({"machine": benchlib.machine(), **result}))
        return
    rows = [[key, result[f"{key}_median_s"], result[f"{key}_max_s"],
             ", ".join(f"{w} {n}" for w, n in result["writers"][key].items())]
            for key in samples]
    print(benchlib.table(["path/report", "median s", "max s", "record written by"], rows))
    print(f"target < 1.5 s median (responder): "
          f"{benchlib.verdict(result['responder/emit_median_s'] < 1.5)} (emit), "
          f"{benchlib.verdict(result['responder/cli_median_s'] < 1.5)} (cli)")
    print(f"responder, from its own lines: report -> arrival "
          f"{result.get('responder_delivery_median_s')} s, report -> rollback outcome (after "
          f"the rollback's checks) {result.get('responder_report_to_outcome_median_s')} s")
    print(f"loadavg before {result['loadavg_before']}, after {result['loadavg_after']}")


if __name__ == "__main__":
    main()
