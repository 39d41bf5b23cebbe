"""The polars execution of the aggregation algebra (`pipelines.algebra`).

Each feature is its algebra partials finalized (`aggregate_expr`); parity evaluates it at arbitrary
as-of points (`point_features`), dataset builds in rolling windows ending at each transaction
(`rolling_features`). Online serving runs the SQL execution of the same algebra
(`pipelines.serving_sql`). Window membership is the algebra's `T - w < ts <= T`, in microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import polars as pl

from featureplane.pipelines.algebra import MAX_EXACT_INT, SUM_CAP, Partial, partials_of
from featureplane.pipelines.registry import DerivedDef, FeatureDef, GroupDef, Where

TS = "ts_us"
KEY = "key_id"
AS_OF = "as_of_us"
LAST_UPDATE = "last_update_us"

TRANSACTION_COLUMNS: dict[str, pl.DataType] = {
    "partition": pl.Int32(), "offset": pl.String(), "event_id": pl.String(), TS: pl.Int64(),
    "account_id": pl.String(), "card_id": pl.String(), "customer_id": pl.String(),
    "merchant_id": pl.String(), "device_id": pl.String(), "amount_minor": pl.Int64(), "channel": pl.String(),
}
FIELD_TYPES: dict[str, pl.DataType] = {
    "amount_minor": pl.Int64(), "merchant_id": pl.String(), "card_id": pl.String(),
    "account_id": pl.String(), "channel": pl.String(),
}


def contribution_schema(group: GroupDef) -> dict[str, pl.DataType]:
    return {KEY: pl.String(), TS: pl.Int64(), **{f: FIELD_TYPES[f] for f in group.fields}}


def contributions(transactions: pl.DataFrame, group: GroupDef, carry: tuple[str, ...] = ()) -> pl.DataFrame:
    """What one group keeps of each transaction: its key, the event time, the fields it reads
    (plus any `carry` columns the caller needs alongside, such as the bus position).

    A transaction with no key for the group (a null device) is not a source event of the group.
    """
    return key_contributions(transactions, [group], carry)


def key_contributions(transactions: pl.DataFrame, groups: Sequence[GroupDef], carry: tuple[str, ...] = ()
                      ) -> pl.DataFrame:
    """`contributions` of several groups of one key type at once: the fields any of them reads."""
    fields = list(dict.fromkeys(f for g in groups for f in g.fields))
    key_field = groups[0].key_field
    assert all(g.key_field == key_field for g in groups), "groups of one key type"
    return (
        transactions.lazy()
        .filter(pl.col(key_field).is_not_null())
        .select(*carry, pl.col(key_field).alias(KEY), pl.col(TS), *[pl.col(f) for f in fields])
        .collect()
    )


def condition_expr(where: Where | None, in_window: pl.Expr) -> pl.Expr:
    if where is None:
        return in_window
    column = pl.col(where.field)
    test = column == where.value if where.op == "equal" else column != where.value
    return in_window & test


def saturating_sum(values: pl.Expr) -> pl.Expr:
    """Sum of non-negative integers, exact below SUM_CAP and SUM_CAP at or above it (never wrapping).

    The Int64 sum is exact unless the true sum passes 2^63; the Float64 sum of the same values is
    exact while below 2^53 and, being monotone, reaches 2^53 exactly when the true sum does.
    """
    exact = values.sum().cast(pl.Int64)
    return pl.when(values.cast(pl.Float64).sum() >= float(SUM_CAP)).then(pl.lit(SUM_CAP, pl.Int64)).otherwise(exact)


def saturating_add(left: pl.Expr, right: pl.Expr) -> pl.Expr:
    """Merge two saturated sums (each <= SUM_CAP, so the addition cannot overflow)."""
    return pl.min_horizontal(left + right, pl.lit(SUM_CAP, pl.Int64))


def mean_of(total: pl.Expr, count: pl.Expr) -> pl.Expr:
    """float(sum) / count; null for an empty window, NaN (served as null, VALUE_OUT_OF_RANGE) when
    the sum itself is beyond 2^53 - 1."""
    value = pl.when(total >= SUM_CAP).then(float("nan")).otherwise(total.cast(pl.Float64) / count.cast(pl.Float64))
    return pl.when(count > 0).then(value).otherwise(None)


def in_range_expr(column: str, dtype: pl.DataType) -> pl.Expr:
    """`out_of_range` over a frame column (datasets): such values become null."""
    col = pl.col(column)
    if dtype.is_float():
        return pl.when(col.is_nan()).then(None).otherwise(col).alias(column)
    if dtype.is_integer():
        return pl.when(col > MAX_EXACT_INT).then(None).otherwise(col).alias(column)
    return col


def partial_expr(partial: Partial, in_window: pl.Expr) -> pl.Expr:
    """An algebra partial in polars, over the rows where `in_window` holds (null counts as false)."""
    cond = condition_expr(partial.where, in_window).fill_null(False)
    if partial.kind == "count":
        return cond.sum().cast(pl.Int64)
    values = pl.col(partial.field).filter(cond)
    if partial.kind == "sum":
        return saturating_sum(values)
    if partial.kind == "max":
        return values.max().cast(pl.Int64)
    return values.drop_nulls().n_unique().cast(pl.Int64)


def finalize_expr(feature: FeatureDef, partials: list[pl.Expr]) -> pl.Expr:
    """`algebra.finalize` in polars."""
    if feature.agg == "mean":
        return mean_of(partials[1], partials[0])
    return partials[0]


def aggregate_expr(feature: FeatureDef, in_window: pl.Expr) -> pl.Expr:
    """The aggregation of one feature over the rows where `in_window` holds: its partials, finalized."""
    return finalize_expr(feature, [partial_expr(p, in_window) for p in partials_of(feature)]).alias(feature.name)


def derived_expr(derived: DerivedDef, column: Callable[[str], str] = str) -> pl.Expr:
    """ratio = float(numerator) / float(denominator); null when the denominator is 0, NaN (out of
    range) when either side is a sum beyond 2^53 - 1. `column` names a feature's column."""
    num, den = pl.col(column(derived.numerator)), pl.col(column(derived.denominator))
    ratio = (pl.when((num >= SUM_CAP) | (den >= SUM_CAP)).then(float("nan"))
             .otherwise(num.cast(pl.Float64) / den.cast(pl.Float64)))
    return pl.when(den != 0).then(ratio).otherwise(None).alias(derived.name)


