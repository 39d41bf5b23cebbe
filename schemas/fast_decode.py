"""The vectorised path of `schemas.records` decoding: many records parsed and checked at once.

A record takes this path only when its bytes are exactly what admission writes for its type
(`encode_event`: compact JSON, sorted keys, the envelope's fields and the payload's and nothing
else). A batch is parsed as newline-delimited JSON by polars against the type's exact layout;
each row is then printed back in admission's layout (`admission_text`) and kept only if that
equals the record's bytes, so a record with other spacing or order, a duplicate or unknown key,
an escape or a value of another JSON type never passes as a candidate. The candidates' strings,
timestamps and enumerations are checked column-wise with the envelope's own patterns and sets
(`envelope.vector_check`), integers with `envelope`'s range rule. Whatever does not clear every
check goes to the per-record decoder, which decides (accept with normalisation, or reject with its
reason code). So this path only ever accepts what the per-record decoder accepts unchanged;
tests/test_fast_decode.py holds the two in agreement.
"""

from __future__ import annotations

import io

import polars as pl

from featureplane.schemas.envelope import ENVELOPE_FIELDS, PAYLOADS, PIN_FIELDS, vector_check

Record = tuple[int, int, bytes]  # (partition, offset, value)
EMITTED = "emitted_at_utc"  # the one optional envelope field: absent, never null, in admission's layout
# envelope field -> kind (as in PAYLOADS, plus pin, schema_version, time?, and "pins" / "payload" objects)
ENVELOPE_KINDS = {"event_id": "flow", "event_type": "event_type", "schema_version": "schema_version",
                  "ts_utc": "time", "context_pins": "pins", "seed": "seq", "platform_run_id": "pin",
                  "payload": "payload", EMITTED: "time?"}
assert set(ENVELOPE_KINDS) == {*ENVELOPE_FIELDS, EMITTED}
_INTEGER_KINDS = ("seq", "amount")


def _dtype(kind: str, payload: dict[str, str]) -> pl.DataType:
    if kind == "pins":
        return pl.Struct({name: pl.String() for name in sorted(PIN_FIELDS)})
    if kind == "payload":
        return pl.Struct({name: _dtype(payload[name], payload) for name in sorted(payload)})
    return pl.Int64() if kind in _INTEGER_KINDS else pl.String()


def _value_text(name: str, kind: str) -> pl.Expr:
    """A flattened column printed as admission prints its JSON value."""
    col = pl.col(name)
    if kind in _INTEGER_KINDS:
        return col.cast(pl.String)
    quoted = pl.concat_str(pl.lit('"'), col, pl.lit('"'))
    return pl.when(col.is_null()).then(pl.lit("null")).otherwise(quoted) if "?" in kind else quoted


def _object_text(fields: dict[str, str], payload: dict[str, str]) -> list[pl.Expr]:
    parts: list[pl.Expr] = [pl.lit("{")]
    for number, name in enumerate(sorted(fields)):
        kind = fields[name]
        key = pl.lit(("," if number else "") + f'"{name}":')
        if kind == "pins":
            value = _object_text(dict.fromkeys(PIN_FIELDS, "pin"), payload)
        elif kind == "payload":
            value = _object_text(payload, payload)
        else:
            value = [_value_text(name, kind)]
        if name == EMITTED:  # absent when null (never first: its comma leads, as every later key's)
            parts.append(pl.when(pl.col(name).is_null()).then(pl.lit("")).otherwise(pl.concat_str(key, *value)))
            continue
        parts += [key, *value]
    return [*parts, pl.lit("}")]


def admission_text(event_type: str) -> pl.Expr:
    """The JSON text admission writes for an event of `event_type`, from its flattened columns
    (its `event_type` column printed as it is: the caller compares it with the type)."""
    return pl.concat_str(_object_text(ENVELOPE_KINDS, PAYLOADS[event_type]))


class Candidates:
    """Records of one event type split into the candidates of the vectorised path and the rest."""

    def __init__(self, records: list[Record], event_type: str) -> None:
        self.event_type = event_type
        self.payload = PAYLOADS[event_type]
        self.rest: list[tuple[int, Record]] = []  # (input index, record)
        self.schema = {name: _dtype(kind, self.payload) for name, kind in sorted(ENVELOPE_KINDS.items())}
        parsed: list[pl.DataFrame] = []
        plain: list[int] = []
        for i, record in enumerate(records):  # an empty (skipped) record or a line break: not admission's bytes
            value = record[2]
            if value and b"\n" not in value and b"\r" not in value:
                plain.append(i)
            else:
                self.rest.append((i, record))
        self._parse(records, plain, parsed)
        self.rows = pl.concat(parsed) if parsed else self._empty()

    def _parse(self, records: list[Record], indexes: list[int], parsed: list[pl.DataFrame]) -> None:
        """Parse `records[indexes]` as one NDJSON text; if polars refuses it, each half on its own,
        down to the single records it refuses (they go to the rest)."""
        if not indexes:
            return
        text = b"\n".join(records[i][2] for i in indexes)
        try:
            frame = pl.read_ndjson(io.BytesIO(text), schema=self.schema)
        except Exception:  # polars raises several kinds; each means "not this layout"
            frame = None
        if frame is not None and frame.height == len(indexes):
            parsed.append(frame.unnest("context_pins", "payload").with_columns(
                pl.Series("_i", indexes, pl.Int64),
                pl.Series("partition", [records[i][0] for i in indexes], pl.Int64),
                pl.Series("offset", [str(records[i][1]) for i in indexes], pl.String),
                pl.Series("_value", [records[i][2] for i in indexes], pl.Binary)))
        elif len(indexes) == 1:
            self.rest.append((indexes[0], records[indexes[0]]))
        else:
            middle = len(indexes) // 2
            self._parse(records, indexes[:middle], parsed)
            self._parse(records, indexes[middle:], parsed)

    def _empty(self) -> pl.DataFrame:
        frame = pl.DataFrame(schema=self.schema).unnest("context_pins", "payload")
        return frame.with_columns(pl.lit(None, pl.Int64).alias("_i"), pl.lit(None, pl.Int64).alias("partition"),
                                  pl.lit(None, pl.String).alias("offset"), pl.lit(None, pl.Binary).alias("_value"))

    def frame(self) -> pl.DataFrame:
        """The candidates, with `_ok` (admission's bytes, and every vectorised check passed) and
        `<time field>_us` columns."""
        kinds = {**{n: k for n, k in ENVELOPE_KINDS.items() if n not in ("context_pins", "payload", "event_type")},
                 **dict.fromkeys(PIN_FIELDS, "pin"), **self.payload}
        checks = {name: vector_check(kind, name) for name, kind in kinds.items()}
        same = (admission_text(self.event_type).cast(pl.Binary) == pl.col("_value")).fill_null(False)
        typed = pl.col("event_type") == self.event_type
        frame = self.rows.with_columns(
            pl.all_horizontal(same, typed, *[c.ok for c in checks.values()]).alias("_ok"),
            *[c.micros.alias(f"{n}_us") for n, c in checks.items() if kinds[n] in ("time", "time?")]).drop("_value")
        if self.event_type == "label_assertion":  # the envelope's own cross-field rule
            frame = frame.with_columns(pl.col("_ok") & (pl.col("observed_time") == pl.col("ts_utc")))
        return frame
