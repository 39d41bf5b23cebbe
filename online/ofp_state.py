"""Postgres-backed OFP state: scope and group ids, contribution writes and as-of reads.

Writers and readers are separate classes: serving code gets an `OfpStateReader`, which has no
method that mutates state.
"""

from __future__ import annotations

import polars as pl
import psycopg

from pipelines.features import contribution_schema
from pipelines.registry import GroupDef, Registry, RegistryError

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
        """Insert event ids; return only the rows seen for the first time (not already applied)."""
        if frame.is_empty():
            return frame
        claimed = conn.execute(
            """INSERT INTO ofp_event_ids (platform_run_id, event_id, partition, "offset")
               SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::bigint[])
               ON CONFLICT DO NOTHING RETURNING partition, "offset" """,
            (frame["platform_run_id"].to_list(), frame["event_id"].to_list(), frame["partition"].to_list(),
             frame["offset"].to_list()),
        ).fetchall()
        keep = pl.DataFrame(claimed, schema={"partition": pl.Int64(), "offset": pl.Int64()}, orient="row")
        return frame.join(keep, on=["partition", "offset"], how="semi")

    def write_contributions(self, conn: psycopg.Connection, rows: pl.DataFrame) -> int:
        """COPY contribution rows (partition, offset, group_id, key_id, scope_id, ts_us, fields...)."""
        if rows.is_empty():
            return 0
        columns = rows.columns
        quoted = ", ".join(f'"{c}"' for c in columns)
        with conn.cursor().copy(f"COPY ofp_contributions ({quoted}) FROM STDIN") as copy:
            for row in rows.iter_rows():
                copy.write_row(row)
        return rows.height


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

    def contributions(self, conn: psycopg.Connection, scope_id: int, group: GroupDef, key_ids: list[str],
                      as_of_us: int) -> pl.DataFrame:
        """The group's contributions for these keys with T - L < ts <= T."""
        schema = contribution_schema(group)
        columns = ", ".join(f'"{c}"' for c in schema)
        cur = conn.cursor(binary=True)
        cur.execute(
            f"""SELECT {columns} FROM ofp_contributions
                 WHERE scope_id = %s AND group_id = %s AND key_id = ANY(%s) AND ts_us > %s AND ts_us <= %s""",
            (scope_id, self.group_ids[group.ref], key_ids, as_of_us - group.lookback_us, as_of_us),
        )
        return pl.DataFrame(cur.fetchall(), schema=schema, orient="row")
