"""Instants as clients write them: RFC 3339 date-times (always with a UTC offset), read exactly.

The journal keeps microseconds, so finer fractions are cut to the microsecond: that changes no
comparison with a stored time (t <= 12:00:00.0000019 exactly when t <= 12:00:00.000001). A leap
second (23:59:60) is the last microsecond before the next minute, for the same reason.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+\- ])(\d{2}):(\d{2}))")
EXAMPLE = "2026-03-31T23:59:59Z"


def parse_instant(text: str) -> datetime:
    """The instant `text` names, in UTC; ValueError (saying why) if it is not RFC 3339.

    A `+` in an offset arrives as a space when a query string is not percent-encoded
    (`?at=2026-03-31T23:59:59+02:00`); no other reading of that space exists, so it is read as +.
    """
    match = _RFC3339.fullmatch(text.strip()) if len(text) <= 64 else None
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time with a UTC offset (e.g. {EXAMPLE})")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    micro = int((match.group(7) or "0")[:6].ljust(6, "0"))
    if second == 60:
        second, micro = 59, 999_999
    try:
        offset = timedelta(0)
        if match.group(8) is None:
            hours, minutes = int(match.group(10)), int(match.group(11))
            if hours > 23 or minutes > 59:
                raise ValueError("UTC offset out of range")
            offset = timedelta(hours=hours, minutes=minutes) * (-1 if match.group(9) == "-" else 1)
        local = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
        return local.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a valid date-time: {exc}") from None


def iso(instant: datetime) -> str:
    """How walletd writes an instant: UTC, microseconds, as transaction timestamps are written."""
    return instant.astimezone(timezone.utc).isoformat(timespec="microseconds")
