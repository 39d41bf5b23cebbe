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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Bind:
    """The request's variables, from which a planned statement's parameters are computed."""

    as_of: int
    scope_id: int
    keys: tuple[tuple[str, ...], ...]  # each group query's key ids, in plan order


Values = Callable[[_Bind], Sequence[Any]]


class _Params:
    """A statement's parameters in the order of their placeholders, as functions of the request (`_Bind`):
    the text is generated once per shape (groups, bucket specs, key counts) and only these run per request."""

    def __init__(self) -> None:
        self.values: list[Values] = []

    def __call__(self, values: Values) -> None:
        self.values.append(values)


def _constant(*values: Any) -> Values:
    return lambda _: values


def _span_sql(count: int, spans: Callable[[int], Sequence[tuple[int, int]]], params: _Params,
              column: str = f"{RAW}.ts_us") -> str:
    """`count` (lo, hi] spans, `spans(as_of)`, as a condition; the bounds are parameters, so the statement
    text does not depend on the as-of time and one prepared (generic) plan serves every request of its shape."""
    params(lambda b: [int(bound) for span in _exactly(count, spans(b.as_of)) for bound in span])
    term = f"({column} > %s::bigint AND {column} <= %s::bigint)"
    return "(" + " OR ".join([term] * count) + ")" if count else "false"


def _exactly(count: int, spans: Sequence[tuple[int, int]]) -> Sequence[tuple[int, int]]:
    if len(spans) != count:  # the text was generated for `count` spans: never bind another number
        raise ValueError(f"{len(spans)} spans where the statement has {count}")
    return spans


def _window(window: int) -> Callable[[int], list[tuple[int, int]]]:
    return lambda as_of: [window_bounds(as_of, window)]


def _where_sql(partial: Partial, params: _Params) -> str:
    if partial.where is None:
        return ""
    params(_constant(partial.where.value))
    op = "=" if partial.where.op == "equal" else "<>"
    return f" AND {RAW}.\"{partial.where.field}\" {op} %s"


def _raw_partial_sql(partial: Partial, condition: str, params: _Params) -> str:
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


def _raw_group_sql(index: int, query: GroupQuery, group_id: int, params: _Params) -> str:
    """Raw rows of the group's keys in its longest window, one index range scan per key."""
    group = query.group
    columns = []
    for feature in group.features:
        for partial in partials_of(feature):
            condition = _span_sql(1, _window(feature.window_us), params)
            columns.append(_raw_partial_sql(partial, condition, params))
    columns.append(f"max({RAW}.ts_us)")
    params(lambda b: (b.scope_id, list(b.keys[index]), *window_bounds(b.as_of, group.lookback_us)))
    key = f'{RAW}."{group.key_field}"'
    # keys without rows in the window return no row: `decode_rows` gives them the empty partials
    return (f"SELECT {index} AS g, {key} AS key_id, ARRAY[{', '.join(columns)}]::bigint[] AS p "
            f"FROM ofp_events {RAW} WHERE {RAW}.scope_id = %s AND {key} = ANY(%s::text[]) "
            f"AND {RAW}.ts_us > %s::bigint AND {RAW}.ts_us <= %s::bigint GROUP BY {key}")


