"""Bus positions of any size, exact everywhere they are written (SPEC §5).

In Python an offset is an int (exact at any size). Kinesis sequence numbers reach 10^56, beyond
int64, polars Int64 and the JCS number domain, so wherever an offset leaves Python it is written
so that nothing rounds: a decimal string in frames, Delta columns and commit markers, `numeric`
in Postgres, and in a JSON basis an integer for the embedded bus and a decimal string for
Kinesis (the bus's `OffsetStyle`). Decimal strings without leading zeros order numerically by
(length, text); `order_keys` and `below` are that rule for polars, written once.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

import polars as pl

OFFSET_TEXT = re.compile(r"0|[1-9][0-9]{0,128}")  # Kinesis: 0|([1-9]\d{0,128})


class OffsetStyle(StrEnum):
    """How a bus's offsets appear in a JSON basis (and so in every hash over it)."""

    INTEGER = "integer"  # the embedded log: dense integers, far below 2^53
    DECIMAL_STRING = "decimal_string"  # Kinesis sequence numbers


def parse_offset(value: Any) -> int:
    """An offset from JSON or text: an int >= 0 (not a bool) or its canonical decimal string."""
    if isinstance(value, bool):
        raise ValueError("an offset is not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("offsets are >= 0")
        return value
    if isinstance(value, str) and OFFSET_TEXT.fullmatch(value):
        return int(value)
    raise ValueError("an offset is an integer >= 0 or its decimal string without leading zeros")


def offset_json(offset: int, style: OffsetStyle) -> int | str:
    return str(offset) if style is OffsetStyle.DECIMAL_STRING else offset


def basis_json(stream: str, watermarks: dict[int, int], style: OffsetStyle) -> dict[str, Any]:
    """`{stream_name, watermark_basis: {partition: exclusive-next offset}}`, partitions in order."""
    return {"stream_name": stream,
            "watermark_basis": {str(p): offset_json(watermarks[p], style) for p in sorted(watermarks)}}


def parse_basis(basis: Any) -> tuple[str, dict[int, int]]:
    """(stream_name, {partition: offset}) from a basis object; ValueError when it is not one."""
    if not isinstance(basis, dict) or set(basis) != {"stream_name", "watermark_basis"}:
        raise ValueError("a basis is exactly {stream_name, watermark_basis}")
    stream, marks = basis["stream_name"], basis["watermark_basis"]
    if not isinstance(stream, str) or not isinstance(marks, dict):
        raise ValueError("a basis maps a stream name to {partition: offset}")
    offsets: dict[int, int] = {}
    for partition, offset in marks.items():
        if not isinstance(partition, str) or not partition.isascii() or not partition.isdigit():
            raise ValueError("basis partitions are decimal strings")
        offsets[int(partition)] = parse_offset(offset)
    return stream, offsets


def order_keys(column: str = "offset", frame: pl.DataFrame | None = None) -> list[pl.Expr]:
    """Sort keys that put a decimal-string offset column in numeric order: (length, text); or, given
    the frame and when every offset there has at most 18 digits, the integer itself (faster)."""
    if frame is not None and (frame.is_empty() or frame[column].str.len_bytes().max() <= 18):  # type: ignore[operator]
        return [pl.col(column).cast(pl.Int64)]
    return [pl.col(column).str.len_bytes(), pl.col(column)]


def below(bound: int, column: str = "offset") -> pl.Expr:
    """`column < bound` for a decimal-string offset column, numerically."""
    text = str(bound)
    width = pl.col(column).str.len_bytes()
    return (width < len(text)) | ((width == len(text)) & (pl.col(column) < text))
