"""`kristalctl doctor`, the part without Prefect: does this host's set-up work end to end? The
settings load (the store from the environment or a store block), the endpoint answers (the
bucket is reachable) and honours conditional writes, the trust file parses (its
digest is shown, to compare across workers), and the key directory holds an activator key the
trust file trusts as one. Each check is a row (name, ok, detail, code); nothing live changes
(the endpoint probe writes one object under `_probe/`, as every first write of a process does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kristal.config import Settings
from kristal.errors import KristalError
from kristal.store.s3 import StoreConfig


@dataclass(frozen=True)
class Row:
    name: str
    ok: bool
    detail: str
    code: str | None = None


def _row(name: str, check: Callable[[], str]) -> Row:
    try:
        return Row(name, True, check())
    except KristalError as exc:
        return Row(name, False, exc.message, exc.code)


def local_rows(expected_trust_sha256: str | None = None,
               store: StoreConfig | None = None) -> list[Row]:
    """The rows; `store`: a store block's (`tasks.doctor.store_block_row`), else the
    environment's."""
    from kristal.context import Context, trust_file_sha256

    rows: list[Row] = []
    holder: dict[str, Context] = {}

    def settings() -> str:
        loaded = Settings.from_env(store=store)
        if not loaded.store.bucket:
            from kristal.errors import UsageInvalid

            raise UsageInvalid("KRISTAL_S3_BUCKET is not set")
        holder["ctx"] = Context.from_settings(loaded)
        return (f"bucket {loaded.store.bucket} at {loaded.store.endpoint_url or 'AWS'}, "
                f"home {loaded.home}")

    rows.append(_row("settings-and-trust-file", settings))
    ctx = holder.get("ctx")
    if ctx is None:
        return rows

    def endpoint() -> str:
        ctx.store.probe_conditional_writes()
        return "answers, and honours If-Match / If-None-Match"

    def trust_digest() -> str:
        digest = trust_file_sha256(ctx.settings.trust_file)
        if expected_trust_sha256 and digest != expected_trust_sha256:
            from kristal.errors import TrustRootMissing

            raise TrustRootMissing(f"{ctx.settings.trust_file} is {digest}, but the deployment "
                                   f"expects {expected_trust_sha256}: not the fleet's trust file")
        return f"{ctx.settings.trust_file}: {digest}" + (
            " (the deployment's)" if expected_trust_sha256 else "")

    def activator() -> str:
        from kristal.errors import KeyUnknown
        from kristal.trust.keys import load_role_key

        key = load_role_key(ctx.settings.key_dir, "activator")
        trusted = [sel for sel, entry in ctx.trust_file.channels.items()
                   if (k := entry.key(key.key_id)) is not None and "activator" in k.roles
                   and not entry.is_revoked(key.key_id)]
        if not trusted:
            raise KeyUnknown(f"activator key {key.key_id} in {ctx.settings.key_dir} is not "
                             "trusted as an activator by any entry of the trust file")
        return f"activator key {key.key_id}, trusted for {', '.join(trusted)}"

    rows += [_row("s3-endpoint", endpoint), _row("trust-file-digest", trust_digest),
             _row("activator-key", activator)]
    return rows
