"""Fixtures for release-level tests: a channel in a fresh bucket with real keys and trust file,
a publisher, helpers to tamper with what is in the bucket, and the shared Prefect server.

Registered from conftest.py. Every object lives in real SeaweedFS; every key is real Ed25519.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kristal.channel import records
from kristal.channel.index import index_body, update_index
from kristal.config import Settings
from kristal.context import Context
from kristal.dev.devstack import dev_env, without_bakes
from kristal.dev.processes import SeaweedProcess
from kristal.formats import layout
from kristal.formats.canonical import canonical_bytes, parse_json
from kristal.operations.outcome import Outcome, Who
from kristal.publish.publisher import PublisherKeys, PublishResult, load_publisher_keys, publish
from kristal.store.s3 import ObjectStore, StoreConfig
from kristal.trust.keys import generate_key

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE = REPO_ROOT / "samples" / "triples.jsonl"


def write_triples(path: Path, count: int, *, tag: str = "t") -> Path:
    with path.open("w") as out:
        for i in range(count):
            out.write(
                json.dumps(
                    {
                        "statement_id": f"stmt:{tag}:{i:05d}",
                        "subject": f"entity:{i % 40:03d}",
                        "predicate": f"relation:{i % 3}",
                        "object": f"value:{tag}:{i}",
                    }
                )
                + "\n"
            )
    return path


@dataclass
class World:
    """One channel in one fresh bucket, with a dev key set and its trust file."""

    ctx: Context
    home: Path
    keys: PublisherKeys
    channel: str
    env: dict[str, str]
    patch: pytest.MonkeyPatch
    published: dict[int, PublishResult] = field(default_factory=dict)

    @property
    def store(self) -> ObjectStore:
        return self.ctx.store

    def data(self, release_id: int, rows: int = 60) -> Path:
        return write_triples(self.home / f"data-{release_id}.jsonl", rows, tag=f"r{release_id}")

    def publish(
        self,
        release_id: int,
        *,
        rows: int = 60,
        generation: int = 1,
        expect: dict[str, Any] | None = None,
        shards: int = 0,
        data: Path | None = None,
        channel: str | None = None,
    ) -> PublishResult:
        expect_file = None
        if expect is not None:
            expect_file = self.home / f"expect-{release_id}.json"
            expect_file.write_text(json.dumps(expect))
        result = publish(
            self.store,
            self.ctx.trust(channel or self.channel),
            self.keys,
            data=data or self.data(release_id, rows),
            channel_id=channel or self.channel,
            release_id=release_id,
            generation=generation,
            expect_file=expect_file,
            shards=shards,
            now=self.ctx.now,
        )
        self.published[release_id] = result
        return result

    def who(self, reason: str = "test") -> Who:
        return Who(operator="pytest", reason=reason, correlation_id=f"test-{uuid.uuid4().hex[:8]}")

    # --- the operations, through the path production runs ---------------------------------------
    # `via="flow"` runs the Prefect flow (the test harness's server: request `prefect_api`);
    # `via="plain"` runs the same operation with the plain runner (no orchestrator, no lock).
    def activate(self, release_id: int, *, via: str = "flow", force: bool = False,
                 dry_run: bool = False, channel: str | None = None,
                 reason: str | None = None) -> Outcome:
        channel = channel or self.channel
        reason = reason or f"activate {release_id}"
        if via == "flow":
            from flows.activate import activate
            from flows.params import ActivateRequest

            return activate(ActivateRequest(
                channel_id=channel, release_id=release_id, force=force, dry_run=dry_run,
                operator="pytest", reason=reason))
        from kristal.operations.activate import activate as plain

        return plain(self.plain_runner(), self.ctx, channel_id=channel, release_id=release_id,
                     force=force, dry_run=dry_run, who=self.who(reason))

    def rollback(self, to: Any = "last-known-good", *, via: str = "flow",
                 expected_activation_id: str | None = None,
                 failed_flow_run_id: str | None = None, automatic: bool = False,
                 reason: str = "test rollback", channel: str | None = None) -> Outcome:
        channel = channel or self.channel
        if via == "flow":
            from flows.params import RollbackRequest
            from flows.rollback import rollback

            return rollback(RollbackRequest(
                channel_id=channel, to=to, expected_activation_id=expected_activation_id,
                failed_flow_run_id=failed_flow_run_id, automatic=automatic,
                operator="pytest", reason=reason))
        from kristal.operations.rollback import rollback as plain

        return plain(self.plain_runner(), self.ctx, channel_id=channel, to=to,
                     expected_activation_id=expected_activation_id,
                     failed_flow_run_id=failed_flow_run_id, automatic=automatic,
                     who=self.who(reason))

    def downgrade(self, release_id: int, authorization_id: str, *, via: str = "flow",
                  require_approval: bool = False, reason: str = "test downgrade") -> Outcome:
        if via == "flow":
            from flows.downgrade import downgrade
            from flows.params import DowngradeRequest

            return downgrade(DowngradeRequest(
                channel_id=self.channel, release_id=release_id,
                authorization_id=authorization_id, require_approval=require_approval,
                operator="pytest", reason=reason))
        from kristal.operations.downgrade import downgrade as plain

        return plain(self.plain_runner(), self.ctx, channel_id=self.channel,
                     release_id=release_id, authorization_id=authorization_id,
                     require_approval=require_approval, who=self.who(reason))

    def reverify(self, *, via: str = "flow", checks_timeout_s: float = 900.0,
                 rollback_on_failure: list[str] | None = None,
                 channel: str | None = None) -> Any:
        """The reverify operation for this channel: its result (a failure raises)."""
        channel = channel or self.channel
        if via == "flow":
            from flows.params import ReverifyRequest
            from flows.reverify import reverify

            return reverify(ReverifyRequest(channel_ids=[channel],
                                            checks_timeout_s=checks_timeout_s,
                                            rollback_on_failure=rollback_on_failure or []))
        from kristal.operations.reverify import reverify as plain

        return plain(self.plain_runner(), self.ctx, channel_ids=[channel],
                     checks_timeout_s=checks_timeout_s,
                     rollback_on_failure=rollback_on_failure or [])

    def channel_report(self, *, checks_timeout_s: float = 900.0) -> Any:
        """One channel's re-verification rows, by the plain runner (no raise on failure)."""
        from kristal.operations.reverify import reverify_channel

        return reverify_channel(self.plain_runner(), self.ctx, self.channel,
                                checks_timeout_s=checks_timeout_s)

    def flows_through(self, endpoint_url: str, *, connect_timeout: float = 2,
                      read_timeout: float = 5, cache_dir: Path | None = None) -> Context:
        """Make the flows (which build their context from the environment, as in production)
        reach the store through `endpoint_url` (a fault proxy), with these timeouts and,
        optionally, a fresh cache. `world.ctx` stays direct. Returns the flows' context."""
        self.patch.setenv("KRISTAL_S3_ENDPOINT", endpoint_url)
        self.patch.setenv("KRISTAL_S3_CONNECT_TIMEOUT_S", str(connect_timeout))
        self.patch.setenv("KRISTAL_S3_READ_TIMEOUT_S", str(read_timeout))
        if cache_dir is not None:
            self.patch.setenv("KRISTAL_CACHE_DIR", str(cache_dir))
        return Context.from_settings(Settings.from_env())

    def free_channel_lock(self) -> None:
        """What an operator does after a worker was killed holding the channel's lease (it
        outlives the process): set the channel limit's active slots back to 0."""
        from prefect import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

        from tasks.names import lock_name

        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(
                lock_name(self.channel), GlobalConcurrencyLimitUpdate(active_slots=0))

    def plain_runner(self) -> Any:
        from kristal.operations.runner import PlainRunner

        return PlainRunner(retry_delays_s=(0.05, 0.1))

    def pointer(self) -> records.PointerState:
        return records.read_pointer(self.ctx, self.channel)

    def snapshot(self) -> dict[str, bytes]:
        """Every object under the channel (pointer, history, checks, quarantine), for equality."""
        out = {}
        for key in self.store.list_keys(f"channels/{self.channel}/"):
            if key.endswith("/index.json"):
                continue
            out[key] = self.store.get_bytes(key, max_bytes=1 << 24)[0]
        return out

    # --- tampering helpers: rewrite a JSON object in the bucket ---------------------------------
    def read_json(self, key: str) -> Any:
        return parse_json(self.store.get_bytes(key, max_bytes=1 << 26)[0])

    def write_json(self, key: str, doc: Any) -> None:
        self.store.put_bytes(key, canonical_bytes(doc))

    def resign(self, doc: dict[str, Any], key: Any = None) -> dict[str, Any]:
        """`doc` (a channel record) with a fresh `record_id` and one signature, by `key` or
        this world's activator: an edit an attacker holding a key could make."""
        from kristal.formats.identity import DocKind
        from kristal.trust.signing import sign_document

        body = {k: v for k, v in doc.items() if k not in ("record_id", "signatures")}
        return sign_document({**body, "signatures": []}, DocKind.CHANNEL_RECORD,
                             key or self.ctx.keys.signer())

    def trust_doc(self) -> dict[str, Any]:
        return json.loads(Path(self.env["KRISTAL_TRUST_FILE"]).read_text())

    def write_trust(self, doc: dict[str, Any]) -> None:
        path = Path(self.env["KRISTAL_TRUST_FILE"])
        path.write_text(json.dumps(doc))
        self.refresh()

    def refresh(self) -> None:
        """Reload the trust file into the context (as a new process would)."""
        self.ctx = Context.from_settings(Settings.from_env())

    def extra_key(self, role: str, key_id: str, *, trusted: bool) -> Any:
        key_dir = self.home / "extra-keys"
        entry = generate_key(role, key_id, key_dir)
        if trusted:
            doc = self.trust_doc()
            doc["channels"]["*"]["keys"].append(entry.model_dump(mode="json", exclude_none=True))
            self.write_trust(doc)
        from kristal.trust.keys import load_signing_key

        return load_signing_key(key_dir, key_id)

    def change_index(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Re-sign the channel index as the channel authority, after `change` edits its body."""
        def apply(index: Any) -> dict[str, Any]:
            body = index_body(index)
            change(body)
            return body

        update_index(self.store, self.channel, self.ctx.trust(self.channel), self.keys.authority,
                     apply, now=self.ctx.now)

    def rewrite_entry(self, release_id: int, **changes: Any) -> None:
        """A validly re-signed index in which one release entry says something else."""
        def change(body: dict[str, Any]) -> None:
            for entry in body["releases"]:
                if entry["release_id"] == release_id:
                    entry.update(changes)

        self.change_index(change)

    def manifest_key(self, release_id: int, part: str) -> str:
        result = self.published[release_id]
        return {
            "exchange": layout.exchange_manifest(result.exchange_id),
            "pack": layout.pack_manifest(result.runtime_pack_ids[0]),
        }[part]


def make_world(tmp_path: Path, config: StoreConfig, monkeypatch: pytest.MonkeyPatch) -> World:
    home = tmp_path / "kristal-home"
    env = dev_env(home, config)
    without_bakes(Path(env["KRISTAL_TRUST_FILE"]))  # tests/test_bake.py opts into bakes
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = Context.from_settings(Settings.from_env())
    keys = load_publisher_keys(Path(env["KRISTAL_KEY_DIR"]))
    channel = f"acme/test/r{uuid.uuid4().hex[:6]}"
    return World(ctx=ctx, home=home, keys=keys, channel=channel, env=env, patch=monkeypatch)


@pytest.fixture
def world(tmp_path: Path, store_config: StoreConfig, monkeypatch: pytest.MonkeyPatch,
          prefect_api: str) -> World:
    """A channel in a fresh bucket; its operations run through the session's Prefect server."""
    return make_world(tmp_path, store_config, monkeypatch)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory, seaweed: SeaweedProcess) -> Iterator[str]:
    """One real Prefect server for the whole session (Prefect's own test harness)."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(home / "storage")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from kristal.dev.processes import FILESYSTEM_LEASES

    # As `dev up` and production run it: leases that survive a server restart.
    os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", FILESYSTEM_LEASES)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield str(PREFECT_API_URL.value())
