"""Reading the archive at an explicit basis: the decoded, deduplicated events the online plane
had applied when its checkpoint stood at that basis (same decoder, same first-position rule)."""

from __future__ import annotations

from typing import Any

import polars as pl

from featureplane.lake.archive import read_basis
from featureplane.lake.delta import DeltaLake
from featureplane.pipelines.errors import TerminalError
from featureplane.schemas.records import ApplyFailure, decode_labels, decode_transactions, first_positions


def basis_offsets(basis: dict[str, Any]) -> tuple[str, dict[int, int]]:
    """(stream_name, {partition: exclusive-next offset}) from an input/replay basis object."""
    try:
        stream = basis["stream_name"]
        offsets = {int(p): int(o) for p, o in basis["watermark_basis"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TerminalError("INVALID_BASIS", "a basis is {stream_name, watermark_basis: {partition: offset}}") from None
    if not isinstance(stream, str) or any(p < 0 or o < 0 for p, o in offsets.items()):
        raise TerminalError("INVALID_BASIS", "basis partitions and offsets are integers >= 0")
    return stream, offsets


def _records(lake: DeltaLake, basis: dict[str, Any]) -> list[tuple[int, int, bytes]]:
    stream, offsets = basis_offsets(basis)
    table = read_basis(lake, stream, offsets)
    return list(zip(table.column("partition").to_pylist(), table.column("offset").to_pylist(),
                    table.column("value").to_pylist(), strict=True))


def transactions_at(lake: DeltaLake, basis: dict[str, Any]) -> tuple[pl.DataFrame, list[ApplyFailure]]:
    """Transactions inside the basis, each (platform_run_id, event_id) once at its first position."""
    frame, failures = decode_transactions(_records(lake, basis))
    return first_positions(frame), failures


def labels_at(lake: DeltaLake, basis: dict[str, Any]) -> pl.DataFrame:
    frame, _ = decode_labels(_records(lake, basis))
    return first_positions(frame)


def with_pins(frame: pl.DataFrame, pins: dict[str, str]) -> pl.DataFrame:
    return frame.filter(*[pl.col(name) == value for name, value in sorted(pins.items())])
