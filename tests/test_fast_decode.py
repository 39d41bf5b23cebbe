"""The column-wise decoder accepts exactly what the per-record decoder accepts, with the same values.

Records start as what admission writes and are then mutated the ways producers and corrupt logs
do (wrong types, bad characters, non-canonical or impossible timestamps, out-of-range integers,
unknown or missing fields, other key orders and spacing, duplicate keys); the fast path must give
the per-record decoder's answer for each: the same row, or the same reason code.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featureplane.online.admission import encode_event
from featureplane.pipelines.errors import RejectedEvent
from featureplane.runtime.simulate import SimulationPlan, simulate
from featureplane.schemas.records import decode_event, decode_labels, decode_transactions

SAMPLES: dict[str, list[dict[str, Any]]] = {"transaction_event": [], "label_assertion": []}
for _, event in simulate(SimulationPlan(seed=5, transactions=60)):
    if event["event_type"] in SAMPLES and len(SAMPLES[event["event_type"]]) < 12:
        SAMPLES[event["event_type"]].append(event)

TEXTS = st.sampled_from([
    "", ".", "..", "a", "e_account_00ab", "e_card_1", "e_merchant_x", "e_device_9", "e_customer_Z", "flow_1",
    "txn:1.a-b", "USD", "usd", "card_present", "ecom", "mobile", "fraud", "legit", "v1", "v2", "a b", "a\x00b",
    "caf\u00e9", "x" * 129, "e_account_" + "a" * 65, "prun_sim_000005",
    "2026-01-03T00:00:49.031642Z", "2026-01-03T00:00:49Z", "2026-01-03T00:00:49.031642+02:00",
    "2026-01-03T00:00:49.031642z", "2016-12-31T23:59:60.000000Z", "0000-01-01T00:00:00.000000Z",
    "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00.000000Z", "2026-02-30T00:00:00.000000Z",
    "+2026-01-03T00:00:49.031642Z", "2026-01-03T00:00:49.0316420Z", "2026-01-03 00:00:49.031642Z",
])
VALUES = st.one_of(TEXTS, st.none(), st.booleans(), st.sampled_from([0, 1, -1, 2**53 - 1, 2**53, 2**63 - 1, 2**63,
                                                                      2**64, 10**30, 1.0, 0.5]),
                   st.builds(list), st.builds(dict))  # fresh objects: a mutation may write into them
ENVELOPE = ["event_id", "event_type", "schema_version", "ts_utc", "context_pins", "seed", "platform_run_id",
            "payload", "emitted_at_utc"]


def reference(records: list[tuple[int, int, bytes]], event_type: str) -> list[Any]:
    """The per-record decoder's answer for each record: its reason code, or the decoded event."""
    answers: list[Any] = []
    for _, _, value in records:
        try:
            answers.append(decode_event(value, event_type))
        except RejectedEvent as exc:
            answers.append(exc.reason_code)
    return answers


@st.composite
def mutated(draw: st.DrawFn, event_type: str) -> bytes:
    event = json.loads(json.dumps(draw(st.sampled_from(SAMPLES[event_type]))))
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["envelope", "payload", "context_pins"]))
        target = event if where == "envelope" else event.get(where) if isinstance(event.get(where), dict) else event
        names = [*sorted(target), "unknown_field"]
        name = draw(st.sampled_from(names))
        action = draw(st.sampled_from(["set", "set", "set", "delete"]))
        if action == "delete":
            target.pop(name, None)
        else:
            target[name] = draw(VALUES)
    style = draw(st.sampled_from(["admission", "spaced", "unsorted", "duplicate"]))
    if style == "admission":
        return encode_event(event)
    if style == "spaced":
        return json.dumps(event, sort_keys=True).encode()
    if style == "unsorted":
        return json.dumps(dict(reversed(list(event.items()))), separators=(",", ":")).encode()
    text = encode_event(event).decode()  # a duplicate key: the last one wins in both decoders
    return ('{"event_id":"dup",' + text[1:]).encode()


def _decoded_rows(frame, failures, records) -> list[Any]:
    rows = {int(r["offset"]): r for r in frame.iter_rows(named=True)}
    reasons = {f.offset: f.reason_code for f in failures}
    return [rows.get(o, reasons.get(o)) for _, o, _ in records]


