"""The trusted local state of this machine (TUF-style, DESIGN §6): the highest channel-index
version it has verified or written, per channel, under `$KRISTAL_HOME/trusted/`. A validly
signed older index must not undo a revocation, a floor or an authorization: an index below the
remembered version is `index_replayed`.

Rules: the number only ever goes up; each channel has its own small file, replaced atomically
under an exclusive lock, so concurrent processes and threads never lower it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path

from kristal.formats.models import validate_channel_id


class TrustedVersions:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, channel_id: str) -> Path:
        return self.root / (validate_channel_id(channel_id).replace("/", ".") + ".json")

    def highest(self, channel_id: str) -> int:
        """The highest index version remembered for the channel (0: none yet)."""
        try:
            doc = json.loads(self._path(channel_id).read_text())
        except (OSError, ValueError):
            return 0
        version = doc.get("index_version") if isinstance(doc, dict) else None
        return version if isinstance(version, int) and version >= 0 else 0

    def remember(self, channel_id: str, index_version: int) -> None:
        """Raise the remembered version to `index_version` (never lowers it)."""
        path = self._path(channel_id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if index_version <= self.highest(channel_id):
                return
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump({"channel_id": channel_id, "index_version": index_version}, out)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        finally:
            os.close(lock_fd)