def window_mask(width_us: int, as_of: pl.Expr | None = None) -> pl.Expr:
    """T - w < ts <= T, with T a column of the frame (default) or a literal."""
    at = pl.col(AS_OF) if as_of is None else as_of
    return (pl.col(TS) > at - width_us) & (pl.col(TS) <= at)


def _single_as_of(contribs: pl.LazyFrame, queries: pl.LazyFrame, group: GroupDef, as_of: int) -> pl.LazyFrame:
    """point_features for queries that share one as-of time: the same aggregations with T as a
    literal, grouped by key (no query x event join); keys without events get the values of an
    empty window (0 for count, sum and count_distinct; null for max and mean)."""
    at = pl.lit(as_of, pl.Int64)
    aggs = [aggregate_expr(f, window_mask(f.window_us, at)) for f in group.features]
    aggs.append(pl.col(TS).filter(window_mask(group.lookback_us, at).fill_null(False)).max().alias(LAST_UPDATE))
    found = contribs.group_by(KEY).agg(aggs)
    zero_when_empty = [f.name for f in group.features if f.agg in ("count", "sum", "count_distinct")]
    return (queries.join(found, on=KEY, how="left")
            .with_columns([pl.col(c).fill_null(0) for c in zero_when_empty]))


def point_features(contribs: pl.DataFrame, queries: pl.DataFrame, group: GroupDef,
                   lazy: bool = False) -> pl.DataFrame | pl.LazyFrame:
    """Features and last update time for each (key_id, as_of_us) query, from the key's contributions.

    Returns one row per distinct query with the group's features (sorted names) and `last_update_us`
    (a LazyFrame when `lazy`, so several groups can be collected together).
    """
    contribs = _reached(contribs, queries, group)
    fast = _point_on_axis(contribs, queries, group)
    if fast is not None:
        return fast.lazy() if lazy else fast
    as_of_values = set(queries[AS_OF].to_list())
    queries_lazy = queries.lazy().select(pl.col(KEY).cast(pl.String), pl.col(AS_OF).cast(pl.Int64)).unique()
    contribs_lazy = contribs.lazy().select([pl.col(c).cast(t) for c, t in contribution_schema(group).items()])
    if len(as_of_values) == 1:
        result = _single_as_of(contribs_lazy, queries_lazy, group, as_of_values.pop())
    else:
        joined = queries_lazy.join(contribs_lazy, on=KEY, how="left")
        lookback = window_mask(group.lookback_us)
        aggs = [aggregate_expr(f, window_mask(f.window_us)) for f in group.features]
        aggs.append(pl.col(TS).filter(lookback.fill_null(False)).max().alias(LAST_UPDATE))
        result = joined.group_by(KEY, AS_OF).agg(aggs)
    if group.derived:
        result = result.with_columns([derived_expr(d) for d in group.derived])
    result = result.select(KEY, AS_OF, *group.feature_names, LAST_UPDATE).sort(KEY, AS_OF)
    return result if lazy else result.collect()


