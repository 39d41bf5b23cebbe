"""Serving, planned: one SQL statement, generated from the algebra, that computes every requested
(group, key) inside Postgres; and the decoding of its rows into finished feature values.

Pure: builds text and parameters, reads rows handed to it; the online plane executes. Each group
contributes one SELECT returning `(group_index, key_id, partials bigint[])`, the partials in
`partials_of` order per feature and the last update time at the end. Hot-key groups (with stored
bucket partials) read raw rows only at the window edges (with a fine level: fine buckets there, and raw
rows only within them) and merge the buckets in SQL with the same merge rule (`Partial.merge`): add
and cap for sums, add for counts, max for maxes.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from featureplane.pipelines.algebra import (
    SUM_CAP,
    Partial,
    edge_spans,
    finalize,
    finalize_derived,
    interior_buckets,
    partials_of,
    split_edges,
    window_bounds,
)
from featureplane.pipelines.buckets import (
    LAST_TS,
    BucketSpec,
    bucket_plan,
    distinct_slot,
    fine_ranges,
    raw_intervals,
    uses_buckets,
)
from featureplane.pipelines.registry import FeatureDef, GroupDef

RAW = "c"  # alias of the contributions relation in generated SQL


@dataclass(frozen=True)
class GroupQuery:
    group: GroupDef
    key_ids: tuple[str, ...]
    spec: BucketSpec | None  # None: raw rows only


@dataclass(frozen=True)
class ServingPlan:
    sql: str
    params: list[Any]
    groups: tuple[GroupQuery, ...]


def _span_sql(spans: Sequence[tuple[int, int]], params: list[Any], column: str = f"{RAW}.ts_us") -> str:
    """(lo, hi] spans as a condition; the bounds are parameters, so the statement text does not
    depend on the as-of time and one prepared (generic) plan serves every request of its shape."""
    terms = []
    for lo, hi in spans:
        params += [int(lo), int(hi)]
        terms.append(f"({column} > %s::bigint AND {column} <= %s::bigint)")
    return "(" + " OR ".join(terms) + ")" if terms else "false"


def _where_sql(partial: Partial, params: list[Any]) -> str:
    if partial.where is None:
        return ""
    params.append(partial.where.value)
    op = "=" if partial.where.op == "equal" else "<>"
    return f" AND {RAW}.\"{partial.where.field}\" {op} %s"


def _raw_partial_sql(partial: Partial, condition: str, params: list[Any]) -> str:
    """One partial over the raw rows where `condition` holds (the algebra's partial, in SQL)."""
    cond = condition + _where_sql(partial, params)
    if partial.kind == "count":
        return f"count(*) FILTER (WHERE {cond})"
    column = f"{RAW}.\"{partial.field}\""
    if partial.kind == "sum":  # sum(bigint) is numeric in Postgres: exact, then saturated
        return f"LEAST(COALESCE(sum({column}) FILTER (WHERE {cond}), 0), {SUM_CAP})"
    if partial.kind == "max":
        return f"max({column}) FILTER (WHERE {cond})"
    return f"count(DISTINCT {column}) FILTER (WHERE {cond})"


def _merge_sql(partial: Partial, raw: str, stored: str) -> str:
    """`Partial.merge` in SQL (the stored side is null when no bucket of it exists)."""
    if partial.kind == "max":
        return f"GREATEST({raw}, {stored})"
    if partial.kind == "sum":
        return f"LEAST({raw} + COALESCE({stored}, 0), {SUM_CAP})"
    return f"{raw} + COALESCE({stored}, 0)"


def _raw_group_sql(index: int, query: GroupQuery, scope_id: int, group_id: int, as_of: int,
                   params: list[Any]) -> str:
    """Raw rows of the group's keys in its longest window, one index range scan per key."""
    group = query.group
    lo, hi = window_bounds(as_of, group.lookback_us)
    columns = []
    for feature in group.features:
        for partial in partials_of(feature):
            condition = _span_sql([window_bounds(as_of, feature.window_us)], params)
            columns.append(_raw_partial_sql(partial, condition, params))
    columns.append(f"max({RAW}.ts_us)")
    params += [scope_id, list(query.key_ids), lo, hi]
    key = f'{RAW}."{group.key_field}"'
    # keys without rows in the window return no row: `decode_rows` gives them the empty partials
    return (f"SELECT {index} AS g, {key} AS key_id, ARRAY[{', '.join(columns)}]::bigint[] AS p "
            f"FROM ofp_events {RAW} WHERE {RAW}.scope_id = %s AND {key} = ANY(%s::text[]) "
            f"AND {RAW}.ts_us > %s::bigint AND {RAW}.ts_us <= %s::bigint GROUP BY {key}")


def _bucketed_group_sql(index: int, query: GroupQuery, scope_id: int, group_id: int, as_of: int,
                        params: list[Any]) -> str:
    group, spec = query.group, query.spec
    assert spec is not None
    width = spec.width_us
    plan = bucket_plan(group, width)
    raw_columns: list[str] = []
    stored_columns: list[str] = []
    fine_columns: list[str] = []
    merged: list[str] = []
    raw_params: list[Any] = []  # in the order their placeholders stand in the text
    stored_params: list[Any] = []
    fine_params: list[Any] = []
    n = 0

    def add(partial: Partial, feature_window: int, bucketed: bool) -> None:
        nonlocal n
        if bucketed and not partial.mergeable:
            slot = distinct_slot(group, width, partial).slot
            raw_columns.append(_distinct_sql(as_of, feature_window, width, (scope_id, group_id, slot), raw_params)
                               + f" AS r{n}")
            merged.append(f"r.r{n}")
            n += 1
            return
        fine: list[tuple[int, int]] = []
        spans = [window_bounds(as_of, feature_window)]
        if bucketed:  # fixed counts of spans and ranges (empty ones added): one statement text per shape
            fine, spans = split_edges(as_of, feature_window, width, spec.fine_us)
            if spec.fine_us is not None:
                fine, spans = _padded([(lo - 1, hi) for lo, hi in fine], 2), _padded(spans, 4)
        condition = _span_sql(spans, raw_params)
        raw_columns.append(_raw_partial_sql(partial, condition, raw_params) + f" AS r{n}")
        if bucketed:
            stored_params.extend(interior_buckets(as_of, feature_window, width))
            slot = plan.index(partial) + 1  # Postgres arrays are 1-based
            agg = "max" if partial.kind == "max" else "sum"
            stored_columns.append(f"{agg}(b.p[{slot}]) FILTER (WHERE b.bucket BETWEEN %s::bigint AND %s::bigint) "
                                  f"AS s{n}")
            value = _merge_sql(partial, f"r.r{n}", f"s.s{n}")
            if spec.fine_us is not None:
                fine_columns.append(f"{agg}(f.p[{slot}]) FILTER (WHERE {_span_sql(fine, fine_params, 'f.bucket')}) "
                                    f"AS f{n}")
                value = _merge_sql(partial, value, f"fb.f{n}")
            merged.append(value)
        else:
            merged.append(f"r.r{n}")
        n += 1

    for feature in group.features:
        for partial in partials_of(feature):
            add(partial, feature.window_us, uses_buckets(feature, width))
    add(LAST_TS, group.lookback_us, group.lookback_us >= 2 * width)
    first, last = _bucket_range(group, as_of, width)
    spans = raw_intervals(group, as_of, spec)
    los, his = [lo for lo, _ in spans], [hi for _, hi in spans]
    params += [*raw_params, list(query.key_ids), los, his, scope_id, min(los), max(his)]
    # one index range scan per (key, span): OFFSET 0 keeps the planner from flattening the LATERAL
    # subqueries into one scan of the key's whole history filtered afterwards. The spans' hull, as
    # parameters, lets the executor drop every weekly partition outside it once, at start-up; bounds
    # from the spans alone are known only per rescan, so every partition's index scan was set up.
    raw = (f"SELECT k.key, {', '.join(raw_columns)} FROM unnest(%s::text[]) AS k(key) "
           f"LEFT JOIN LATERAL (SELECT {RAW}.* FROM unnest(%s::bigint[], %s::bigint[]) AS s(lo, hi) "
           f"CROSS JOIN LATERAL (SELECT * FROM ofp_events e WHERE e.scope_id = %s "
           f"AND e.\"{group.key_field}\" = k.key AND e.ts_us > s.lo AND e.ts_us <= s.hi "
           f"AND e.ts_us > %s::bigint AND e.ts_us <= %s::bigint OFFSET 0) {RAW}) {RAW} ON true GROUP BY k.key")
    if stored_columns:
        params += [*stored_params, list(query.key_ids), scope_id, group_id, first, last]
        stored = (f"SELECT b.key_id, {', '.join(stored_columns)} FROM ofp_buckets b "
                  f"WHERE b.key_id = ANY(%s::text[]) AND b.scope_id = %s AND b.group_id = %s "
                  f"AND b.bucket BETWEEN %s::bigint AND %s::bigint GROUP BY b.key_id")
        source = f"({raw}) r LEFT JOIN ({stored}) s ON s.key_id = r.key"
    else:
        source = f"({raw}) r"
    if fine_columns:
        assert spec.fine_us is not None
        ranges = fine_ranges(group, as_of, spec)
        params += [*fine_params, list(query.key_ids), [lo for lo, _ in ranges], [hi for _, hi in ranges],
                   scope_id, group_id]
        # one index range scan per (key, fine range), as for the raw edges
        source += (f" LEFT JOIN (SELECT k.key AS key_id, {', '.join(fine_columns)} FROM unnest(%s::text[]) AS k(key) "
                   f"CROSS JOIN LATERAL (SELECT x.* FROM unnest(%s::bigint[], %s::bigint[]) AS s(lo, hi) "
                   f"CROSS JOIN LATERAL (SELECT * FROM ofp_fine_buckets x WHERE x.scope_id = %s AND x.group_id = %s "
                   f"AND x.key_id = k.key AND x.bucket BETWEEN s.lo AND s.hi OFFSET 0) x) f GROUP BY k.key) fb "
                   f"ON fb.key_id = r.key")
    return f"SELECT {index} AS g, r.key AS key_id, ARRAY[{', '.join(merged)}]::bigint[] AS p FROM {source}"


def _distinct_sql(as_of: int, window: int, width: int, slot_key: tuple[int, int, int], params: list[Any]) -> str:
    """A count_distinct over buckets (the rule in `pipelines.algebra`): the interior buckets' suffix
    counts, the interior links whose previous occurrence lies in lo's bucket but not after lo, and the
    edge links whose previous occurrence is not after lo."""
    lo, _ = window_bounds(as_of, window)
    k_lo, k_hi = interior_buckets(as_of, window, width)
    links = "l.scope_id = %s AND l.group_id = %s AND l.slot = %s AND l.key_id = k.key"
    params += [k_lo, *slot_key, k_lo, k_hi]
    interior = ("(SELECT COALESCE(sum(d.far + COALESCE(d.fin[d.bucket - %s::bigint + 2], 0)), 0) "
                "FROM ofp_distinct_buckets d WHERE d.scope_id = %s AND d.group_id = %s AND d.slot = %s "
                "AND d.key_id = k.key AND d.bucket BETWEEN %s::bigint AND %s::bigint)")
    params += slot_key
    inside = _span_sql([(k_lo * width - 1, (k_hi + 1) * width - 1)], params, "l.ts_us")
    before = _span_sql([((k_lo - 1) * width - 1, lo)], params, "l.prev_us")
    straddling = f"(SELECT count(*) FROM ofp_links l WHERE {links} AND {inside} AND {before})"
    firsts = []
    for edge in edge_spans(as_of, window, width):  # one range scan each
        params += slot_key
        # the edge twice: on ts_us, which prunes the weekly partitions, and on ts_us + 0, the time index
        span = f"{_span_sql([edge], params, 'l.ts_us')} AND {_span_sql([edge], params, '(l.ts_us + 0)')}"
        params.append(lo)
        firsts.append(f"(SELECT count(*) FROM ofp_links l WHERE {links} AND {span} "
                      "AND (l.prev_us IS NULL OR l.prev_us <= %s::bigint))")
    return f"({' + '.join([interior, straddling, *firsts])})"


def _padded(spans: list[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """`spans` and empty (0, 0] ones up to `count`."""
    return spans + [(0, 0)] * (count - len(spans))


def _bucket_range(group: GroupDef, as_of: int, width: int) -> tuple[int, int]:
    longest = max(group.lookback_us, *(f.window_us for f in group.features))
    return interior_buckets(as_of, longest, width)


def plan_serving(queries: Sequence[GroupQuery], scope_id: int, group_ids: dict[tuple[str, str], int],
                 as_of: int) -> ServingPlan:
    """One statement for every requested group: a UNION ALL of one SELECT per group."""
    params: list[Any] = []
    parts = []
    for index, query in enumerate(queries):
        gid = group_ids[query.group.ref]
        build = _raw_group_sql if query.spec is None else _bucketed_group_sql
        parts.append(build(index, query, scope_id, gid, as_of, params))
    return ServingPlan(" UNION ALL ".join(parts), params, tuple(queries))


@lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """The statement with Postgres' own `$n` placeholders: a serving statement's text depends only on the
    groups asked for, so this runs once per shape, and the driver sends it without splitting it again
    (psycopg re-parses `%s` statements over 4 KiB on every execution)."""
    counter = itertools.count(1)
    return re.sub(r"%s", lambda _: f"${next(counter)}", sql)


def decode_rows(plan: ServingPlan, rows: Sequence[tuple[int, str, list[int | None]]]
                ) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Rows of a plan -> {(group_name, group_version, key_id): {feature: value, ..., "last_update_us"}}."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    found = {(index, key_id): partials for index, key_id, partials in rows}
    for index, query in enumerate(plan.groups):
        for key_id in query.key_ids:
            partials = found.get((index, key_id)) or _empty_partials(query.group)
            out[(query.group.group_name, query.group.group_version, key_id)] = _finish(query.group, partials)
    return out


def _empty_partials(group: GroupDef) -> list[int | None]:
    """The partials of an empty window (a key with no rows in it), in plan order."""
    return [p.empty() for f in group.features for p in partials_of(f)] + [None]


def _finish(group: GroupDef, partials: Sequence[int | None]) -> dict[str, Any]:
    """Finished feature values (and last_update_us) of one (group, key) from its partials."""
    values: dict[str, Any] = {}
    at = 0
    for feature in group.features:
        width = len(partials_of(feature))
        values[feature.name] = finalize(feature, _typed(feature, partials[at:at + width]))
        at += width
    for derived in group.derived:
        values[derived.name] = finalize_derived(derived, values)
    values["last_update_us"] = partials[at]
    return values


def _typed(feature: FeatureDef, values: Sequence[int | None]) -> list[int | None]:
    return [None if v is None else int(v) for v in values]
