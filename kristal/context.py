"""What every operation needs: the store, the local trust file, the cache and a clock.

Built once per process from `Settings`; the trust file is local configuration, never read from
the bucket it protects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kristal.config import Settings
from kristal.formats.time import utc_now
from kristal.store.blobcache import BlobCache
from kristal.store.s3 import ObjectStore
from kristal.trust.roots import ChannelTrust, TrustFile, load_trust_file
from kristal.verify.trusted_state import TrustedVersions


@dataclass
class Context:
    store: ObjectStore
    trust_file: TrustFile
    cache: BlobCache
    settings: Settings
    now: Callable[[], datetime] = field(default=utc_now)
    trusted: TrustedVersions | None = None

    def __post_init__(self) -> None:
        if self.trusted is None:
            self.trusted = TrustedVersions(self.settings.home / "trusted")

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Context:
        settings = settings or Settings.from_env()
        return cls(
            store=ObjectStore(settings.store),
            trust_file=load_trust_file(settings.trust_file),
            cache=BlobCache(settings.cache_dir),
            settings=settings,
        )

    def trust(self, channel_id: str) -> ChannelTrust:
        return self.trust_file.for_channel(channel_id)

    @property
    def index_dir(self) -> Path:
        path = self.settings.cache_dir / "indexes"
        path.mkdir(parents=True, exist_ok=True)
        return path