def _reached(contribs: pl.DataFrame, queries: pl.DataFrame, group: GroupDef) -> pl.DataFrame:
    """The contributions inside the lookback window of at least one query of their key (no other can
    change an answer). An event is inside some query's window exactly when it is inside the window of
    its key's first query at or after it, so one as-of join decides it."""
    if contribs.is_empty() or queries.is_empty():
        return contribs
    asked = queries.select(pl.col(KEY).cast(pl.String), pl.col(AS_OF).cast(pl.Int64)).unique().sort(AS_OF)
    events = contribs.with_columns(pl.col(KEY).cast(pl.String)).sort(TS)
    nearest = events.join_asof(asked, left_on=TS, right_on=AS_OF, by=KEY, strategy="forward",
                               check_sortedness=False)
    return nearest.filter(window_mask(group.lookback_us).fill_null(False)).drop(AS_OF)


AXIS = "_axis"  # one time axis for every key: see `rolling_features`
QUERY = "_query"
CODE = "_key_code"
Column = Callable[[GroupDef, str], str]  # (group, feature name) -> its column in a result frame


def _own_name(_group: GroupDef, name: str) -> str:
    return name


def _hashed(column: str) -> pl.Expr:
    """A 64-bit hash of a string column, the cheap stand-in for its dictionary codes: codes ranked from
    it are used only after a check that no two strings met under one hash (`_collide`); where they do,
    the exact codes are taken instead, so no output depends on the hash."""
    return pl.col(column).hash(seed=0x6670)


def _coded(column: str, exact: bool) -> pl.Expr:
    """A string column as integers equal exactly where the strings are: its hash (`_hashed`, checked
    by the caller with `_collide`), or (`exact`) its dictionary codes."""
    return pl.col(column).cast(pl.Categorical).to_physical() if exact else _hashed(column)


def _collide(frame: pl.DataFrame, code: str, text: str) -> bool:
    """Whether two different `text`s share a `code`, in a frame sorted so each code's rows are
    contiguous: then two neighbours have one code and different texts."""
    return bool(frame.select(((pl.col(code) == pl.col(code).shift(1)) & (pl.col(text) != pl.col(text).shift(1)))
                             .any()).item())


