import copy

import pytest

from featureplane.pipelines.errors import RejectedEvent
from featureplane.pipelines.timefmt import TimestampError, format_ts, parse_rfc3339
from featureplane.schemas.envelope import normalize_event
from tests.helpers import T0, txn


def test_timestamps_normalise_to_utc_microseconds():
    assert format_ts(parse_rfc3339("2026-01-03T13:30:00.5+01:30")) == "2026-01-03T12:00:00.500000Z"
    assert format_ts(parse_rfc3339("2026-01-03T12:00:00Z")) == "2026-01-03T12:00:00.000000Z"
    assert parse_rfc3339("1970-01-01T00:00:01.000001Z") == 1_000_001
    with pytest.raises(TimestampError):
        parse_rfc3339("2026-01-03T12:00:00")  # no offset
    with pytest.raises(TimestampError):
        parse_rfc3339("2026-01-03T12:00:00.0000001Z")  # beyond microseconds


def test_timestamp_bounds_are_the_years_0001_to_9999_in_utc():
    assert format_ts(parse_rfc3339("0001-01-01T01:30:00+01:00")) == "0001-01-01T00:30:00.000000Z"
    assert format_ts(parse_rfc3339("0001-01-01T00:30:00-01:00")) == "0001-01-01T01:30:00.000000Z"
    assert format_ts(parse_rfc3339("9999-12-31T23:59:59.999999Z")) == "9999-12-31T23:59:59.999999Z"
    assert parse_rfc3339("0001-01-01T00:00:00Z") == -62_135_596_800_000_000  # 719,162 days before 1970
    for text in ("0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "0000-12-31T00:00:00Z"):
        with pytest.raises(TimestampError):
            parse_rfc3339(text)


def test_valid_event_is_normalised():
    event = txn(1, T0)
    event["ts_utc"] = "2026-01-03T13:00:00+01:00"
    event["payload"]["extra_field"] = "kept"
    out = normalize_event(event)
    assert out["ts_utc"] == "2026-01-03T12:00:00.000000Z"
    assert out["payload"]["extra_field"] == "kept"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda e: e.update(schema_version="v2"), "UNKNOWN_SCHEMA_VERSION"),
        (lambda e: e.update(event_type="nope"), "UNKNOWN_EVENT_TYPE"),
        (lambda e: e.pop("seed"), "MISSING_FIELD"),
        (lambda e: e.update(seed=-1), "INTEGER_OUT_OF_RANGE"),
        (lambda e: e.update(seed=True), "INTEGER_OUT_OF_RANGE"),
        (lambda e: e.update(seed=2**63), "INTEGER_OUT_OF_RANGE"),
        (lambda e: e["payload"].update(arrival_seq=2**63), "INTEGER_OUT_OF_RANGE"),
        (lambda e: e["payload"].update(amount_minor=2**53), "AMOUNT_OUT_OF_RANGE"),
        (lambda e: e["payload"].update(amount_minor=2**63), "AMOUNT_OUT_OF_RANGE"),
        (lambda e: e["payload"].update(amount_minor=1.0), "AMOUNT_OUT_OF_RANGE"),
        # every charset matches the whole string: a trailing newline fails it
        (lambda e: e.update(event_id="txn_1\n"), "INVALID_EVENT_ID"),
        (lambda e: e["context_pins"].update(run_id="run_t\n"), "INVALID_PINS"),
        (lambda e: e.update(platform_run_id="prun_t\n"), "INVALID_PINS"),
        (lambda e: e["payload"].update(account_id="e_account_a1\n"), "NON_CANONICAL_ENTITY_ID"),
        (lambda e: e["payload"].update(currency="EUR\n"), "INVALID_PAYLOAD"),
        (lambda e: e["payload"].update(flow_id="flow_1\n"), "INVALID_PAYLOAD"),
        (lambda e: e.update(ts_utc="2026-01-03T12:00:00Z\n"), "INVALID_TIMESTAMP"),
        # no NUL and no unpaired surrogate in any string, even an ignored one
        (lambda e: e.update(event_id="txn\x001"), "INVALID_CHARACTER"),
        (lambda e: e["payload"].update(note="a\ud800b"), "INVALID_CHARACTER"),
        (lambda e: e["payload"].update({"k\x00": 1}), "INVALID_CHARACTER"),
        # years 0001-9999 after normalisation to UTC; non-ASCII digits are not digits here
        (lambda e: e.update(ts_utc="0001-01-01T00:30:00+01:00"), "INVALID_TIMESTAMP"),
        (lambda e: e.update(ts_utc="9999-12-31T23:59:00-00:01"), "INVALID_TIMESTAMP"),
        (lambda e: e.update(ts_utc="\u0662\u0660\u0662\u0666-01-03T12:00:00Z"), "INVALID_TIMESTAMP"),
        (lambda e: e.update(event_id="bad id"), "INVALID_EVENT_ID"),
        (lambda e: e["context_pins"].update(run_id=".."), "INVALID_PINS"),
        (lambda e: e["context_pins"].update(run_id="../etc"), "INVALID_PINS"),
        (lambda e: e.update(platform_run_id="a/b"), "INVALID_PINS"),
        (lambda e: e.update(ts_utc="yesterday"), "INVALID_TIMESTAMP"),
        (lambda e: e["payload"].update(card_id="4111111111111111"), "NON_CANONICAL_ENTITY_ID"),
        (lambda e: e["payload"].update(account_id="e_card_abc"), "NON_CANONICAL_ENTITY_ID"),
        (lambda e: e["payload"].update(amount_minor=-5), "AMOUNT_OUT_OF_RANGE"),
        (lambda e: e["payload"].update(currency="eur"), "INVALID_PAYLOAD"),
        (lambda e: e["payload"].update(channel="atm"), "INVALID_PAYLOAD"),
        (lambda e: e["payload"].pop("device_id"), "MISSING_FIELD"),
    ],
)
def test_rejections_carry_stable_reason_codes(mutate, code):
    event = copy.deepcopy(txn(1, T0))
    mutate(event)
    with pytest.raises(RejectedEvent) as info:
        normalize_event(event)
    assert info.value.reason_code == code


def test_integer_bounds_are_inclusive():
    event = txn(1, T0, amount=2**53 - 1)
    event["seed"] = 2**63 - 1
    event["payload"]["arrival_seq"] = 2**63 - 1
    out = normalize_event(event)
    assert (out["payload"]["amount_minor"], out["seed"]) == (2**53 - 1, 2**63 - 1)


def test_label_ts_must_equal_observed_time():
    label = {
        "event_id": "l1", "event_type": "label_assertion", "schema_version": "v1",
        "ts_utc": "2026-01-04T00:00:00Z", "context_pins": txn(1, T0)["context_pins"], "seed": 0,
        "platform_run_id": "p", "payload": {"flow_id": "f", "label": "fraud",
                                            "effective_time": "2026-01-03T00:00:00Z",
                                            "observed_time": "2026-01-04T01:00:00+01:00"}}
    assert normalize_event(label)["payload"]["observed_time"] == "2026-01-04T00:00:00.000000Z"
    label["payload"]["observed_time"] = "2026-01-05T00:00:00Z"
    with pytest.raises(RejectedEvent):
        normalize_event(label)
