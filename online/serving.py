"""get_features: a deterministic snapshot with provenance, durable before it is returned.

State and input basis are read in one REPEATABLE READ transaction, so the basis returned is
exactly the state that answered. The response is written to the snapshot outbox in that same
transaction; only after commit is it returned.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import psycopg

from online.bus.base import EventBus
from online.checkpoints import WATERMARKS_SQL, basis_from_rows
from online.ofp_state import CONSUMER, OfpStateReader, bucket_specs, register_groups
from pipelines.buckets import bucket_range, point_features_bucketed, raw_intervals
from pipelines.features import AS_OF, KEY, point_features
from pipelines.registry import Registry
from pipelines.snapshot import assemble, error_response, input_basis
from runtime.errors import FpError, Unavailable
from runtime.postgres import Database
from schemas.requests import FeatureRequest, InvalidRequest, parse_request
from schemas.streams import TRAFFIC


class FeatureServer:
    """The in-process serving API (notebooks, a decision service, `fp get-features`)."""

    def __init__(self, db: Database, bus: EventBus, registry: Registry) -> None:
        self.db = db
        self.registry = registry
        self.partitions = bus.partitions(TRAFFIC)
        self._conn: psycopg.Connection | None = None
        self._reader: OfpStateReader | None = None
        self._widths: dict[int, int] | None = None
        self._scopes: dict[tuple[tuple[str, str], ...], int] = {}

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.db.connect(autocommit=True)  # transactions are explicit below
            # no server-side prepared statements: a generic plan cannot see which key or time span
            # is asked for and may scan a hot key's whole history; a custom plan per call is cheap
            self._conn.prepare_threshold = None
            self._reader = OfpStateReader(register_groups(self._conn, self.registry))
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def get_features(self, request: dict[str, Any]) -> dict[str, Any]:
        """Serve one request; always returns a response object (success or error_response)."""
        pins = request.get("context_pins") if isinstance(request, dict) else None
        pins = pins if isinstance(pins, dict) else None
        try:
            parsed = parse_request(request, self.registry)
        except InvalidRequest as exc:
            return error_response("INVALID_REQUEST", exc.message, False, _safe_pins(pins))
        try:
            return self._serve(parsed)
        except (psycopg.OperationalError, psycopg.InterfaceError, Unavailable):
            self._conn = None
            return error_response("UNAVAILABLE", "feature state is temporarily unavailable", True,
                                  parsed.context_pins)
        except _NotFound as exc:
            return error_response("NOT_FOUND", str(exc), False, parsed.context_pins)
        except FpError as exc:
            return error_response("UNAVAILABLE", exc.message, exc.retryable, parsed.context_pins)

    def _serve(self, request: FeatureRequest) -> dict[str, Any]:
        conn = self._connection()
        reader = self._reader
        assert reader is not None  # set with the connection
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            scope_id = self._scope_id(conn, reader, request.context_pins)
            if scope_id is None:
                raise _NotFound("nothing has been applied for these context pins")
            if self._widths is None:  # specs are only ever added; a group without one is served raw
                self._widths = bucket_specs(conn)
            as_of = request.as_of_us
            pending = []
            with conn.pipeline():  # one round trip for the basis and every group's inputs
                basis_cur = conn.execute(WATERMARKS_SQL, (CONSUMER, TRAFFIC))
                for group in request.groups:
                    key_ids = [key_id for key_type, key_id in request.keys if key_type == group.key_type]
                    width = self._widths.get(reader.group_ids[group.ref])
                    if width is None:
                        spans = [(as_of - group.lookback_us, as_of)]
                        bucket_cur = None
                    else:  # hot-key path: stored buckets for window interiors, raw rows at the edges
                        spans = raw_intervals(group, as_of, width)
                        bucket_cur = reader.start_buckets(conn, scope_id, group, key_ids,
                                                          *bucket_range(group, as_of, width))
                    raw_cur = reader.start_contributions(conn, scope_id, group, key_ids, spans)
                    pending.append((group, key_ids, width, raw_cur, bucket_cur))
            basis = input_basis(TRAFFIC, basis_from_rows(basis_cur.fetchall(), self.partitions))
            lazy = []
            for group, key_ids, width, raw_cur, bucket_cur in pending:
                queries = pl.DataFrame({KEY: key_ids, AS_OF: [as_of] * len(key_ids)},
                                       schema={KEY: pl.String(), AS_OF: pl.Int64()})
                raw = reader.contribution_frame(raw_cur, group)
                if width is None or bucket_cur is None:
                    lazy.append(point_features(raw, queries, group, lazy=True))
                else:
                    buckets = reader.bucket_frame(bucket_cur, group, width)
                    lazy.append(point_features_bucketed(raw, buckets, queries, group, width, lazy=True))
            frames = {g.ref: f for (g, *_), f in zip(pending, pl.collect_all(lazy), strict=True)}
            response = assemble(request, frames, basis, {"registry_digest": self.registry.digest})
            digest = response["snapshot"]["feature_snapshot_hash"]
            warnings = response["provenance"]["warnings"]
            conn.execute(
                """WITH outbox AS (INSERT INTO snapshot_outbox (snapshot_hash, response) VALUES (%s, %s)
                                   ON CONFLICT DO NOTHING)
                   INSERT INTO serve_counters (name, value)
                   SELECT * FROM unnest(%s::text[], %s::bigint[])
                   ON CONFLICT (name) DO UPDATE SET value = serve_counters.value + EXCLUDED.value""",
                (digest, json.dumps(response, sort_keys=True),
                 ["snapshots_built", "groups_served", "stale_groups", "no_data_groups"],
                 [1, len(response["provenance"]["freshness"]),
                  sum(w["code"] == "STALE_GROUP" for w in warnings), sum(w["code"] == "NO_DATA" for w in warnings)]),
            )
            conn.execute("COMMIT")
            return response
        except BaseException:
            if not conn.closed:
                conn.execute("ROLLBACK")
            raise

    def _scope_id(self, conn: psycopg.Connection, reader: OfpStateReader, pins: dict[str, str]) -> int | None:
        """Scopes are never deleted, so a found id is cached; a missing one is asked again next time."""
        key = tuple(sorted(pins.items()))
        if key not in self._scopes:
            found = reader.scope_id(conn, pins)
            if found is None:
                return None
            self._scopes[key] = found
        return self._scopes[key]


class _NotFound(Exception):
    pass


def _safe_pins(pins: dict[str, Any] | None) -> dict[str, str] | None:
    """Echo pins in an error only when they are valid (never reflect arbitrary input)."""
    from schemas.envelope import validate_pins

    if pins is None:
        return None
    try:
        return validate_pins(pins)
    except FpError:
        return None
