"""The context store (join plane, SPEC §7): JoinFrames and FlowBindings, fail-closed.

A JoinFrame (platform_run_id, run_id, merchant_id, arrival_seq) collects the arrival event and
arrival entities of that key; a FlowBinding maps flow_id -> JoinFrameKey and is written only from
flow_anchor events. The first payload of each kind wins; the same payload again is a no-op; a
different one is recorded as an anomaly and never applied. Each batch (one partition of one
stream) commits its mutations, anomalies, failures, counters and checkpoint together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from featureplane.online.bus.base import EventBus
from featureplane.online.checkpoints import Lease, advance, bump_counters, drain, record_failures, watermarks
from featureplane.online.ofp_worker import worker_identity
from featureplane.pipelines.canonical import sha256_ref
from featureplane.pipelines.errors import RejectedEvent, TerminalError
from featureplane.pipelines.positions import OffsetStyle, offset_json
from featureplane.pipelines.timefmt import parse_rfc3339
from featureplane.runtime.postgres import Database
from featureplane.schemas.envelope import EVENT_ID, PIN_FIELDS, is_entity_id, is_pin
from featureplane.schemas.records import decode_event
from featureplane.schemas.streams import ARRIVAL_ENTITIES, ARRIVAL_EVENTS, CONTEXT_STREAMS, FLOW_ANCHOR

CONSUMER = "context"
CONTRACT_VERSION = "cs_public_contracts_v0"
EVENT_TYPE = {ARRIVAL_EVENTS: "arrival_event", ARRIVAL_ENTITIES: "arrival_entities", FLOW_ANCHOR: "flow_anchor"}
# the payload fields each kind keeps (and hashes); unknown payload fields are ignored
KEPT = {
    "arrival_event": ("merchant_id", "arrival_seq", "channel"),
    "arrival_entities": ("merchant_id", "arrival_seq", "account_id", "card_id", "customer_id", "device_id"),
    "flow_anchor": ("flow_id", "merchant_id", "arrival_seq"),
}
FRAME_COLUMNS = {"arrival_event": ("arrival_event", "arrival_event_hash", "arrival_event_ref"),
                 "arrival_entities": ("entities", "entities_hash", "entities_ref")}
CONFLICT_KIND = {"arrival_event": "ARRIVAL_EVENT_CONFLICT", "arrival_entities": "ENTITIES_CONFLICT"}


@dataclass
class ContextStats:
    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    anomalies: int = 0
    failures: int = 0
    per_stream: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Event:
    ref: dict[str, Any]
    pins: tuple[str, ...]
    platform_run_id: str
    run_id: str
    payload: dict[str, Any]
    payload_hash: str
    ts_us: int


def _decode(stream: str, records: Iterable[tuple[int, int, bytes]],
            style: OffsetStyle) -> tuple[list[_Event], list[tuple]]:
    events: list[_Event] = []
    failures: list[tuple] = []
    expected = EVENT_TYPE[stream]
    for partition, offset, value in records:
        try:
            event = decode_event(value, expected)
        except RejectedEvent as exc:
            failures.append((partition, offset, None, exc.reason_code, exc.message))
            continue
        payload = {k: event["payload"][k] for k in KEPT[expected]}
        pins = event["context_pins"]
        events.append(_Event({"stream": stream, "partition": partition, "offset": offset_json(offset, style)},
                             tuple(pins[p] for p in PIN_FIELDS), event["platform_run_id"], pins["run_id"],
                             payload, sha256_ref(payload), parse_rfc3339(event["ts_utc"])))
    return events, failures


def _anomaly(e: _Event, kind: str, subject: str, kept: str | None) -> tuple:
    return (e.platform_run_id, e.run_id, kind, subject, kept, e.payload_hash, json.dumps(e.ref, sort_keys=True))


def _frame_key(e: _Event) -> tuple[str, str, str, int]:
    return (e.platform_run_id, e.run_id, e.payload["merchant_id"], e.payload["arrival_seq"])


class ContextWriter:
    """Applies decoded context events of one stream partition inside the caller's transaction."""

    def apply_frames(self, conn: psycopg.Connection, kind: str, events: list[_Event]) -> tuple[int, int, list]:
        data_col, hash_col, ref_col = FRAME_COLUMNS[kind]
        keys = sorted({_frame_key(e) for e in events})
        existing = {
            (r[0], r[1], r[2], r[3]): (tuple(r[4:8]), r[8])
            for r in conn.execute(
                f"""SELECT f.platform_run_id, f.run_id, f.merchant_id, f.arrival_seq, f.scenario_id, f.run_id,
                           f.manifest_fingerprint, f.parameter_hash, f.{hash_col}
                      FROM join_frames f
                      JOIN unnest(%s::text[], %s::text[], %s::text[], %s::bigint[]) AS k(a, b, c, d)
                        ON f.platform_run_id = k.a AND f.run_id = k.b AND f.merchant_id = k.c
                       AND f.arrival_seq = k.d""",
                tuple(list(col) for col in zip(*keys, strict=True)),
            )
        } if keys else {}
        writes: dict[tuple, _Event] = {}
        anomalies: list[tuple] = []
        duplicates = 0
        for e in events:  # in position order: the first payload wins
            key = _frame_key(e)
            subject = f"{key[2]}/{key[3]}"
            pins, kept = existing.get(key, (None, None))
            if pins is not None and pins != e.pins:
                anomalies.append(_anomaly(e, "PINS_CONFLICT", subject, kept))
            elif kept is None:
                existing[key] = (e.pins, e.payload_hash)
                writes[key] = e
            elif kept == e.payload_hash:
                duplicates += 1
            else:
                anomalies.append(_anomaly(e, CONFLICT_KIND[kind], subject, kept))
        if writes:
            rows = [(*key, *e.pins[:1], e.pins[2], e.pins[3], json.dumps(e.payload), e.payload_hash,
                     json.dumps(e.ref, sort_keys=True)) for key, e in sorted(writes.items())]
            written = conn.execute(
                f"""INSERT INTO join_frames AS f (platform_run_id, run_id, merchant_id, arrival_seq, scenario_id,
                        manifest_fingerprint, parameter_hash, {data_col}, {hash_col}, {ref_col})
                    SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[],
                                         %s::text[], %s::jsonb[], %s::text[], %s::jsonb[])
                    ON CONFLICT (platform_run_id, run_id, merchant_id, arrival_seq) DO UPDATE
                       SET {data_col} = EXCLUDED.{data_col}, {hash_col} = EXCLUDED.{hash_col},
                           {ref_col} = EXCLUDED.{ref_col}
                     WHERE f.{hash_col} IS NULL AND f.scenario_id = EXCLUDED.scenario_id
                       AND f.manifest_fingerprint = EXCLUDED.manifest_fingerprint
                       AND f.parameter_hash = EXCLUDED.parameter_hash
                    RETURNING platform_run_id, run_id, merchant_id, arrival_seq""",
                tuple(list(col) for col in zip(*rows, strict=True)),
            ).fetchall()
            done = {tuple(r) for r in written}
            for key, e in writes.items():
                if key not in done:  # the other context stream created the frame with other pins
                    anomalies.append(_anomaly(e, "PINS_CONFLICT", f"{key[2]}/{key[3]}", None))
            return len(done), duplicates, anomalies
        return 0, duplicates, anomalies

    def apply_anchors(self, conn: psycopg.Connection, events: list[_Event]) -> tuple[int, int, list]:
        keys = sorted({(e.platform_run_id, e.run_id, e.payload["flow_id"]) for e in events})
        existing = {
            (r[0], r[1], r[2]): r[3]
            for r in conn.execute(
                """SELECT b.platform_run_id, b.run_id, b.flow_id, b.payload_hash FROM flow_bindings b
                     JOIN unnest(%s::text[], %s::text[], %s::text[]) AS k(a, b, c)
                       ON b.platform_run_id = k.a AND b.run_id = k.b AND b.flow_id = k.c""",
                tuple(list(col) for col in zip(*keys, strict=True)),
            )
        } if keys else {}
        writes: list[_Event] = []
        anomalies: list[tuple] = []
        duplicates = 0
        for e in events:
            key = (e.platform_run_id, e.run_id, e.payload["flow_id"])
            kept = existing.get(key)
            if kept is None:
                existing[key] = e.payload_hash
                writes.append(e)
            elif kept == e.payload_hash:
                duplicates += 1
            else:
                anomalies.append(_anomaly(e, "BINDING_CONFLICT", key[2], kept))
        if writes:
            rows = [(e.platform_run_id, e.run_id, e.payload["flow_id"], e.payload["merchant_id"],
                     e.payload["arrival_seq"], e.pins[0], e.pins[2], e.pins[3], e.payload_hash,
                     json.dumps(e.ref, sort_keys=True)) for e in writes]
            conn.execute(
                """INSERT INTO flow_bindings (platform_run_id, run_id, flow_id, merchant_id, arrival_seq, scenario_id,
                       manifest_fingerprint, parameter_hash, payload_hash, anchor_ref)
                   SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[],
                                        %s::text[], %s::text[], %s::text[], %s::jsonb[])""",
                tuple(list(col) for col in zip(*rows, strict=True)),
            )
        return len(writes), duplicates, anomalies

    @staticmethod
    def record_anomalies(conn: psycopg.Connection, anomalies: list[tuple]) -> None:
        if anomalies:
            conn.cursor().executemany(
                """INSERT INTO context_anomalies (platform_run_id, run_id, kind, subject, kept_hash, rejected_hash,
                       evidence_ref) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
                anomalies,
            )


class ContextWorker:
    def __init__(self, db: Database, bus: EventBus, *, batch_size: int = 5000, owner: str | None = None) -> None:
        self.db = db
        self.bus = bus
        self.batch_size = batch_size
        self.owner = owner or worker_identity()
        self.writer = ContextWriter()
        self.share: Callable[[list[int]], list[int]] = lambda partitions: partitions  # all, unless scaled out

    def run_until_idle(self, stats: ContextStats | None = None, streams: Iterable[str] = CONTEXT_STREAMS,
                       basis: dict[str, dict[int, int]] | None = None) -> ContextStats:
        """Drain the context streams (or, with `basis`, apply exactly up to that offset basis)."""
        stats = stats or ContextStats()
        for stream in streams:
            self.bus.ensure_stream(stream)
            for partition in self.share(self.bus.partitions(stream)):
                limit = None if basis is None else basis.get(stream, {}).get(partition, 0)

                def apply(lease: Lease, records: list, next_offset: int, stream: str = stream,
                          limit: int | None = limit) -> Lease:
                    if limit is not None:
                        records = [r for r in records if r[1] < limit]
                        next_offset = min(next_offset, limit)
                    if next_offset <= lease.next_offset:
                        return lease
                    return self.apply_batch(stream, lease, records, next_offset, stats)

                drain(self.db, self.bus, CONSUMER, stream, partition, self.owner, self.batch_size, apply)
        return stats

    def apply_batch(self, stream: str, lease: Lease, records: list[tuple[int, int, bytes]], next_offset: int,
                    stats: ContextStats) -> Lease:
        events, failures = _decode(stream, records, self.bus.offset_style)
        with self.db.transaction() as conn:
            record_failures(conn, CONSUMER, stream, failures)
            if stream == FLOW_ANCHOR:
                applied, duplicates, anomalies = self.writer.apply_anchors(conn, events)
            else:
                applied, duplicates, anomalies = self.writer.apply_frames(conn, EVENT_TYPE[stream], events)
            self.writer.record_anomalies(conn, anomalies)
            bump_counters(conn, CONSUMER, stream, lease.partition, applied=applied, duplicates=duplicates,
                          failures=len(failures), last_ts_us=max((e.ts_us for e in events), default=None))
            lease = advance(conn, lease, next_offset)
        stats.batches += 1
        stats.applied += applied
        stats.duplicates += duplicates
        stats.anomalies += len(anomalies)
        stats.failures += len(failures)
        stats.per_stream[stream] = stats.per_stream.get(stream, 0) + len(records)
        return lease


class InvalidContextRequest(RejectedEvent):
    pass


def _check_run(platform_run_id: object, run_id: object) -> None:
    if not is_pin(platform_run_id) or not is_pin(run_id):
        raise InvalidContextRequest("INVALID_REQUEST", "platform_run_id and run_id are 1-128 chars of [A-Za-z0-9._-]")


class ContextReader:
    """Join-plane reads: nothing is fabricated; what is missing is named by a reason code."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn: psycopg.Connection | None = None

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        """One long-lived connection (reads are many and small); reconnects after a failure."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self.db.connect()
            self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one consistent read
        try:
            with self._conn.transaction():
                yield self._conn
        except psycopg.OperationalError:
            self._conn.close()
            self._conn = None
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def resolve(self, platform_run_id: str, run_id: str, flow_id: str) -> dict[str, Any]:
        try:
            _check_run(platform_run_id, run_id)
            if not isinstance(flow_id, str) or not EVENT_ID.fullmatch(flow_id):
                raise InvalidContextRequest("INVALID_REQUEST", "flow_id is 1-128 chars of [A-Za-z0-9._:-]")
        except InvalidContextRequest as exc:
            return _error(exc)
        with self._transaction() as conn:
            binding = conn.execute(
                """SELECT merchant_id, arrival_seq, scenario_id, manifest_fingerprint, parameter_hash, anchor_ref
                     FROM flow_bindings WHERE platform_run_id = %s AND run_id = %s AND flow_id = %s""",
                (platform_run_id, run_id, flow_id),
            ).fetchone()
            conflicts = conn.execute(
                """SELECT evidence_ref, rejected_hash FROM context_anomalies WHERE platform_run_id = %s
                      AND run_id = %s AND kind = 'BINDING_CONFLICT' AND subject = %s ORDER BY anomaly_seq""",
                (platform_run_id, run_id, flow_id),
            ).fetchall()
            answer: dict[str, Any] = {
                "kind": "context_resolution", "contract_version": CONTRACT_VERSION, "flow_id": flow_id,
                "platform_run_id": platform_run_id, "run_id": run_id,
            }
            if binding is None:
                answer.update(readiness="NOT_READY", reason_codes=["MISSING_BINDING"], join_frame_key=None,
                              join_frame=None, evidence_refs=[], context_pins=None)
            else:
                frame = self._frame(conn, platform_run_id, run_id, binding[0], int(binding[1]))
                reasons = list(frame["reason_codes"])
                refs = [{**binding[5], "role": "flow_anchor"}, *frame["evidence_refs"]]
                answer.update(
                    join_frame_key=frame["join_frame_key"], join_frame=frame["join_frame"], evidence_refs=refs,
                    context_pins={"scenario_id": binding[2], "run_id": run_id, "manifest_fingerprint": binding[3],
                                  "parameter_hash": binding[4]},
                )
                if conflicts:
                    reasons.append("BINDING_CONFLICT")
                answer["reason_codes"] = sorted(set(reasons))
                answer["readiness"] = "READY" if not answer["reason_codes"] else "NOT_READY"
            if conflicts:
                answer["conflicts"] = [{"evidence_ref": r, "rejected_payload_hash": h} for r, h in conflicts]
            hit = answer["readiness"] == "READY"
            conn.execute(
                """INSERT INTO context_read_counters (name, value) VALUES (%s, 1)
                   ON CONFLICT (name) DO UPDATE SET value = context_read_counters.value + 1""",
                ("join_hits" if hit else "join_misses",),
            )
        return answer

    def fetch_frame(self, platform_run_id: str, run_id: str, merchant_id: str, arrival_seq: int) -> dict[str, Any]:
        try:
            _check_run(platform_run_id, run_id)
            if not is_entity_id("merchant", merchant_id) or isinstance(arrival_seq, bool) \
                    or not isinstance(arrival_seq, int) or arrival_seq < 0:
                raise InvalidContextRequest("INVALID_REQUEST", "merchant_id is e_merchant_<id>, arrival_seq >= 0")
        except InvalidContextRequest as exc:
            return _error(exc)
        with self._transaction() as conn:
            frame = self._frame(conn, platform_run_id, run_id, merchant_id, arrival_seq)
        return {"kind": "join_frame_answer", "contract_version": CONTRACT_VERSION, **frame,
                "readiness": "READY" if not frame["reason_codes"] else "NOT_READY"}

    @staticmethod
    def _frame(conn: psycopg.Connection, platform_run_id: str, run_id: str, merchant_id: str,
               arrival_seq: int) -> dict[str, Any]:
        key = {"platform_run_id": platform_run_id, "run_id": run_id, "merchant_id": merchant_id,
               "arrival_seq": arrival_seq}
        row = conn.execute(
            """SELECT arrival_event, arrival_event_ref, entities, entities_ref, scenario_id, manifest_fingerprint,
                      parameter_hash FROM join_frames
                WHERE platform_run_id = %s AND run_id = %s AND merchant_id = %s AND arrival_seq = %s""",
            (platform_run_id, run_id, merchant_id, arrival_seq),
        ).fetchone()
        conflicts = conn.execute(
            """SELECT DISTINCT kind FROM context_anomalies WHERE platform_run_id = %s AND run_id = %s
                  AND subject = %s AND kind <> 'BINDING_CONFLICT'""",
            (platform_run_id, run_id, f"{merchant_id}/{arrival_seq}"),
        ).fetchall()
        reasons = [k for (k,) in conflicts]
        if row is None:
            return {"join_frame_key": key, "join_frame": None, "evidence_refs": [], "context_pins": None,
                    "reason_codes": sorted({"MISSING_ARRIVAL_EVENT", "MISSING_ENTITIES", *reasons})}
        arrival, arrival_ref, entities, entities_ref = row[:4]
        refs = []
        if arrival is None:
            reasons.append("MISSING_ARRIVAL_EVENT")
        else:
            refs.append({**arrival_ref, "role": "arrival_event"})
        if entities is None:
            reasons.append("MISSING_ENTITIES")
        else:
            refs.append({**entities_ref, "role": "arrival_entities"})
        return {
            "join_frame_key": key,
            "join_frame": {"arrival_event": arrival, "arrival_entities": entities},
            "evidence_refs": refs,
            "context_pins": {"scenario_id": row[4], "run_id": run_id, "manifest_fingerprint": row[5],
                             "parameter_hash": row[6]},
            "reason_codes": sorted(set(reasons)),
        }


def _error(exc: RejectedEvent) -> dict[str, Any]:
    return {"kind": "error_response", "contract_version": CONTRACT_VERSION, "error_code": exc.reason_code,
            "message": exc.message, "retryable": False}


def context_digest(conn: psycopg.Connection, platform_run_id: str) -> str:
    """A digest of every frame, binding and anomaly of a platform run (replay determinism proof)."""
    frames = conn.execute(
        """SELECT run_id, merchant_id, arrival_seq, scenario_id, manifest_fingerprint, parameter_hash,
                  arrival_event_hash, arrival_event_ref::text, entities_hash, entities_ref::text
             FROM join_frames WHERE platform_run_id = %s ORDER BY run_id, merchant_id, arrival_seq""",
        (platform_run_id,),
    ).fetchall()
    bindings = conn.execute(
        """SELECT run_id, flow_id, merchant_id, arrival_seq, payload_hash, anchor_ref::text FROM flow_bindings
            WHERE platform_run_id = %s ORDER BY run_id, flow_id""",
        (platform_run_id,),
    ).fetchall()
    anomalies = conn.execute(
        """SELECT run_id, kind, subject, kept_hash, rejected_hash, evidence_ref::text FROM context_anomalies
            WHERE platform_run_id = %s ORDER BY run_id, kind, subject, evidence_ref::text""",
        (platform_run_id,),
    ).fetchall()
    return sha256_ref({"frames": [list(r) for r in frames], "bindings": [list(r) for r in bindings],
                       "anomalies": [list(r) for r in anomalies]})


def applied_basis(conn: psycopg.Connection, bus: EventBus) -> dict[str, dict[str, int | str]]:
    return {s: {str(p): offset_json(o, bus.offset_style)
                for p, o in watermarks(conn, CONSUMER, s, bus.partitions(s)).items()}
            for s in CONTEXT_STREAMS}


def reconciliation(db: Database, bus: EventBus, platform_run_id: str) -> dict[str, Any]:
    """The per-run reconciliation artifact: applied basis, counts, digest and unresolved anomalies."""
    with db.transaction() as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        basis = applied_basis(conn, bus)
        counts = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE arrival_event_hash IS NOT NULL AND entities_hash IS NOT NULL)
                 FROM join_frames WHERE platform_run_id = %s""", (platform_run_id,)).fetchone()
        bindings = conn.execute("SELECT count(*) FROM flow_bindings WHERE platform_run_id = %s",
                                (platform_run_id,)).fetchone()
        anomalies = conn.execute(
            """SELECT run_id, kind, subject, kept_hash, rejected_hash, evidence_ref FROM context_anomalies
                WHERE platform_run_id = %s ORDER BY anomaly_seq""", (platform_run_id,)).fetchall()
        digest = context_digest(conn, platform_run_id)
    return {
        "kind": "context_reconciliation", "contract_version": CONTRACT_VERSION, "platform_run_id": platform_run_id,
        "applied_basis": basis, "frames": int(counts[0]) if counts else 0,
        "complete_frames": int(counts[1]) if counts else 0, "bindings": int(bindings[0]) if bindings else 0,
        "state_digest": digest,
        "unresolved_anomalies": [{"run_id": r, "kind": k, "subject": s, "kept_hash": kh, "rejected_hash": rh,
                                  "evidence_ref": ref} for r, k, s, kh, rh, ref in anomalies],
    }


