"""UTC timestamps as integer microseconds, and their one canonical text form.

Canonical text (outputs and hashes): `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import polars as pl

RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$",
    re.ASCII,
)
CANONICAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$", re.ASCII)
# CANONICAL for a polars column check (`envelope.vector_check`): ASCII classes (polars' \d is any
# Unicode digit) and the time of day bounded (chrono reads :60 as the next minute)
CANONICAL_COLUMN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]\.[0-9]{6}Z$"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_NAIVE = datetime(1970, 1, 1)
US_PER_SECOND = 1_000_000


class TimestampError(ValueError):
    """Text that is not an RFC 3339 timestamp with an offset, or beyond microsecond precision."""


MIN_US = (datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
MAX_US = (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
EPOCH_ORDINAL = EPOCH.toordinal()


def parse_rfc3339(text: object) -> int:
    """RFC 3339 text with an offset -> microseconds since the epoch, UTC (years 0001-9999 after
    normalization to UTC; anything else is a `TimestampError`, never an overflow)."""
    if not isinstance(text, str):
        raise TimestampError("timestamp must be a string")
    if CANONICAL.fullmatch(text):  # fast path: the form every admitted event carries (UTC, in range)
        try:
            delta = datetime.fromisoformat(text[:-1]) - EPOCH_NAIVE
        except ValueError as exc:
            raise TimestampError(str(exc)) from None
        return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds
    match = RFC3339.fullmatch(text)
    if match is None:
        raise TimestampError(f"not RFC 3339 with an offset: {text[:64]!r}")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7) or ""
    if len(fraction) > 6 and fraction[6:].strip("0"):
        raise TimestampError("timestamps are kept to the microsecond; finer precision would be lost")
    micros = int((fraction + "000000")[:6])
    if second == 60:
        raise TimestampError("leap seconds are not supported")
    if hour > 23 or minute > 59 or second > 59:
        raise TimestampError("time of day out of range")
    try:
        days = datetime(year, month, day).toordinal() - EPOCH_ORDINAL
    except ValueError as exc:
        raise TimestampError(str(exc)) from None
    offset_minutes = 0
    if match.group(9):
        off_h, off_m = int(match.group(10)), int(match.group(11))
        if off_h > 23 or off_m > 59:
            raise TimestampError("offset out of range")
        offset_minutes = (1 if match.group(9) == "+" else -1) * (off_h * 60 + off_m)
    value = ((days * 86_400 + hour * 3600 + (minute - offset_minutes) * 60 + second) * US_PER_SECOND) + micros
    if not MIN_US <= value <= MAX_US:
        raise TimestampError("in UTC the timestamp leaves the years 0001-9999")
    return value


def format_ts(micros: int) -> str:
    """Microseconds since the epoch (MIN_US..MAX_US) -> canonical `YYYY-MM-DDTHH:MM:SS.ffffffZ`."""
    return (EPOCH_NAIVE + timedelta(microseconds=micros)).isoformat(timespec="microseconds") + "Z"


CANONICAL_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"  # CANONICAL as a polars (chrono) format


def format_ts_expr(micros: pl.Expr) -> pl.Expr:
    """`format_ts` over a column of microseconds (datasets format a million stamps at once)."""
    return pl.from_epoch(micros, time_unit="us").dt.strftime(CANONICAL_FORMAT)


def canonical(text: str) -> str:
    """Validated RFC 3339 text -> its canonical form (the input itself when already canonical)."""
    micros = parse_rfc3339(text)
    return text if CANONICAL.fullmatch(text) else format_ts(micros)  # type: ignore[arg-type]


def to_datetime(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)
