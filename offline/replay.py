"""Reading the archive at an explicit basis: the decoded, deduplicated events the online plane
had applied when its checkpoint stood at that basis (same decoder, same first-position rule)."""

from __future__ import annotations

from typing import Any

import polars as pl

from featureplane.lake.archive import read_basis
from featureplane.lake.delta import DeltaLake
from featureplane.pipelines.errors import TerminalError
from featureplane.pipelines.positions import parse_basis
from featureplane.schemas.records import ApplyFailure, decode_labels, decode_transactions, first_positions


def basis_offsets(basis: dict[str, Any]) -> tuple[str, dict[int, int]]:
    """(stream_name, {partition: exclusive-next offset}) from an input/replay basis object."""
    try:
        return parse_basis(basis)
    except ValueError as exc:
        raise TerminalError("INVALID_BASIS", f"a basis is {{stream_name, watermark_basis: {{partition: offset}}}}: "
                                             f"{exc}") from None


def _records(lake: DeltaLake, basis: dict[str, Any]) -> list[tuple[int, int, bytes]]:
    stream, offsets = basis_offsets(basis)
    table = read_basis(lake, stream, offsets)
    return list(zip(table.column("partition").to_pylist(), map(int, table.column("offset").to_pylist()),
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
