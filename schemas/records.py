"""Decoding bus records into validated, flattened transaction frames (shared by both planes)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl

from featureplane.pipelines.errors import RejectedEvent
from featureplane.pipelines.positions import order_keys
from featureplane.pipelines.timefmt import parse_rfc3339
from featureplane.schemas.envelope import may_hold_forbidden_text, normalize_event
from featureplane.schemas.fast_decode import Candidates
from featureplane.schemas.frames import LABEL_SCHEMA, TRANSACTION_SCHEMA, LabelFrame, TransactionFrame, invalid_rows

SKIPPED_RECORD = b""  # what a bus delivers at a corrupt position an operator skipped (`fp bus skip`)


@dataclass(frozen=True)
class ApplyFailure:
    partition: int
    offset: int
    event_id: str | None
    reason_code: str
    detail: str


Decoded = tuple[pl.DataFrame, list[ApplyFailure]]  # a frame of the records that decoded, and the rest


def decode_event(value: bytes, event_type: str) -> dict[str, Any]:
    """One bus record -> its normalised envelope, or `RejectedEvent` (the reason both planes ledger)."""
    if value == SKIPPED_RECORD:
        raise RejectedEvent("CORRUPT_RECORD_SKIPPED", "the stored record was corrupt; an operator skipped it")
    try:
        event = normalize_event(json.loads(value), text_checked=not may_hold_forbidden_text(value))
    except (ValueError, RecursionError):
        raise RejectedEvent("MALFORMED_RECORD", "record is not JSON") from None
    if event["event_type"] != event_type:
        raise RejectedEvent("WRONG_EVENT_TYPE", f"{event['event_type']} where {event_type} was expected")
    return event


def _decode(records: Iterable[tuple[int, int, bytes]], event_type: str, schema: dict[str, pl.DataType],
            model: type, flatten: Callable[[dict[str, Any]], tuple],
            fast_columns: list[pl.Expr]) -> tuple[pl.DataFrame, list[ApplyFailure]]:
    """Parse, normalise and contract-check records of one event type; the rest become failures.

    Records exactly as admission writes them are decoded column-wise (`fast_decode`); any other
    record, and any the column-wise checks do not clear, goes through `decode_event` one by one,
    which decides. Rows keep the input order."""
    records = records if isinstance(records, list) else list(records)
    candidates = Candidates(records, event_type)
    checked = candidates.frame()
    slow = candidates.rest + [(i, records[i]) for i in checked.filter(~pl.col("_ok"))["_i"].to_list()]
    rows: list[tuple] = []
    failures: list[ApplyFailure] = []
    for index, (partition, offset, value) in sorted(slow, key=lambda item: item[0]):
        try:
            event = decode_event(value, event_type)
        except RejectedEvent as exc:
            failures.append(ApplyFailure(partition, offset, None, exc.reason_code, exc.message))
            continue
        pins = event["context_pins"]
        rows.append((index, partition, str(offset), event["platform_run_id"], event["event_id"],
                     event["payload"]["flow_id"], pins["scenario_id"], pins["run_id"],
                     pins["manifest_fingerprint"], pins["parameter_hash"], *flatten(event)))
    fast = checked.filter(pl.col("_ok")).select(pl.col("_i"), *fast_columns)
    decoded = pl.DataFrame(rows, schema={"_i": pl.Int64(), **schema}, orient="row")
    frame = pl.concat([fast.cast({"_i": pl.Int64(), **schema}), decoded]).sort("_i").drop("_i")
    bad = invalid_rows(frame, model)
    if bad:
        for index, check in sorted(bad.items()):
            row = frame.row(index, named=True)
            failures.append(ApplyFailure(row["partition"], int(row["offset"]), row["event_id"], "CONTRACT_VIOLATION",
                                         check))
        frame = frame.with_row_index("_i").filter(~pl.col("_i").is_in(list(bad))).drop("_i")
    return frame, failures


def _transaction_fields(event: dict[str, Any]) -> tuple:
    p = event["payload"]
    return (parse_rfc3339(event["ts_utc"]), p["account_id"], p["card_id"], p["customer_id"], p["merchant_id"],
            p["device_id"], p["amount_minor"], p["channel"])


def _label_fields(event: dict[str, Any]) -> tuple:
    p = event["payload"]
    return (p["label"], parse_rfc3339(p["effective_time"]), parse_rfc3339(p["observed_time"]))


_POSITIONED = [pl.col(c) for c in ("partition", "offset", "platform_run_id", "event_id", "flow_id", "scenario_id",
                                     "run_id", "manifest_fingerprint", "parameter_hash")]
_TRANSACTION_COLUMNS = [*_POSITIONED, pl.col("ts_utc_us").alias("ts_us"), pl.col("account_id"), pl.col("card_id"),
                        pl.col("customer_id"), pl.col("merchant_id"), pl.col("device_id"), pl.col("amount_minor"),
                        pl.col("channel")]
_LABEL_COLUMNS = [*_POSITIONED, pl.col("label"), pl.col("effective_time_us").alias("effective_us"),
                  pl.col("observed_time_us").alias("observed_us")]


def decode_transactions(records: Iterable[tuple[int, int, bytes]]) -> tuple[pl.DataFrame, list[ApplyFailure]]:
    """(partition, offset, value) records -> a TransactionFrame and the records that cannot apply."""
    return _decode(records, "transaction_event", TRANSACTION_SCHEMA, TransactionFrame, _transaction_fields,
                   _TRANSACTION_COLUMNS)


def decode_labels(records: Iterable[tuple[int, int, bytes]]) -> tuple[pl.DataFrame, list[ApplyFailure]]:
    """(partition, offset, value) records -> a LabelFrame and the records that cannot apply."""
    return _decode(records, "label_assertion", LABEL_SCHEMA, LabelFrame, _label_fields, _LABEL_COLUMNS)


POSITIONED_IDENTITY = ("platform_run_id", "event_id", "partition", "offset")  # what `first_positions` reads


def first_positions(frame: pl.DataFrame) -> pl.DataFrame:
    """Keep each (platform_run_id, event_id) once, at its first (partition, offset)."""
    duplicated = pl.struct("platform_run_id", "event_id").is_duplicated()
    if frame.is_empty() or not frame.select(duplicated.any()).item():  # the common case: nothing to drop
        return frame
    return frame.sort("partition", *order_keys(frame=frame)).unique(["platform_run_id", "event_id"], keep="first",
                                                    maintain_order=True)
