"""Postgres-backed OFP state: scope and group ids, contribution writes and as-of reads.

Writers and readers are separate classes: serving code gets an `OfpStateReader`, which has no
method that mutates state.
"""

from __future__ import annotations

import polars as pl
import psycopg

from featureplane.online.distinct_state import lock_groups, write_links
from featureplane.pipelines.algebra import SUM_CAP, Partial
from featureplane.pipelines.buckets import (
    BUCKET,
    BucketSpec,
    bucket_partials,
    bucket_plan,
    describe_plan,
    distinct_plan,
    partial_columns,
)
from featureplane.pipelines.errors import TerminalError
from featureplane.pipelines.features import KEY, TS, contribution_schema
from featureplane.pipelines.registry import GroupDef, Registry, RegistryError

PIN_COLUMNS = ("scenario_id", "run_id", "manifest_fingerprint", "parameter_hash")
CONSUMER = "ofp"


def register_groups(conn: psycopg.Connection, registry: Registry) -> dict[tuple[str, str], int]:
    """Ensure every group version has an id; a published version whose digest changed fails."""
    for group in registry.all():
        conn.execute(
            """INSERT INTO ofp_groups (group_name, group_version, digest) VALUES (%s, %s, %s)
               ON CONFLICT DO NOTHING""",
            (group.group_name, group.group_version, group.digest),
        )
    ids: dict[tuple[str, str], int] = {}
    for gid, name, version, digest in conn.execute(
        "SELECT group_id, group_name, group_version, digest FROM ofp_groups"
    ):
        group = registry.get(name, version)
        if group is not None and group.digest != digest:
            raise RegistryError("REGISTRY_DIGEST_MISMATCH",
                                f"{name}@{version} was published with {digest}; config now says {group.digest}")
        ids[(name, version)] = gid
    return ids


def bucket_specs(conn: psycopg.Connection) -> dict[int, BucketSpec]:
    """group_id -> bucket spec for every group that keeps buckets."""
    return {int(g): BucketSpec(int(w), None if f is None else int(f))
            for g, w, f in conn.execute("SELECT group_id, width_us, fine_us FROM ofp_bucket_specs")}


def write_spec_buckets(conn: psycopg.Connection, group: GroupDef, group_id: int, spec: BucketSpec,
                       contribs: pl.DataFrame) -> None:
    """A group's bucket partials of some contributions (with scope_id), merged into every level it keeps."""
    write_buckets(conn, group, group_id, spec.width_us, bucket_partials(contribs, group, spec.width_us,
                                                                        by=("scope_id",)))
    if spec.fine_us is not None:
        write_buckets(conn, group, group_id, spec.width_us,
                      bucket_partials(contribs, group, spec.width_us, by=("scope_id",), at_us=spec.fine_us),
                      table="ofp_fine_buckets")


def write_buckets(conn: psycopg.Connection, group: GroupDef, group_id: int, width_us: int,
                  partials: pl.DataFrame, table: str = "ofp_buckets") -> int:
    """Merge (scope_id, key_id, bucket, p0..pn) partials into the stored buckets (add counts and sums,
    saturating at SUM_CAP as `saturating_add` does; max of maxes); the plan is that of `width_us`."""
    if partials.is_empty():
        return 0
    columns = partial_columns(group, width_us)
    # each column as one joined text, split in Postgres (no Python object per value to adapt): keys
    # are entity ids (no comma), each row's partials a bigint[] literal (joined by ';')
    literal = pl.concat_str(pl.lit("{"), pl.concat_str([pl.col(c).cast(pl.String).fill_null("NULL") for c in columns],
                                                      separator=","), pl.lit("}"))
    scopes, keys, buckets, arrays = partials.select(
        pl.col("scope_id").cast(pl.String).str.join(","), pl.col(KEY).str.join(","),
        pl.col(BUCKET).cast(pl.String).str.join(","), literal.str.join(";")).row(0)
    merged = _merged(bucket_plan(group, width_us))
    conn.execute(
        f"""INSERT INTO {table} AS t (scope_id, group_id, key_id, bucket, p)
           SELECT s, %s, k, b, a::bigint[]
             FROM unnest(string_to_array(%s, ',')::int[], string_to_array(%s, ','),
                         string_to_array(%s, ',')::bigint[], string_to_array(%s, ';')) AS u(s, k, b, a)
           ON CONFLICT (scope_id, group_id, key_id, bucket) DO UPDATE SET p = {merged}""",
        (group_id, scopes, keys, buckets, arrays),
    )
    return partials.height


