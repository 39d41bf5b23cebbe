"""The vectorised path of `schemas.records` decoding: many records checked at once, per rule kind.

A record takes this path only when it is exactly what admission writes for its type: a JSON object
with the envelope's fields and the payload's fields and nothing else, every value of its kind's
JSON type. Its strings, timestamps and enumerations are then checked column-wise with the
envelope's own patterns and sets (`envelope.vector_check`); integers with `envelope`'s range rule.
Whatever does not clear every check goes to the per-record decoder, which decides (accept with
normalisation, or reject with its reason code). So this path only ever accepts what the
per-record decoder accepts unchanged; tests/test_fast_decode.py holds the two in agreement.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import polars as pl

from featureplane.schemas.envelope import (
    ENVELOPE_FIELDS,
    MAX_SIGNED_64,
    PAYLOADS,
    PIN_FIELDS,
    count_in_range,
    kind_limit,
    vector_check,
)

_ENVELOPE = frozenset(ENVELOPE_FIELDS)
_WITH_EMITTED = _ENVELOPE | {"emitted_at_utc"}
_PINS = frozenset(PIN_FIELDS)
_STRING_KINDS = ("flow", "currency", "channel", "label", "time")


class Candidates:
    """Records of one event type split into the candidates of the vectorised path and the rest."""

    def __init__(self, records: Iterable[tuple[int, int, bytes]], event_type: str) -> None:
        self.event_type = event_type
        self.payload = PAYLOADS[event_type]
        self.rest: list[tuple[int, tuple[int, int, bytes]]] = []  # (input index, record)
        self.names = ["_i", "partition", "offset", "event_id", "event_type", "schema_version", "ts_utc",
                      "platform_run_id", "emitted_at_utc", *PIN_FIELDS, *self.payload]
        self.rows: list[tuple] = []
        self._collect(records)

    def _collect(self, records: Iterable[tuple[int, int, bytes]]) -> None:
        payload_names = tuple(self.payload)
        payload_keys = frozenset(self.payload)
        strings = tuple(n for n, k in self.payload.items() if k.startswith("entity:") or k in _STRING_KINDS)
        nullable = tuple(n for n, k in self.payload.items() if k.startswith("entity?"))
        counts = tuple((n, kind_limit(k)) for n, k in self.payload.items() if k in ("seq", "amount"))
        event_type, rows, rest, loads = self.event_type, self.rows, self.rest, orjson.loads
        scenario, run, manifest, parameter = PIN_FIELDS
        for index, record in enumerate(records):
            try:
                event = loads(record[2])
            except orjson.JSONDecodeError:
                rest.append((index, record))
                continue
            if type(event) is not dict or event.keys() not in (_ENVELOPE, _WITH_EMITTED) \
                    or event["event_type"] != event_type:
                rest.append((index, record))
                continue
            pins, payload, seed = event["context_pins"], event["payload"], event["seed"]
            emitted = event.get("emitted_at_utc")
            if (type(pins) is not dict or pins.keys() != _PINS or type(payload) is not dict
                    or payload.keys() != payload_keys or type(seed) is not int or not 0 <= seed <= MAX_SIGNED_64
                    or type(event["event_id"]) is not str or type(event["schema_version"]) is not str
                    or type(event["ts_utc"]) is not str or type(event["platform_run_id"]) is not str
                    or not (emitted is None or type(emitted) is str)
                    or type(pins[scenario]) is not str or type(pins[run]) is not str
                    or type(pins[manifest]) is not str or type(pins[parameter]) is not str
                    or not _payload_ok(payload, strings, nullable, counts)):
                rest.append((index, record))
                continue
            rows.append((index, record[0], str(record[1]), event["event_id"], event_type, event["schema_version"],
                         event["ts_utc"], event["platform_run_id"], emitted, pins[scenario], pins[run],
                         pins[manifest], pins[parameter], *[payload[n] for n in payload_names]))

    def frame(self) -> pl.DataFrame:
        """The candidates, with `_ok` (every vectorised check passed) and `<time field>_us` columns."""
        schema: dict[str, pl.DataType] = {n: pl.String() for n in self.names}
        schema.update({"_i": pl.Int64(), "partition": pl.Int64()})
        schema.update({n: pl.Int64() for n, kind in self.payload.items() if kind in ("seq", "amount")})
        frame = pl.DataFrame(self.rows, schema=schema, orient="row")
        kinds = {"event_id": "flow", "schema_version": "schema_version", "ts_utc": "time",
                 "platform_run_id": "pin", "emitted_at_utc": "time?", **dict.fromkeys(PIN_FIELDS, "pin"),
                 **self.payload}
        checks = {name: vector_check(kind, name) for name, kind in kinds.items()}
        frame = frame.with_columns(
            pl.all_horizontal(*[c.ok for c in checks.values()]).alias("_ok"),
            *[c.micros.alias(f"{n}_us") for n, c in checks.items() if kinds[n] in ("time", "time?")])
        if self.event_type == "label_assertion":  # the envelope's own cross-field rule
            frame = frame.with_columns(pl.col("_ok") & (pl.col("observed_time") == pl.col("ts_utc")))
        return frame


def _payload_ok(payload: dict[str, Any], strings: tuple[str, ...], nullable: tuple[str, ...],
                counts: tuple[tuple[str, int], ...]) -> bool:
    """JSON types (and integer ranges) of the payload fields; their texts are checked column-wise."""
    for name in strings:
        if type(payload[name]) is not str:
            return False
    for name in nullable:
        value = payload[name]
        if value is not None and type(value) is not str:
            return False
    for name, limit in counts:
        value = payload[name]
        if type(value) is not int or not count_in_range(value, limit):
            return False
    return True