def _bucketed_group_sql(index: int, query: GroupQuery, group_id: int, params: _Params) -> str:
    group, spec = query.group, query.spec
    assert spec is not None
    width, fine_width = spec.width_us, spec.fine_us
    plan = bucket_plan(group, width)
    raw_columns: list[str] = []
    stored_columns: list[str] = []
    fine_columns: list[str] = []
    merged: list[str] = []
    raw_params, stored_params, fine_params = _Params(), _Params(), _Params()  # each in its text's order
    n = 0

    def add(partial: Partial, feature_window: int, bucketed: bool) -> None:
        nonlocal n
        if bucketed and not partial.mergeable:
            slot = distinct_slot(group, width, partial).slot
            raw_columns.append(_distinct_sql(feature_window, width, group_id, slot, raw_params) + f" AS r{n}")
            merged.append(f"r.r{n}")
            n += 1
            return
        if not bucketed:
            condition = _span_sql(1, _window(feature_window), raw_params)
        elif fine_width is None:
            condition = _span_sql(2, lambda as_of: _padded(split_edges(as_of, feature_window, width, None)[1], 2),
                                  raw_params)
        else:  # fixed counts of spans and ranges (empty ones added): one statement text per shape
            condition = _span_sql(4, lambda as_of: _padded(split_edges(as_of, feature_window, width, fine_width)[1],
                                                           4), raw_params)
        raw_columns.append(_raw_partial_sql(partial, condition, raw_params) + f" AS r{n}")
        if bucketed:
            stored_params(lambda b: interior_buckets(b.as_of, feature_window, width))
            slot = plan.index(partial) + 1  # Postgres arrays are 1-based
            agg = "max" if partial.kind == "max" else "sum"
            stored_columns.append(f"{agg}(b.p[{slot}]) FILTER (WHERE b.bucket BETWEEN %s::bigint AND %s::bigint) "
                                  f"AS s{n}")
            value = _merge_sql(partial, f"r.r{n}", f"s.s{n}")
            if fine_width is not None:
                fine = _span_sql(2, lambda as_of: _padded(
                    [(lo - 1, hi) for lo, hi in split_edges(as_of, feature_window, width, fine_width)[0]], 2),
                    fine_params, "f.bucket")
                fine_columns.append(f"{agg}(f.p[{slot}]) FILTER (WHERE {fine}) AS f{n}")
                value = _merge_sql(partial, value, f"fb.f{n}")
            merged.append(value)
        else:
            merged.append(f"r.r{n}")
        n += 1

    for feature in group.features:
        for partial in partials_of(feature):
            add(partial, feature.window_us, uses_buckets(feature, width))
    add(LAST_TS, group.lookback_us, group.lookback_us >= 2 * width)

    def raw_bounds(b: _Bind) -> tuple[Any, ...]:
        spans = raw_intervals(group, b.as_of, spec)
        los, his = [lo for lo, _ in spans], [hi for _, hi in spans]
        return list(b.keys[index]), los, his, b.scope_id, min(los), max(his)

    params.values += [*raw_params.values, raw_bounds]
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
        params.values += [*stored_params.values, lambda b: (
            list(b.keys[index]), b.scope_id, group_id, *_bucket_range(group, b.as_of, width))]
        stored = (f"SELECT b.key_id, {', '.join(stored_columns)} FROM ofp_buckets b "
                  f"WHERE b.key_id = ANY(%s::text[]) AND b.scope_id = %s AND b.group_id = %s "
                  f"AND b.bucket BETWEEN %s::bigint AND %s::bigint GROUP BY b.key_id")
        source = f"({raw}) r LEFT JOIN ({stored}) s ON s.key_id = r.key"
    else:
        source = f"({raw}) r"
    if fine_columns:
        assert fine_width is not None

        def fine_bounds(b: _Bind) -> tuple[Any, ...]:
            ranges = fine_ranges(group, b.as_of, spec)
            return list(b.keys[index]), [lo for lo, _ in ranges], [hi for _, hi in ranges], b.scope_id, group_id

        params.values += [*fine_params.values, fine_bounds]
        # one index range scan per (key, fine range), as for the raw edges
        source += (f" LEFT JOIN (SELECT k.key AS key_id, {', '.join(fine_columns)} FROM unnest(%s::text[]) AS k(key) "
                   f"CROSS JOIN LATERAL (SELECT x.* FROM unnest(%s::bigint[], %s::bigint[]) AS s(lo, hi) "
                   f"CROSS JOIN LATERAL (SELECT * FROM ofp_fine_buckets x WHERE x.scope_id = %s AND x.group_id = %s "
                   f"AND x.key_id = k.key AND x.bucket BETWEEN s.lo AND s.hi OFFSET 0) x) f GROUP BY k.key) fb "
                   f"ON fb.key_id = r.key")
    return f"SELECT {index} AS g, r.key AS key_id, ARRAY[{', '.join(merged)}]::bigint[] AS p FROM {source}"