def _merged(plan: tuple[Partial, ...]) -> str:
    """The stored partials merged with the incoming ones, element by element (`Partial.merge`: add,
    saturating at SUM_CAP, or take the greater), as one array constructor."""
    merged = [f"LEAST(t.p[{i}] + EXCLUDED.p[{i}], {SUM_CAP})" if p.additive else f"GREATEST(t.p[{i}], EXCLUDED.p[{i}])"
              for i, p in enumerate(plan, start=1)]
    return f"ARRAY[{', '.join(merged)}]::bigint[]"


def ensure_bucket_specs(conn: psycopg.Connection, registry: Registry, group_ids: dict[tuple[str, str], int],
                        wanted: dict[tuple[str, str], BucketSpec]) -> dict[int, BucketSpec]:
    """Register bucket specs for the configured groups; a new spec is backfilled from the
    contributions already applied, under a lock that holds writers back until it commits. A group
    registered at another width is refused (`BUCKET_WIDTH_CHANGED`): serving processes hold the
    registered width, so its buckets cannot be rebuilt under them."""
    conn.execute("SELECT pg_advisory_xact_lock(7304, 0)")
    specs = bucket_specs(conn)
    for ref, spec in sorted(wanted.items()):
        group = registry.get(*ref)
        if group is None:
            continue
        registered = specs.get(group_ids[ref])
        if registered is not None and registered != spec:
            raise TerminalError(
                "BUCKET_WIDTH_CHANGED",
                f"{ref[0]}@{ref[1]} is registered for hot keys at {_seconds(registered)}, but the profile's "
                f"serving.bucketed_groups says {_seconds(spec)}; a registered width cannot change "
                "under running servers: put the registered width back in the profile")
        if registered is not None:
            continue
        conn.execute("LOCK TABLE ofp_events IN SHARE MODE")
        gid = group_ids[ref]
        width_us = spec.width_us
        plan = describe_plan((*bucket_plan(group, width_us), *(s.partial for s in distinct_plan(group, width_us))))
        conn.execute("INSERT INTO ofp_bucket_specs (group_id, width_us, fine_us, partials) VALUES (%s, %s, %s, %s)",
                     (gid, width_us, spec.fine_us, plan))
        schema = {"scope_id": pl.Int32(), **contribution_schema(group)}
        fields = ", ".join(f'"{c}"' for c in group.fields)
        cur = conn.cursor(binary=True)
        cur.execute(f"""SELECT scope_id, "{group.key_field}", ts_us{", " if fields else ""}{fields}
                          FROM ofp_events WHERE "{group.key_field}" IS NOT NULL""")
        existing = pl.DataFrame(cur.fetchall(), schema=schema, orient="row")
        write_spec_buckets(conn, group, gid, spec, existing)
        lock_groups(conn, [gid])
        write_links(conn, group, gid, width_us, existing)
        specs[gid] = spec
    return specs


def _seconds(spec: BucketSpec) -> str:
    fine = "" if spec.fine_us is None else f" with fine buckets of {spec.fine_us // 1_000_000} s"
    return f"{spec.width_us // 1_000_000} s{fine}"


_CLAIM = 'INSERT INTO ofp_event_ids (platform_run_id, event_id, partition, "offset")'
_CLAIMED = """unnest(string_to_array(%s, ','), string_to_array(%s, ','), string_to_array(%s, ',')::int[],
                     string_to_array(%s, ',')::numeric[])"""


