"""Decoding bus records into validated, flattened transaction frames (shared by both planes)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from pipelines.timefmt import parse_rfc3339
from runtime.errors import RejectedEvent
from schemas.envelope import normalize_event
from schemas.frames import TRANSACTION_SCHEMA, invalid_rows


@dataclass(frozen=True)
class ApplyFailure:
    partition: int
    offset: int
    event_id: str | None
    reason_code: str
    detail: str


def decode_transactions(records: Iterable[tuple[int, int, bytes]]) -> tuple[pl.DataFrame, list[ApplyFailure]]:
    """(partition, offset, value) records -> a TransactionFrame and the records that cannot apply."""
    rows: list[tuple] = []
    failures: list[ApplyFailure] = []
    for partition, offset, value in records:
        try:
            event = normalize_event(json.loads(value))
            if event["event_type"] != "transaction_event":
                raise RejectedEvent("WRONG_EVENT_TYPE", f"{event['event_type']} on the traffic stream")
        except (ValueError, RecursionError):
            failures.append(ApplyFailure(partition, offset, None, "MALFORMED_RECORD", "record is not JSON"))
            continue
        except RejectedEvent as exc:
            failures.append(ApplyFailure(partition, offset, None, exc.reason_code, exc.message))
            continue
        pins, p = event["context_pins"], event["payload"]
        rows.append((
            partition, offset, event["platform_run_id"], event["event_id"], pins["scenario_id"], pins["run_id"],
            pins["manifest_fingerprint"], pins["parameter_hash"], parse_rfc3339(event["ts_utc"]),
            p["account_id"], p["card_id"], p["customer_id"], p["merchant_id"], p["device_id"],
            p["amount_minor"], p["channel"],
        ))
    frame = pl.DataFrame(rows, schema=TRANSACTION_SCHEMA, orient="row")
    bad = invalid_rows(frame)
    if bad:
        for index, check in sorted(bad.items()):
            row = frame.row(index, named=True)
            failures.append(ApplyFailure(row["partition"], row["offset"], row["event_id"], "CONTRACT_VIOLATION",
                                         check))
        frame = frame.with_row_index("_i").filter(~pl.col("_i").is_in(list(bad))).drop("_i")
    return frame, failures


def first_positions(frame: pl.DataFrame) -> pl.DataFrame:
    """Keep each (platform_run_id, event_id) once, at its first (partition, offset)."""
    return frame.sort("partition", "offset").unique(["platform_run_id", "event_id"], keep="first",
                                                    maintain_order=True)
