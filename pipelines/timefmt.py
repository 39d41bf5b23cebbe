"""UTC timestamps as integer microseconds, and their one canonical text form.

Canonical text (outputs and hashes): `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)
CANONICAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_NAIVE = datetime(1970, 1, 1)
US_PER_SECOND = 1_000_000


class TimestampError(ValueError):
    """Text that is not an RFC 3339 timestamp with an offset, or beyond microsecond precision."""


def parse_rfc3339(text: object) -> int:
    """RFC 3339 text with an offset -> microseconds since the epoch, UTC."""
    if not isinstance(text, str):
        raise TimestampError("timestamp must be a string")
    if CANONICAL.match(text):  # fast path: the form every admitted event carries
        try:
            delta = datetime.fromisoformat(text[:-1]) - EPOCH_NAIVE
        except ValueError as exc:
            raise TimestampError(str(exc)) from None
        return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds
    match = RFC3339.match(text)
    if match is None:
        raise TimestampError(f"not RFC 3339 with an offset: {text[:64]!r}")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7) or ""
    if len(fraction) > 6 and fraction[6:].strip("0"):
        raise TimestampError("timestamps are kept to the microsecond; finer precision would be lost")
    micros = int((fraction + "000000")[:6])
    if second == 60:
        raise TimestampError("leap seconds are not supported")
    try:
        local = datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)
    except ValueError as exc:
        raise TimestampError(str(exc)) from None
    if match.group(9):
        sign = 1 if match.group(9) == "+" else -1
        off_h, off_m = int(match.group(10)), int(match.group(11))
        if off_h > 23 or off_m > 59:
            raise TimestampError("offset out of range")
        local -= sign * timedelta(hours=off_h, minutes=off_m)
    delta = local - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


def format_ts(micros: int) -> str:
    """Microseconds since the epoch -> canonical `YYYY-MM-DDTHH:MM:SS.ffffffZ`."""
    return (EPOCH_NAIVE + timedelta(microseconds=micros)).isoformat(timespec="microseconds") + "Z"


def canonical(text: str) -> str:
    if isinstance(text, str) and CANONICAL.match(text):
        parse_rfc3339(text)  # still validated (a 13th month is not a date)
        return text
    return format_ts(parse_rfc3339(text))


def to_datetime(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)
