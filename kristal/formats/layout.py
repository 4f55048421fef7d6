"""Object-store keys of DESIGN §4, built only from validated IDs and channel names.

Every function checks its inputs against their pattern before returning a key, so a hostile ID
or path is refused with `path_invalid` before any I/O.
"""

from __future__ import annotations

from kristal.formats.identity import check_id
from kristal.formats.models import validate_channel_id, validate_relative_path

# The triples file every `kristal.runtime/sqlite/1` pack ships (DESIGN §7).
TRIPLES_PATH = "data/triples.jsonl"


def exchange_manifest(kristal_id: str) -> str:
    return f"exchanges/{check_id(kristal_id, 'exchange_id')}/exchange-manifest.json"


def exchange_blob(kristal_id: str, path: str) -> str:
    return f"exchanges/{check_id(kristal_id, 'exchange_id')}/{validate_relative_path(path)}"


def pack_manifest(pack_id: str) -> str:
    return f"runtime-packs/{check_id(pack_id, 'runtime_pack_id')}/runtime-pack-manifest.json"


def pack_file(pack_id: str, path: str) -> str:
    return f"runtime-packs/{check_id(pack_id, 'runtime_pack_id')}/{validate_relative_path(path)}"


def federation_manifest(federation_id: str) -> str:
    return f"federations/{check_id(federation_id, 'federation_id')}/federation-manifest.json"


def validation_report(report_id: str) -> str:
    return f"validation-reports/{check_id(report_id, 'validation_report_id')}.json"


def channel_index(channel_id: str) -> str:
    return f"channels/{validate_channel_id(channel_id)}/index.json"


def pointer(channel_id: str) -> str:
    return f"channels/{validate_channel_id(channel_id)}/active.json"


def history(channel_id: str, sequence: int) -> str:
    return f"channels/{validate_channel_id(channel_id)}/activations/{_seq(sequence)}.json"


def history_prefix(channel_id: str) -> str:
    return f"channels/{validate_channel_id(channel_id)}/activations/"


def checks(channel_id: str, sequence: int) -> str:
    return f"channels/{validate_channel_id(channel_id)}/checks/{_seq(sequence)}.json"


def bake_prefix(channel_id: str, sequence: int) -> str:
    return f"channels/{validate_channel_id(channel_id)}/bakes/{_seq(sequence)}/"


def bake_measurement(channel_id: str, sequence: int, n: int) -> str:
    if not isinstance(n, int) or not 1 <= n < 10**6:
        raise ValueError(f"measurement {n!r} out of range")
    return f"{bake_prefix(channel_id, sequence)}{n:06d}.json"


def bake_verdict(channel_id: str, sequence: int) -> str:
    return f"{bake_prefix(channel_id, sequence)}verdict.json"


def quarantine(channel_id: str, release_id: int) -> str:
    if not isinstance(release_id, int) or release_id < 1:
        raise ValueError(f"release_id {release_id!r} must be a positive integer")
    return f"channels/{validate_channel_id(channel_id)}/quarantine/{release_id}.json"


def _seq(sequence: int) -> str:
    if not isinstance(sequence, int) or not 1 <= sequence < 10**12:
        raise ValueError(f"sequence {sequence!r} out of range")
    return f"{sequence:012d}"
