"""get_features: a deterministic snapshot with provenance, durable before it is returned.

State and input basis are read in one REPEATABLE READ transaction, so the basis returned is
exactly the state that answered. The response is written to the snapshot outbox in that same
transaction; only after commit is it returned.
"""

from __future__ import annotations

from typing import Any

import psycopg

from featureplane.online.bus.base import EventBus
from featureplane.online.checkpoints import WATERMARKS_SQL, basis_from_rows
from featureplane.online.ofp_state import CONSUMER, HORIZON_SQL, OfpStateReader, bucket_specs, register_groups
from featureplane.online.snapshot_store import stage
from featureplane.pipelines.errors import FpError, Unavailable
from featureplane.pipelines.positions import basis_json
from featureplane.pipelines.registry import Registry
from featureplane.pipelines.requests import FeatureRequest
from featureplane.pipelines.serving_sql import GroupQuery, decode_rows, numbered, plan_serving
from featureplane.pipelines.snapshot import assemble, error_response
from featureplane.pipelines.timefmt import format_ts
from featureplane.runtime.postgres import Database
from featureplane.schemas.requests import InvalidRequest, parse_request
from featureplane.schemas.streams import TRAFFIC

SERIALIZATION_RETRIES = 5


class FeatureServer:
    """The in-process serving API (notebooks, a decision service, `fp get-features`)."""

    def __init__(self, db: Database, bus: EventBus, registry: Registry) -> None:
        self.db = db
        self.registry = registry
        self.partitions = bus.partitions(TRAFFIC)
        self.offset_style = bus.offset_style
        self._conn: psycopg.Connection | None = None
        self._reader: OfpStateReader | None = None
        self._widths: dict[int, int] | None = None
        self._scopes: dict[tuple[tuple[str, str], ...], int] = {}
        self._provenance = {"registry_digest": registry.digest}  # computed once, not per request

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.db.connect(autocommit=True)  # transactions are explicit below
            # the serving statement's text depends only on the groups asked for (every bound is a
            # parameter): prepared once per shape, so parsing and analysis are not repeated
            self._conn.prepare_threshold = 0
            # generic plans: the statement's shape is fixed per group set and its plan does not depend on
            # the values (index range scans on (key, ts) whatever the key), so it is planned once per
            # connection. Measured on a 100k store: values query p50 0.91 -> 0.38 ms (planning was 0.8 ms
            # of it), hot merchant/card/device unchanged or faster.
            self._conn.execute("SET plan_cache_mode = force_generic_plan")
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
            for attempt in range(SERIALIZATION_RETRIES):
                try:
                    return self._serve(parsed)
                except psycopg.errors.SerializationFailure:
                    # the same snapshot stored concurrently by another request (ON CONFLICT under
                    # REPEATABLE READ): answer again from a fresh snapshot
                    if attempt == SERIALIZATION_RETRIES - 1:
                        raise
            raise AssertionError("unreachable")
        except (psycopg.OperationalError, psycopg.InterfaceError, Unavailable):
            self._conn = None
            return error_response("UNAVAILABLE", "feature state is temporarily unavailable", True,
                                  parsed.context_pins)
        except _NotFound as exc:
            return error_response("NOT_FOUND", str(exc), False, parsed.context_pins)
        except _BeyondRetention as exc:
            return error_response("INVALID_REQUEST", str(exc), False, parsed.context_pins)
        except FpError as exc:
            return error_response("UNAVAILABLE", exc.message, exc.retryable, parsed.context_pins)

    def _serve(self, request: FeatureRequest) -> dict[str, Any]:
        conn = self._connection()
        reader = self._reader
        assert reader is not None  # set with the connection
        scope_id = self._scope_id(conn, reader, request.context_pins)  # scopes are never deleted
        if scope_id is None:
            raise _NotFound("nothing has been applied for these context pins")
        if self._widths is None:  # specs are only ever added; a group without one is served raw
            self._widths = bucket_specs(conn)
        queries = [GroupQuery(g, tuple(k for kt, k in request.keys if kt == g.key_type),
                              self._widths.get(reader.group_ids[g.ref])) for g in request.groups]
        plan = plan_serving(queries, scope_id, reader.group_ids, request.as_of_us)
        try:
            with conn.pipeline():  # round trip 1: one snapshot, the basis and every group read in it
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                basis_cur = conn.execute(WATERMARKS_SQL, (CONSUMER, TRAFFIC))
                horizon_cur = conn.execute(HORIZON_SQL)
                values_cur = psycopg.RawCursor(conn)
                values_cur.execute(numbered(plan.sql), plan.params)
            horizon = horizon_cur.fetchone()
            if horizon is not None:
                _check_retention(request, int(horizon[0]))
            basis = basis_json(TRAFFIC, basis_from_rows(basis_cur.fetchall(), self.partitions), self.offset_style)
            response = assemble(request, decode_rows(plan, values_cur.fetchall()), basis, self._provenance)
            with conn.pipeline():  # round trip 2: the response is durable before it is returned
                stage(conn, response)
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


class _BeyondRetention(Exception):
    pass


def _check_retention(request: FeatureRequest, horizon_us: int) -> None:
    """SPEC §5: a window reaching before the retention horizon is refused, never served partially.
    A window (T - w, T] is complete when its earliest instant, T - w + 1 µs, is at or after the horizon."""
    for group in request.groups:
        if request.as_of_us - group.lookback_us + 1 < horizon_us:
            raise _BeyondRetention(
                f"{group.group_name}@{group.group_version} as of {request.as_of_time_utc} reaches before the online "
                f"retention horizon {format_ts(horizon_us)}; the offline plane (fp ofs build) answers it")


def _safe_pins(pins: dict[str, Any] | None) -> dict[str, str] | None:
    """Echo pins in an error only when they are valid (never reflect arbitrary input)."""
    from featureplane.schemas.envelope import validate_pins

    if pins is None:
        return None
    try:
        return validate_pins(pins)
    except FpError:
        return None