def rebuild_context(db: Database, bus: EventBus, basis: dict[str, dict[int, int]] | None,
                    batch_size: int = 5000) -> ContextStats:
    """Rebuild the join plane into an empty database from offset 0 up to an explicit basis
    ({stream: {partition: exclusive-next offset}}); there is no implicit "latest"."""
    if not basis or set(basis) - set(CONTEXT_STREAMS):
        raise TerminalError("REBUILD_BASIS_REQUIRED",
                            f"a rebuild needs an explicit offset basis for the streams {list(CONTEXT_STREAMS)}")
    with db.transaction() as conn:
        busy = conn.execute("SELECT EXISTS (SELECT 1 FROM join_frames) OR EXISTS (SELECT 1 FROM flow_bindings) "
                            "OR EXISTS (SELECT 1 FROM consumer_checkpoints WHERE consumer = %s)",
                            (CONSUMER,)).fetchone()
    if busy and busy[0]:
        raise TerminalError("REBUILD_TARGET_NOT_EMPTY", "rebuild into a database without join-plane state")
    for stream, offsets in basis.items():
        ends = bus.end_offsets(stream) or {}
        beyond = {p: o for p, o in offsets.items() if o > ends.get(p, 0)}
        if beyond:
            raise TerminalError("REBUILD_BASIS_BEYOND_BUS", f"{stream}: basis {beyond} is past the end of the bus")
    return ContextWorker(db, bus, batch_size=batch_size, owner="rebuild").run_until_idle(basis=basis)
