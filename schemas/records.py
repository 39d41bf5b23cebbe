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
from featureplane.schemas.frames import LABEL_SCHEMA, TRANSACTION_SCHEMA, LabelFrame, TransactionFrame, invalid_rows

SKIPPED_RECORD = b""  # what a bus delivers at a corrupt position an operator skipped (`fp bus skip`)


@dataclass(frozen=True)
class ApplyFailure:
    partition: int
    offset: int
    event_id: str | None
    reason_code: str
    detail: str


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
            model: type, flatten: Callable[[dict[str, Any]], tuple]) -> tuple[pl.DataFrame, list[ApplyFailure]]:
    """Parse, normalise and contract-check records of one event type; the rest become failures."""
    rows: list[tuple] = []
    failures: list[ApplyFailure] = []
    for partition, offset, value in records:
        try:
            event = decode_event(value, event_type)
        except RejectedEvent as exc:
            failures.append(ApplyFailure(partition, offset, None, exc.reason_code, exc.message))
            continue
        pins = event["context_pins"]
        rows.append((partition, str(offset), event["platform_run_id"], event["event_id"], event["payload"]["flow_id"],
                     pins["scenario_id"], pins["run_id"], pins["manifest_fingerprint"], pins["parameter_hash"],
                     *flatten(event)))
    frame = pl.DataFrame(rows, schema=schema, orient="row")
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


def decode_transactions(records: Iterable[tuple[int, int, bytes]]) -> tuple[pl.DataFrame, list[ApplyFailure]]:
    """(partition, offset, value) records -> a TransactionFrame and the records that cannot apply."""
    return _decode(records, "transaction_event", TRANSACTION_SCHEMA, TransactionFrame, _transaction_fields)


def decode_labels(records: Iterable[tuple[int, int, bytes]]) -> tuple[pl.DataFrame, list[ApplyFailure]]:
    """(partition, offset, value) records -> a LabelFrame and the records that cannot apply."""
    return _decode(records, "label_assertion", LABEL_SCHEMA, LabelFrame, _label_fields)


def first_positions(frame: pl.DataFrame) -> pl.DataFrame:
    """Keep each (platform_run_id, event_id) once, at its first (partition, offset)."""
    return frame.sort("partition", *order_keys()).unique(["platform_run_id", "event_id"], keep="first",
                                                    maintain_order=True)
