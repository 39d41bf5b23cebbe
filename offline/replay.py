"""Reading the archive at an explicit basis: the decoded, deduplicated events the online plane
had applied when its checkpoint stood at that basis (same decoder, same first-position rule)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import polars as pl

from featureplane.lake.archive import (
    BATCH_ROWS,
    has_typed_columns,
    read_basis,
    scan_basis,
    scan_basis_batches,
    scan_basis_lazy,
    table_name,
)
from featureplane.lake.delta import DeltaLake
from featureplane.lake.page_cache import warm
from featureplane.pipelines.errors import TerminalError
from featureplane.pipelines.positions import parse_basis
from featureplane.schemas.frames import LABEL_SCHEMA, TRANSACTION_SCHEMA
from featureplane.schemas.records import ApplyFailure, decode_labels, decode_transactions, first_positions
from featureplane.schemas.streams import LABELS, TRAFFIC


def basis_offsets(basis: dict[str, Any]) -> tuple[str, dict[int, int]]:
    """(stream_name, {partition: exclusive-next offset}) from an input/replay basis object."""
    try:
        return parse_basis(basis)
    except ValueError as exc:
        raise TerminalError("INVALID_BASIS", f"a basis is {{stream_name, watermark_basis: {{partition: offset}}}}: "
                                             f"{exc}") from None


def stream_offsets(basis: dict[str, Any], stream: str) -> dict[int, int]:
    """The basis's offsets, which must be of `stream`."""
    name, offsets = basis_offsets(basis)
    if name != stream:
        raise TerminalError("INVALID_BASIS", f"a basis of {name} where {stream} was expected")
    return offsets


def _records(lake: DeltaLake, basis: dict[str, Any]) -> list[tuple[int, int, bytes]]:
    stream, offsets = basis_offsets(basis)
    table = read_basis(lake, stream, offsets)
    return list(zip(table.column("partition").to_pylist(), map(int, table.column("offset").to_pylist()),
                    table.column("value").to_pylist(), strict=True))


def _decoded(lake: DeltaLake, basis: dict[str, Any], stream: str,
             decode: Callable[[list[tuple[int, int, bytes]]], tuple[pl.DataFrame, list[ApplyFailure]]],
             schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The records inside the basis that decode, as typed rows: read from the archive's typed
    columns (decoded once, when archived), or decoded here from the bytes of an archive written
    before it had them."""
    offsets = stream_offsets(basis, stream)
    table = lake.table(table_name(stream))  # opened once: schema, progress and rows of one version
    if not has_typed_columns(lake, stream, table):
        frame, _ = decode(_records(lake, basis))
        return frame
    columns = [c for c in schema if c not in ("partition", "offset")]
    frame = scan_basis(lake, stream, offsets, [*columns, "reject_reason"], where=pl.col("reject_reason").is_null(),
                       table=table)
    if frame is None:
        return pl.DataFrame(schema=schema)
    return frame.drop("reject_reason").cast(schema)  # type: ignore[arg-type]


def warm_archive(lake: DeltaLake, stream: str = TRAFFIC) -> None:
    """Read a local archive table's files once, sequentially, in the background (`lake.page_cache`):
    for a job about to scan most of it, cold."""
    table = lake.table(table_name(stream))
    if table is not None:
        warm(table.file_uris())


def transaction_batches(lake: DeltaLake, basis: dict[str, Any], pins: dict[str, str], columns: list[str],
                        keys: dict[str, pl.Series] | None = None) -> Iterator[pl.DataFrame]:
    """`transaction_scan`, a batch at a time."""
    scan = transaction_scan(lake, basis, pins, columns, keys)
    if scan is not None:
        yield from scan.collect_batches(chunk_size=BATCH_ROWS, maintain_order=False)


def transaction_scan(lake: DeltaLake, basis: dict[str, Any], pins: dict[str, str], columns: list[str],
                     keys: dict[str, pl.Series] | None = None) -> pl.LazyFrame | None:
    """The transactions inside the basis that decode and carry these pins, `columns` of them, as one
    lazy scan for the caller to narrow further and collect (streaming, when history is large); None
    when the basis is empty. Duplicates are not yet removed (`first_positions` wherever they meet).
    With `keys` ({key field: ids}), only those of at least one of the keys, filtered as the archive
    is read. An archive without typed columns is decoded whole."""
    offsets = stream_offsets(basis, TRAFFIC)
    table = lake.table(table_name(TRAFFIC))
    wanted_keys = [pl.col(f).is_in(ids.implode()) for f, ids in sorted((keys or {}).items())]
    if not has_typed_columns(lake, TRAFFIC, table):
        frame = with_pins(transactions_at(lake, basis), pins)
        if keys is not None:
            frame = frame.filter(pl.any_horizontal(wanted_keys) if wanted_keys else pl.lit(False))
        return frame.lazy().select("partition", "offset", *columns)
    where = pl.col("reject_reason").is_null()
    for pin, value in sorted(pins.items()):
        where = where & (pl.col(pin) == value)
    if keys is not None:
        where = where & (pl.any_horizontal(wanted_keys) if wanted_keys else pl.lit(False))
    wanted = [c for c in columns if c not in ("partition", "offset")]
    scan = scan_basis_lazy(lake, TRAFFIC, offsets, wanted, where=where, table=table)
    if scan is None:
        return None
    return scan.cast({c: t for c, t in TRANSACTION_SCHEMA.items() if c in ("partition", "offset", *wanted)})  # type: ignore[arg-type]


def transactions_at(lake: DeltaLake, basis: dict[str, Any]) -> pl.DataFrame:
    """Transactions inside the basis, each (platform_run_id, event_id) once at its first position."""
    return first_positions(_decoded(lake, basis, TRAFFIC, decode_transactions, TRANSACTION_SCHEMA))


def labels_at(lake: DeltaLake, basis: dict[str, Any]) -> pl.DataFrame:
    return first_positions(_decoded(lake, basis, LABELS, decode_labels, LABEL_SCHEMA))


def pinned_labels(lake: DeltaLake, basis: dict[str, Any], pins: dict[str, str]) -> pl.DataFrame:
    """`with_pins(labels_at(...))` with only the columns a dataset joins: read a batch at a time, the pins
    compared and dropped per batch, so memory follows the label assertions kept, not the archive's
    columns (700 MB less at 5M transactions). Copies are still resolved over every run."""
    offsets = stream_offsets(basis, LABELS)
    table = lake.table(table_name(LABELS))
    if not has_typed_columns(lake, LABELS, table):
        return with_pins(labels_at(lake, basis), pins)
    kept = ["platform_run_id", "event_id", "flow_id", "label", "observed_us"]
    pinned = pl.all_horizontal([pl.col(n) == v for n, v in sorted(pins.items())] or [pl.lit(True)]).alias("_pinned")
    batches = [batch.select("partition", "offset", *kept, pinned)
               for batch in scan_basis_batches(lake, LABELS, offsets, [*kept, *sorted(pins)],
                                               where=pl.col("reject_reason").is_null(), table=table)]
    schema = {c: LABEL_SCHEMA[c] for c in ("partition", "offset", *kept)}
    frame = pl.concat(batches).cast(schema) if batches else pl.DataFrame(schema=schema)  # type: ignore[arg-type]
    if "_pinned" not in frame.columns:
        return frame
    return first_positions(frame).filter(pl.col("_pinned")).drop("_pinned")


def with_pins(frame: pl.DataFrame, pins: dict[str, str]) -> pl.DataFrame:
    return frame.filter(*[pl.col(name) == value for name, value in sorted(pins.items())])