def _key_codes(frame: pl.DataFrame, exact: bool) -> pl.DataFrame:
    """Each key as an integer 0..keys-1, ranked from its hash, or (`exact`) from its dictionary code
    (any order serves the axis)."""
    return frame.with_columns((_coded(KEY, exact).rank("dense").cast(pl.Int64) - 1).alias(CODE))


def _axis_fits(frame: pl.DataFrame, groups: Sequence[GroupDef], first: int, last: int) -> bool:
    """Whether every key's stretch fits one 63-bit axis and no key's sums could overflow a 64-bit
    sliding sum (otherwise the per-window aggregation is used). `frame` carries the key codes."""
    stride = _stride(groups, first, last)
    sums = {p.field for g in groups for f in g.features for p in partials_of(f) if p.kind == "sum"}
    def reaches(total: pl.Expr) -> bool:  # some sum field's total reaches 2^62
        return frame.select(pl.max_horizontal(*[total(pl.col(c).cast(pl.Float64)) for c in sums])).item() >= 2.0**62

    # the whole frame's total of magnitudes bounds every key's sum: the per-key sums only when it does not
    too_large = (sums and frame.height and reaches(lambda c: c.abs().sum())
                 and reaches(lambda c: c.sum().over(CODE).max()))
    keys = (frame[CODE].max() + 1) if frame.height else 0  # type: ignore[operator]
    return not too_large and (keys + 1) * stride < 2**63 - 1  # every axis value and axis + window fit


def _stride(groups: Sequence[GroupDef], first: int, last: int) -> int:
    return last - first + max(f.window_us for g in groups for f in g.features) + 1


def _axis_sorted(frame: pl.DataFrame, groups: Sequence[GroupDef], at: pl.Expr, first: int, last: int
                 ) -> pl.DataFrame | None:
    """`frame` with key codes and its `AXIS` (key code x stride + time), sorted along it; None when the
    axis does not fit (`_axis_fits`)."""
    for exact in (False, True):
        coded = _key_codes(frame, exact)
        if not _axis_fits(coded, groups, first, last):
            return None
        on_axis = coded.with_columns((pl.col(CODE) * _stride(groups, first, last) + (at - first)).alias(AXIS)
                                     ).sort(AXIS)
        if exact or not _collide(on_axis, CODE, KEY):
            return on_axis
    raise AssertionError("unreachable: the exact codes never collide")


def _on_axis(frame: pl.DataFrame, groups: Sequence[GroupDef], column: Column, lookback_us: int | None
             ) -> pl.DataFrame:
    """`frame` (sorted along the axis) with every group's features as of each row, each named
    `column(group, feature)`. A partial shared by several features (of one group or of several groups
    of the key type, same kind, field, condition and window) is computed once. With `lookback_us`, also
    the latest event time within it (`LAST_UPDATE`)."""
    names: dict[tuple[Partial, int], str] = {}
    sliding: list[pl.Expr] = []
    distinct: list[pl.Series] = []
    for group in groups:
        for feature in group.features:
            for partial in partials_of(feature):
                if (partial, feature.window_us) in names:
                    continue
                name = names[(partial, feature.window_us)] = f"_p{len(names)}"
                if partial.kind == "distinct":
                    distinct.append(_rolling_distinct(frame, partial, feature.window_us).alias(name))
                else:
                    sliding.append(_rolling_partial(partial, feature.window_us).alias(name))
    if lookback_us is not None:
        sliding.append(pl.col(TS).rolling_max_by(AXIS, f"{lookback_us}i", closed="right").alias(LAST_UPDATE))
    frame = frame.with_columns(*sliding, *distinct)
    finals = [finalize_expr(f, [pl.col(names[(p, f.window_us)]) for p in partials_of(f)]).alias(column(g, f.name))
              for g in groups for f in g.features]
    frame = frame.with_columns(finals).drop(names.values())
    derived = [derived_expr(d, lambda n, g=g: column(g, n)).alias(column(g, d.name)) for g in groups for d in g.derived]
    return frame.with_columns(derived) if derived else frame


