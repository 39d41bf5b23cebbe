"""pandera models for the event frames both planes validate before computing features."""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from featureplane.pipelines.positions import OFFSET_TEXT
from featureplane.schemas.envelope import ENTITY_ID, EVENT_ID, PIN

CHANNEL_VALUES = ["card_present", "ecom", "mobile"]


class PositionedEventFrame(pa.DataFrameModel):
    """The columns every flattened event frame starts with: bus position, identity, flow and pins."""

    partition: int = pa.Field(ge=0)
    offset: str = pa.Field(str_matches=rf"^(?:{OFFSET_TEXT.pattern})$")  # decimal: Kinesis offsets exceed int64
    platform_run_id: str = pa.Field(str_matches=PIN.pattern)
    event_id: str = pa.Field(str_matches=EVENT_ID.pattern)
    flow_id: str = pa.Field(str_matches=EVENT_ID.pattern)
    scenario_id: str = pa.Field(str_matches=PIN.pattern)
    run_id: str = pa.Field(str_matches=PIN.pattern)
    manifest_fingerprint: str = pa.Field(str_matches=PIN.pattern)
    parameter_hash: str = pa.Field(str_matches=PIN.pattern)


class TransactionFrame(PositionedEventFrame):
    """One row per transaction_event, flattened, with its bus position."""

    ts_us: int
    account_id: str = pa.Field(str_matches=ENTITY_ID["account"].pattern)
    card_id: str = pa.Field(str_matches=ENTITY_ID["card"].pattern)
    customer_id: str = pa.Field(str_matches=ENTITY_ID["customer"].pattern)
    merchant_id: str = pa.Field(str_matches=ENTITY_ID["merchant"].pattern)
    device_id: str = pa.Field(str_matches=ENTITY_ID["device"].pattern, nullable=True)
    amount_minor: int = pa.Field(ge=0)
    channel: str = pa.Field(isin=CHANNEL_VALUES)

    class Config:
        strict = True
        coerce = False


TRANSACTION_SCHEMA: dict[str, pl.DataType] = {
    "partition": pl.Int64(), "offset": pl.String(), "platform_run_id": pl.String(), "event_id": pl.String(),
    "flow_id": pl.String(), "scenario_id": pl.String(), "run_id": pl.String(), "manifest_fingerprint": pl.String(),
    "parameter_hash": pl.String(), "ts_us": pl.Int64(), "account_id": pl.String(), "card_id": pl.String(),
    "customer_id": pl.String(), "merchant_id": pl.String(), "device_id": pl.String(),
    "amount_minor": pl.Int64(), "channel": pl.String(),
}


class LabelFrame(PositionedEventFrame):
    """One row per label_assertion, flattened, with its bus position."""

    label: str = pa.Field(isin=["fraud", "legit"])
    effective_us: int
    observed_us: int

    class Config:
        strict = True
        coerce = False


LABEL_SCHEMA: dict[str, pl.DataType] = {
    "partition": pl.Int64(), "offset": pl.String(), "platform_run_id": pl.String(), "event_id": pl.String(),
    "flow_id": pl.String(), "scenario_id": pl.String(), "run_id": pl.String(),
    "manifest_fingerprint": pl.String(), "parameter_hash": pl.String(), "label": pl.String(),
    "effective_us": pl.Int64(), "observed_us": pl.Int64(),
}


def invalid_rows(frame: pl.DataFrame, model: type[pa.DataFrameModel] = TransactionFrame) -> dict[int, str]:
    """Row index -> first failed check, for rows that break the frame contract."""
    try:
        model.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        bad: dict[int, str] = {}
        cases = exc.failure_cases
        for row in cases.iter_rows(named=True):
            index = row.get("index")
            if index is None:  # a frame-level failure: every row is suspect
                return {i: f"{row['column']}: {row['check']}" for i in range(frame.height)}
            bad.setdefault(int(index), f"{row['column']}: {row['check']}")
        return bad
    return {}
