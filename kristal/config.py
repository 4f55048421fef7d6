"""Settings read from the environment (DESIGN §9), one place for every default.

`KRISTAL_HOME` holds local state (dev stack, keys, trust file, cache) unless a variable points
elsewhere. Nothing here talks to the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kristal.store.s3 import StoreConfig


@dataclass(frozen=True)
class Settings:
    home: Path
    trust_file: Path
    key_dir: Path
    cache_dir: Path
    store: StoreConfig
    checks_timeout_s: float

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("KRISTAL_HOME", Path.home() / ".kristal")).expanduser()
        return cls(
            home=home,
            trust_file=Path(os.environ.get("KRISTAL_TRUST_FILE", home / "trust.json")),
            key_dir=Path(os.environ.get("KRISTAL_KEY_DIR", home / "keys")),
            cache_dir=Path(os.environ.get("KRISTAL_CACHE_DIR", home / "cache")),
            store=StoreConfig.from_env(),
            checks_timeout_s=float(os.environ.get("KRISTAL_CHECKS_TIMEOUT_S", "900")),
        )