def _point_on_axis(contribs: pl.DataFrame, queries: pl.DataFrame, group: GroupDef) -> pl.DataFrame | None:
    """point_features on the axis of `rolling_features`: each query is a row without values at its
    as-of time, so the sliding partials ending there are exactly its windows. None when the axis
    does not fit (the caller aggregates per query instead)."""
    schema = contribution_schema(group)
    events = contribs.select([pl.col(c).cast(t) for c, t in schema.items()]).with_columns(
        pl.lit(None, pl.Int64).alias(AS_OF), pl.lit(False).alias(QUERY))
    asked = queries.select(pl.col(KEY).cast(pl.String), pl.col(AS_OF).cast(pl.Int64)).unique()
    if asked.is_empty():
        return None
    longest = max(f.window_us for f in group.features)
    first = min(asked[AS_OF].min() - longest, events[TS].min() if events.height else asked[AS_OF].min())
    last = max(asked[AS_OF].max(), events[TS].max() if events.height else asked[AS_OF].max())
    rows = pl.concat([events, asked.with_columns(
        *[pl.lit(None, t).alias(c) for c, t in schema.items() if c != KEY], pl.lit(True).alias(QUERY)
    ).select(events.columns)])
    on_axis = _axis_sorted(rows, [group], pl.coalesce(TS, AS_OF), first, last)  # type: ignore[arg-type]
    if on_axis is None:
        return None
    answered = _on_axis(on_axis, [group], _own_name, group.lookback_us).filter(pl.col(QUERY))
    return answered.select(KEY, AS_OF, *group.feature_names, LAST_UPDATE).sort(KEY, AS_OF)


def rolling_features(contribs: pl.DataFrame, group: GroupDef, row_id: str) -> pl.DataFrame:
    """Features as of each contribution's own event time (inclusive of events at the same instant).

    `contribs` carries a unique `row_id` column; the result has `row_id`, the features and
    `last_update_us` (which, as of its own time, is that time). One group of `key_rolling_features`.
    """
    out = key_rolling_features(contribs, [group], row_id)
    return out.with_columns(pl.col(TS).alias(LAST_UPDATE)).select(row_id, *group.feature_names, LAST_UPDATE)


def key_rolling_features(contribs: pl.DataFrame, groups: Sequence[GroupDef], row_id: str,
                         column: Column = _own_name) -> pl.DataFrame:
    """Every group's features (groups of one key type, `contribs` carrying the fields of all of them)
    as of each contribution's own event time: `row_id`, the event time and `column(group, feature)`
    for each feature, in no particular row order.

    Every key's events are laid out on its own stretch of one time axis (key code x stride + ts),
    the stretches further apart than the longest window, so a single sliding pass over the axis
    serves every key at once: count and sum as sliding sums, max as a sliding max, distinct by the
    interval rule of `_rolling_distinct`, all with the algebra's window `T - w < ts <= T` and every
    row at T inside. When the axis would not fit in 64 bits, or a key's amounts could overflow a
    64-bit sliding sum, each window is aggregated on its own instead (`_rolling_by_window`).
    """
    on_axis = None
    if contribs.height:
        first, last = contribs[TS].min(), contribs[TS].max()
        on_axis = _axis_sorted(contribs, groups, pl.col(TS), first, last)  # type: ignore[arg-type]
    if on_axis is None:
        frame = contribs.sort(KEY, TS)
        parts = [_rolling_by_window(frame, g, row_id, column) for g in groups]
        return pl.concat([frame.select(row_id, TS), *[p.drop(row_id) for p in parts]], how="horizontal")
    names = [column(g, n) for g in groups for n in g.feature_names]
    return _on_axis(on_axis, groups, column, None).select(row_id, TS, *names)


