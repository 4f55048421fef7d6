"""Time as our documents write it: RFC 3339 in UTC with a `Z`, strict parsing of RFC 3339
input (a zone is required), durations as the CLI takes them (`30m`, `24h`, `7d`, ISO 8601),
and the clock every operation reads (`utc_now`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator

from kristal.errors import UsageInvalid

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_SHORT = re.compile(r"^([0-9]+)([smhd])$")
_ISO = re.compile(r"^P(?:([0-9]+)D)?(?:T(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+)S)?)?$")
MAX_DURATION = timedelta(days=366)


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """`2026-12-01T17:21:02Z`: whole seconds, UTC, the form every document of ours carries."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strict_rfc3339(value: Any) -> Any:
    # pydantic alone would also take Unix numbers and naive "2026-01-01 00:00": refuse both.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 timestamp with a zone, e.g. 2026-01-01T00:00:00Z")
    return datetime.fromisoformat(value.upper())


Rfc3339 = Annotated[AwareDatetime, BeforeValidator(_strict_rfc3339)]


def is_rfc3339(value: object) -> bool:
    """Whether `value` is a timestamp `Rfc3339` accepts (the JSON schemas' `date-time`)."""
    try:
        _strict_rfc3339(value)
    except ValueError:
        return False
    return isinstance(value, str)


def parse_duration(text: str, *, at_least: timedelta = timedelta(0),
                   at_most: timedelta = MAX_DURATION) -> timedelta:
    """`30m`, `24h`, `7d`, or ISO 8601 (`P7D`, `PT12H`, `P1DT2H30M`); positive, bounded."""
    if not text.isascii():
        raise UsageInvalid(f"duration {text!r} must be written in ASCII")
    if match := _SHORT.fullmatch(text.strip()):
        value, unit = int(match.group(1)), match.group(2)
        delta = {
            "s": timedelta(seconds=value),
            "m": timedelta(minutes=value),
            "h": timedelta(hours=value),
            "d": timedelta(days=value),
        }[unit]
    elif (match := _ISO.fullmatch(text.strip())) and text.strip() not in ("P", "PT"):
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    else:
        raise UsageInvalid(f"duration {text!r} is not like 30m, 24h, 7d or ISO 8601 (P7D)")
    if delta <= at_least or delta > at_most:
        raise UsageInvalid(
            f"duration {text!r} must be more than {at_least} and at most {at_most}")
    return delta