class OfpStateWriter:
    def __init__(self, group_ids: dict[tuple[str, str], int]) -> None:
        self.group_ids = group_ids

    def scope_ids(self, conn: psycopg.Connection, pins: pl.DataFrame) -> pl.DataFrame:
        """Map each distinct pins tuple to its scope id (creating scopes as needed)."""
        distinct = pins.select(PIN_COLUMNS).unique()
        rows = [tuple(r) for r in distinct.iter_rows()]
        conn.cursor().executemany(
            """INSERT INTO ofp_scopes (scenario_id, run_id, manifest_fingerprint, parameter_hash)
               VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            rows,
        )
        found = conn.execute(
            """SELECT s.scope_id, s.scenario_id, s.run_id, s.manifest_fingerprint, s.parameter_hash
                 FROM ofp_scopes s
                 JOIN unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS u(a, b, c, d)
                   ON s.scenario_id = u.a AND s.run_id = u.b AND s.manifest_fingerprint = u.c
                  AND s.parameter_hash = u.d""",
            tuple([r[i] for r in rows] for i in range(4)),
        ).fetchall()
        return pl.DataFrame(found, schema={"scope_id": pl.Int32(), **dict.fromkeys(PIN_COLUMNS, pl.String())},
                            orient="row")

    def claim_events(self, conn: psycopg.Connection, frame: pl.DataFrame) -> pl.DataFrame:
        """Insert event ids; return only the rows seen for the first time (not already applied).

        `frame` holds each id once (`first_positions`). Ids are almost always new, so they are first
        inserted plainly, under a savepoint: half the cost of ON CONFLICT's speculative insertion
        (1M events: 5.6 -> 3.0 s). Only if one was claimed before (a retried producer, or a worker
        of another partition claiming the same id concurrently, which a plain insert waits for and
        then collides with) is the batch claimed again with ON CONFLICT, which says which ones."""
        if frame.is_empty():
            return frame
        # each column as one comma-joined text (ids, pins and offsets hold no comma: their charsets are
        # checked at decoding), split in Postgres: no Python object per value to adapt
        joined = frame.select(pl.col("platform_run_id", "event_id").str.join(","),
                              pl.col("partition").cast(pl.String).str.join(","), pl.col("offset").str.join(",")).row(0)
        try:
            with conn.transaction():
                conn.execute(f"{_CLAIM} SELECT * FROM {_CLAIMED}", joined)
            return frame
        except psycopg.errors.UniqueViolation:
            pass
        claimed = conn.execute(f"""{_CLAIM} SELECT * FROM {_CLAIMED}
                                   ON CONFLICT DO NOTHING RETURNING partition, "offset"::text""", joined).fetchall()
        keep = pl.DataFrame(claimed, schema={"partition": pl.Int64(), "offset": pl.String()}, orient="row")
        return frame.join(keep, on=["partition", "offset"], how="semi")

    def write_events(self, conn: psycopg.Connection, rows: pl.DataFrame) -> int:
        """COPY one typed row per event (scope_id, position, ts_us and every field groups read)."""
        if rows.is_empty():
            return 0
        ensure_partitions(conn, rows[TS].min(), rows[TS].max())
        frame = rows.select(EVENT_COLUMNS)
        # text COPY straight from polars: every string here passed the id/channel charsets (no tab,
        # newline or backslash), so no escaping is needed
        data = frame.write_csv(separator="\t", null_value="\\N", include_header=False, quote_style="never")
        quoted = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)
        with conn.cursor().copy(f"COPY ofp_events ({quoted}) FROM STDIN") as copy:
            copy.write(data.encode())
        return rows.height


WEEK_US = 7 * 86_400_000_000
EVENT_COLUMNS = ("scope_id", "partition", "offset", TS, "account_id", "card_id", "customer_id", "merchant_id",
                 "device_id", "amount_minor", "channel")


PARTITIONED = ("ofp_events", "ofp_links")  # tables partitioned by week of ts_us


def partition_name(week: int, table: str = "ofp_events") -> str:
    return f"{table}_w{week}" if week >= 0 else f"{table}_wm{-week}"


def ensure_partitions(conn: psycopg.Connection, first_ts: int, last_ts: int) -> None:
    """Create the weekly partitions of ofp_events that [first_ts, last_ts] needs (idempotent; one
    creator at a time, so concurrent workers never race on the DDL)."""
    weeks = range(first_ts // WEEK_US, last_ts // WEEK_US + 1)
    existing = {r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relname = ANY(%s)", ([partition_name(w) for w in weeks],))}
    missing = [w for w in weeks if partition_name(w) not in existing]
    if not missing:
        return
    conn.execute("SELECT pg_advisory_xact_lock(7305, 0)")
    for week in missing:
        for table in PARTITIONED:
            conn.execute(f"""CREATE TABLE IF NOT EXISTS {partition_name(week, table)} PARTITION OF {table}
                             FOR VALUES FROM ({week * WEEK_US}) TO ({(week + 1) * WEEK_US})""")


def migrate_contributions(conn: psycopg.Connection, registry: Registry, group_ids: dict[tuple[str, str], int]) -> int:
    """Move state kept in the v1 layout (one row per event and group version) into ofp_events (one row
    per event), taking each key from a group of its key type; returns the events moved."""
    conn.execute("SELECT pg_advisory_xact_lock(7306, 0)")
    if conn.execute("SELECT NOT EXISTS (SELECT 1 FROM ofp_contributions)").fetchone()[0]:
        return 0
    by_type: dict[str, list[int]] = {}
    for group in registry.all():
        by_type.setdefault(group.key_field, []).append(group_ids[group.ref])
    keys = [f"max(key_id) FILTER (WHERE group_id = ANY(%(k_{field})s)) AS {field}" for field in KEY_FIELDS]
    params = {f"k_{field}": by_type.get(field, []) for field in KEY_FIELDS}
    low, high = conn.execute("SELECT min(ts_us), max(ts_us) FROM ofp_contributions").fetchone()
    ensure_partitions(conn, low, high)
    moved = conn.execute(
        f"""INSERT INTO ofp_events (scope_id, partition, "offset", ts_us, {", ".join(KEY_FIELDS)}, amount_minor,
                                    channel)
            SELECT scope_id, partition, "offset", min(ts_us), {", ".join(keys)}, max(amount_minor), max(channel)
              FROM ofp_contributions GROUP BY scope_id, partition, "offset" """, params).rowcount
    conn.execute("TRUNCATE ofp_contributions")
    return moved


HORIZON_SQL = "SELECT horizon_us FROM ofp_retention"


def enforce_retention(conn: psycopg.Connection, retention_us: int) -> int | None:
    """Drop the weekly partitions (and bucket partials) wholly older than `retention_us` behind the
    applied event-time watermark, and move the horizon to the start of the oldest week kept, in one
    transaction (serving sees the old state and horizon, or the new ones). Returns the horizon."""
    conn.execute("SELECT pg_advisory_xact_lock(7305, 0)")  # the partition creator's lock
    row = conn.execute("SELECT max(last_event_ts_us) FROM consumer_counters WHERE consumer = %s",
                       (CONSUMER,)).fetchone()
    current = conn.execute(HORIZON_SQL).fetchone()
    if row is None or row[0] is None:
        return None if current is None else int(current[0])
    horizon = (int(row[0]) - retention_us) // WEEK_US * WEEK_US
    if current is not None and int(current[0]) >= horizon:
        return int(current[0])
    for table in PARTITIONED:
        for (name,) in conn.execute(
                """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhparent = %s::regclass""", (table,)).fetchall():
            week = -int(name.removeprefix(f"{table}_wm")) if name.startswith(f"{table}_wm") \
                else int(name.removeprefix(f"{table}_w"))
            if (week + 1) * WEEK_US <= horizon and name == partition_name(week, table):
                conn.execute(f"DROP TABLE {name}")
    for buckets, width in (("ofp_buckets", "width_us"), ("ofp_distinct_buckets", "width_us"),
                           ("ofp_fine_buckets", "fine_us")):
        conn.execute(f"""DELETE FROM {buckets} b USING ofp_bucket_specs s
                          WHERE b.group_id = s.group_id AND (b.bucket + 1) * s.{width} <= %s""", (horizon,))
    conn.execute("""INSERT INTO ofp_retention (horizon_us) VALUES (%s)
                    ON CONFLICT (singleton) DO UPDATE SET horizon_us = EXCLUDED.horizon_us, updated_at = now()""",
                 (horizon,))
    return horizon


KEY_FIELDS = ("account_id", "card_id", "customer_id", "merchant_id", "device_id")


class OfpStateReader:
    """Read-only view of OFP state, used inside one REPEATABLE READ transaction."""

    def __init__(self, group_ids: dict[tuple[str, str], int]) -> None:
        self.group_ids = group_ids

    @staticmethod
    def scope_id(conn: psycopg.Connection, pins: dict[str, str]) -> int | None:
        row = conn.execute(
            """SELECT scope_id FROM ofp_scopes WHERE scenario_id = %s AND run_id = %s
                  AND manifest_fingerprint = %s AND parameter_hash = %s""",
            tuple(pins[c] for c in PIN_COLUMNS),
        ).fetchone()
        return None if row is None else int(row[0])