def _expected_row(answer: Any, partition: int, offset: int, event_type: str) -> Any:
    if isinstance(answer, str):
        return answer
    from featureplane.pipelines.timefmt import parse_rfc3339

    p, pins = answer["payload"], answer["context_pins"]
    row = {"partition": partition, "offset": str(offset), "platform_run_id": answer["platform_run_id"],
           "event_id": answer["event_id"], "flow_id": p["flow_id"], **pins}
    if event_type == "transaction_event":
        row.update(ts_us=parse_rfc3339(answer["ts_utc"]), **{k: p[k] for k in (
            "account_id", "card_id", "customer_id", "merchant_id", "device_id", "amount_minor", "channel")})
    else:
        row.update(label=p["label"], effective_us=parse_rfc3339(p["effective_time"]),
                   observed_us=parse_rfc3339(p["observed_time"]))
    return row


@pytest.mark.parametrize("event_type", ["transaction_event", "label_assertion"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_path_answers_as_the_per_record_decoder(event_type, data):
    values = data.draw(st.lists(mutated(event_type), min_size=1, max_size=12))
    records = [(3, 100 + i, v) for i, v in enumerate(values)]
    decode = decode_transactions if event_type == "transaction_event" else decode_labels
    frame, failures = decode(records)
    got = _decoded_rows(frame, failures, records)
    expected = [_expected_row(a, 3, o, event_type) for a, (_, o, _) in zip(reference(records, event_type), records,
                                                                           strict=True)]
    # a record the per-record decoder accepts may still fail the frame contract (CONTRACT_VIOLATION)
    for g, e in zip(got, expected, strict=True):
        assert g == e or (isinstance(e, dict) and g == "CONTRACT_VIOLATION"), (g, e)


def test_admission_output_takes_the_fast_path_and_keeps_order():
    from featureplane.schemas.fast_decode import Candidates

    records = [(0, i, encode_event(e)) for i, e in enumerate(SAMPLES["transaction_event"])]
    frame = Candidates(records, "transaction_event").frame()
    assert frame["_ok"].all() and frame.height == len(records)
    decoded, failures = decode_transactions(list(reversed(records)))
    assert not failures and decoded["offset"].to_list() == [str(o) for _, o, _ in reversed(records)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=-62135596800000000, max_value=253402300799999999), min_size=1, max_size=50))
def test_stamps_formatted_column_wise_equal_format_ts(micros):
    import polars as pl

    from featureplane.pipelines.timefmt import MAX_US, MIN_US, format_ts, format_ts_expr

    micros = [*micros, MIN_US, MAX_US, 0, -1]
    got = pl.DataFrame({"us": micros}).select(format_ts_expr(pl.col("us")))["us"].to_list()
    assert got == [format_ts(m) for m in micros]


STAMP_PIECES = st.sampled_from(["0", "1", "2", "3", "5", "6", "9", "-", ":", "T", "Z", ".", "+", " ", "z"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(
    st.builds(lambda y, mo, d, h, mi, s, f: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{f:06d}Z",
              st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25), st.integers(0, 61),
              st.integers(0, 61), st.integers(0, 999999)),
    st.lists(STAMP_PIECES, max_size=30).map("".join),
    TEXTS), min_size=1, max_size=40))
def test_time_rule_column_wise_accepts_only_canonical_stamps(texts):
    """`vector_check("time")` passes a text only when the per-record rule finds it canonical, and
    then gives the same microseconds (hand-built stamps on and past every field's bounds)."""
    import polars as pl

    from featureplane.pipelines.timefmt import TimestampError, canonical, parse_rfc3339
    from featureplane.schemas.envelope import vector_check

    check = vector_check("time", "t")
    got = pl.DataFrame({"t": texts}, schema={"t": pl.String()}).select(check.ok.alias("ok"), check.micros.alias("us"))
    for text, ok, micros in zip(texts, got["ok"], got["us"], strict=True):
        try:
            expected = canonical(text) == text
        except TimestampError:
            expected = False
        assert ok == expected, text
        if ok:
            assert micros == parse_rfc3339(text)
