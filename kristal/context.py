"""What every operation needs: the store, the local trust file, the cache, a clock and the
activator key this process signs channel records with.

Built once per process from `Settings`; the trust file is local configuration, never read from
the bucket it protects. The activator key is loaded on first use (read-only commands never do).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kristal.channel.record_keys import RecordKeys
from kristal.config import Settings
from kristal.formats.time import utc_now
from kristal.store.blobcache import BlobCache
from kristal.store.s3 import ObjectStore
from kristal.trust.keys import load_role_key
from kristal.trust.roots import ChannelTrust, TrustFile, load_trust_file
from kristal.trust.signing import SigningKey
from kristal.verify.trusted_state import TrustedVersions


@dataclass
class Context:
    store: ObjectStore
    trust_file: TrustFile
    cache: BlobCache
    settings: Settings
    now: Callable[[], datetime] = field(default=utc_now)
    trusted: TrustedVersions | None = None
    trust_sha256: str | None = None  # of the trust file as read: recorded in every new record
    _keys: RecordKeys | None = field(default=None, init=False, repr=False)
    _activator: SigningKey | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.trusted is None:
            self.trusted = TrustedVersions(self.settings.home / "trusted")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Context:
        settings = settings or Settings.from_env()
        trust_file = load_trust_file(settings.trust_file)
        return cls(
            store=ObjectStore(settings.store),
            trust_file=trust_file,
            cache=BlobCache(settings.cache_dir),
            settings=settings,
            trust_sha256=trust_file_sha256(settings.trust_file),
        )

    @property
    def keys(self) -> RecordKeys:
        """Channel records are verified against the current trust file (rebuilt when it is
        reloaded) and signed with this process's activator key (`KRISTAL_KEY_DIR`)."""
        if self._keys is None or self._keys.trust_file is not self.trust_file:
            self._keys = RecordKeys(self.trust_file, self._activator_key)
        return self._keys

    def _activator_key(self) -> SigningKey:
        if self._activator is None:
            self._activator = load_role_key(self.settings.key_dir, "activator")
        return self._activator

    def trust(self, channel_id: str) -> ChannelTrust:
        return self.trust_file.for_channel(channel_id)


def trust_file_sha256(path: Path) -> str | None:
    """`sha256:<hex>` of the trust file's bytes (every worker should show the same)."""
    try:
        return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