def _distinct_sql(window: int, width: int, group_id: int, slot: int, params: _Params) -> str:
    """A count_distinct over buckets (the rule in `pipelines.algebra`): the interior buckets' suffix
    counts, the interior links whose previous occurrence lies in lo's bucket but not after lo, and the
    edge links whose previous occurrence is not after lo."""

    def slot_key(b: _Bind) -> tuple[int, int, int]:
        return b.scope_id, group_id, slot

    def interior(as_of: int) -> tuple[int, int]:
        return interior_buckets(as_of, window, width)

    links = "l.scope_id = %s AND l.group_id = %s AND l.slot = %s AND l.key_id = k.key"
    params(lambda b: (interior(b.as_of)[0], *slot_key(b), *interior(b.as_of)))
    inner = ("(SELECT COALESCE(sum(d.far + COALESCE(d.fin[d.bucket - %s::bigint + 2], 0)), 0) "
             "FROM ofp_distinct_buckets d WHERE d.scope_id = %s AND d.group_id = %s AND d.slot = %s "
             "AND d.key_id = k.key AND d.bucket BETWEEN %s::bigint AND %s::bigint)")
    params(slot_key)

    def inside(as_of: int) -> list[tuple[int, int]]:
        k_lo, k_hi = interior(as_of)
        return [(k_lo * width - 1, (k_hi + 1) * width - 1)]

    def before(as_of: int) -> list[tuple[int, int]]:
        return [((interior(as_of)[0] - 1) * width - 1, window_bounds(as_of, window)[0])]

    straddling = (f"(SELECT count(*) FROM ofp_links l WHERE {links} AND {_span_sql(1, inside, params, 'l.ts_us')} "
                  f"AND {_span_sql(1, before, params, 'l.prev_us')})")
    firsts = []
    for edge in range(2):  # one range scan each

        def span(as_of: int, edge: int = edge) -> list[tuple[int, int]]:
            return [_padded(edge_spans(as_of, window, width), 2)[edge]]

        params(slot_key)
        # the edge twice: on ts_us, which prunes the weekly partitions, and on ts_us + 0, the time index
        condition = f"{_span_sql(1, span, params, 'l.ts_us')} AND {_span_sql(1, span, params, '(l.ts_us + 0)')}"
        params(lambda b: (window_bounds(b.as_of, window)[0],))
        firsts.append(f"(SELECT count(*) FROM ofp_links l WHERE {links} AND {condition} "
                      "AND (l.prev_us IS NULL OR l.prev_us <= %s::bigint))")
    return f"({' + '.join([inner, straddling, *firsts])})"


def _padded(spans: list[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """`spans` and empty (0, 0] ones up to `count`."""
    if len(spans) > count:
        raise ValueError(f"{len(spans)} spans where the statement has room for {count}")
    return spans + [(0, 0)] * (count - len(spans))


def _bucket_range(group: GroupDef, as_of: int, width: int) -> tuple[int, int]:
    longest = max(group.lookback_us, *(f.window_us for f in group.features))
    return interior_buckets(as_of, longest, width)


@dataclass(frozen=True)
class _Shape:
    sql: str
    values: tuple[Values, ...]
    count: int  # placeholders in `sql`


class ServingPlanner:
    """Plans serving statements: one per request, a UNION ALL of one SELECT per group. The text of a
    shape (groups, bucket specs, key counts) is generated once; a request only computes its parameters."""

    def __init__(self, group_ids: dict[tuple[str, str], int]) -> None:
        self.group_ids = group_ids
        self._shapes: dict[tuple[Any, ...], _Shape] = {}

    def plan(self, queries: Sequence[GroupQuery], scope_id: int, as_of: int) -> ServingPlan:
        key = tuple((q.group.ref, q.spec, len(q.key_ids)) for q in queries)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = self._shape(queries)
        bind = _Bind(as_of, scope_id, tuple(q.key_ids for q in queries))
        params = [value for values in shape.values for value in values(bind)]
        if len(params) != shape.count:  # a generator bug, never a request's doing
            raise ValueError(f"{len(params)} parameters for {shape.count} placeholders")
        return ServingPlan(shape.sql, params, tuple(queries))

    def _shape(self, queries: Sequence[GroupQuery]) -> _Shape:
        params = _Params()
        parts = []
        for index, query in enumerate(queries):
            build = _raw_group_sql if query.spec is None else _bucketed_group_sql
            parts.append(build(index, query, self.group_ids[query.group.ref], params))
        sql = " UNION ALL ".join(parts)
        return _Shape(sql, tuple(params.values), sql.count("%s"))


def plan_serving(queries: Sequence[GroupQuery], scope_id: int, group_ids: dict[tuple[str, str], int],
                 as_of: int) -> ServingPlan:
    """One statement for every requested group (a planner of its own: nothing cached)."""
    return ServingPlanner(group_ids).plan(queries, scope_id, as_of)


def numbered(sql: str) -> str:
    """The statement with Postgres' own `$n` placeholders, as libpq prepares it (the server keeps the
    result per plan text: a serving statement's text depends only on the groups asked for)."""
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