def _rolling_partial(partial: Partial, width_us: int) -> pl.Expr:
    """A count, sum or max partial over the window ending at each row, along the axis."""
    cond = condition_expr(partial.where, pl.col(TS).is_not_null()).fill_null(False)
    period = f"{width_us}i"
    if partial.kind == "count":
        return cond.cast(pl.Int64).rolling_sum_by(AXIS, period, closed="right")
    values = pl.when(cond).then(pl.col(partial.field).cast(pl.Int64))
    if partial.kind == "sum":  # exact: the caller checked that no key's total reaches 2^62
        total = values.fill_null(0).rolling_sum_by(AXIS, period, closed="right")
        return pl.min_horizontal(total, pl.lit(SUM_CAP, pl.Int64))
    return values.rolling_max_by(AXIS, period, closed="right")


def _rolling_distinct(frame: pl.DataFrame, partial: Partial, width_us: int) -> pl.Series:
    """Distinct non-null values of `partial.field` in each row's window; `frame` is in axis order.

    An occurrence at ts of a value whose next occurrence (same key) is at next_ts is the value's
    latest occurrence for every T in [ts, next_ts), and lies in T's window while T < ts + w. So it
    counts for T in [ts, min(next_ts, ts + w)); the distinct count at T is the number of such
    intervals started at or before T minus those ended at or before T. On the axis every interval
    of an earlier key has both started and ended, so the counts need no key: the started ones are a
    running count in axis order, the ended ones one sorted search. Nor does the next occurrence: the
    next one of the same value on the axis is under the same key or lies in a later key's stretch,
    beyond ts + w, where the window's end is taken instead.
    """
    field = partial.field
    assert field is not None
    cond = condition_expr(partial.where, pl.col(field).is_not_null()).fill_null(False)
    occurrences = frame.filter(cond).select(AXIS, field)
    for exact in (False, True):  # values by hash, unless two of them share one (`_collide`)
        value = _coded(field, exact).alias("_value")
        # a stable sort by value keeps axis order within each value: each occurrence, then its next
        by_value = occurrences.with_columns(value).sort("_value", maintain_order=True)
        if exact or not _collide(by_value, "_value", field):
            break
    following = pl.when(pl.col("_value") == pl.col("_value").shift(-1)).then(pl.col(AXIS).shift(-1))
    ends = by_value.select(pl.min_horizontal(following, pl.col(AXIS) + width_us)).to_series().sort()
    # started by each row's instant: the running count, as it stands at the last row of that instant
    last_at_instant = (pl.col(AXIS) != pl.col(AXIS).shift(-1)).fill_null(True)
    started = frame.select(pl.when(last_at_instant).then(cond.cast(pl.Int64).cum_sum()).backward_fill()).to_series()
    return started - ends.search_sorted(frame[AXIS], side="right").cast(pl.Int64)


def _rolling_by_window(frame: pl.DataFrame, group: GroupDef, row_id: str, column: Column = _own_name
                       ) -> pl.DataFrame:
    """Every window aggregated on its own (for keys whose sums could overflow a sliding sum): `row_id`
    and the group's features named `column(group, feature)`, in the row order of `frame` (sorted by
    key and time)."""
    out = frame.select(row_id, KEY, TS)
    every_row = pl.col(TS).is_not_null()
    for width in sorted({f.window_us for f in group.features}):
        members = [f for f in group.features if f.window_us == width]
        rolled = frame.rolling(TS, period=f"{width}i", closed="right", group_by=KEY).agg(
            [aggregate_expr(f, every_row) for f in members]
        )
        # rows at the same (key, instant) share one window, so (key, ts) identifies the values
        out = out.join(rolled.unique([KEY, TS]), on=[KEY, TS], how="left", maintain_order="left")
    if group.derived:
        out = out.with_columns([derived_expr(d) for d in group.derived])
    return out.select(row_id, *[pl.col(n).alias(column(group, n)) for n in group.feature_names])
