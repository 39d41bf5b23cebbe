"""Exact time buckets for hot keys: pre-aggregated partials for the interior of a window, raw
events only at its two edges.

For a window (T - w, T] and bucket width b, bucket k covers [k*b, (k+1)*b). The buckets wholly
inside the window are k_lo..k_hi with k_lo = ceil((T - w + 1) / b) and
k_hi = floor((T + 1) / b) - 1; every other event of the window lies in one of the two edges,
(T - w, k_lo*b) and [(k_hi+1)*b, T], each shorter than b. count, sum, max and mean decompose
over that split exactly (integer sums, max of maxes, mean = total sum / total count), so the
result equals `point_features` bit for bit. count_distinct does not decompose: such features,
and windows shorter than two buckets, are computed from raw events.
"""

from __future__ import annotations

import polars as pl

from pipelines.algebra import Partial, partials_of
from pipelines.features import (
    AS_OF,
    KEY,
    LAST_UPDATE,
    SUM_CAP,
    TS,
    aggregate_expr,
    contribution_schema,
    derived_expr,
    mean_of,
    partial_expr,
    saturating_add,
    window_mask,
)
from pipelines.registry import FeatureDef, GroupDef

BUCKET = "bucket"


def uses_buckets(feature: FeatureDef, width_us: int) -> bool:
    return feature.agg != "count_distinct" and feature.window_us >= 2 * width_us


LAST_TS = Partial("max", TS, None)


def bucket_plan(group: GroupDef, width_us: int) -> tuple[Partial, ...]:
    """The distinct partials a group's buckets store (in a fixed order), always ending with the
    latest event time (for freshness)."""
    plan: list[Partial] = []
    for feature in group.features:
        if uses_buckets(feature, width_us):
            plan.extend(p for p in partials_of(feature) if p not in plan)
    return (*plan, LAST_TS)


def partial_columns(group: GroupDef, width_us: int) -> list[str]:
    return [f"p{i}" for i in range(len(bucket_plan(group, width_us)))]


def describe_plan(plan: tuple[Partial, ...]) -> str:
    def one(p: Partial) -> str:
        condition = "" if p.where is None else f" if {p.where.field} {p.where.op} {p.where.value}"
        return f"{p.kind}({p.field or '*'}{condition})"

    return ";".join(one(p) for p in plan)


def bucket_partials(contribs: pl.DataFrame, group: GroupDef, width_us: int,
                    by: tuple[str, ...] = ()) -> pl.DataFrame:
    """Partials per (*by, key_id, bucket) of a set of contributions: columns *by, key_id, bucket, p0..pn."""
    plan = bucket_plan(group, width_us)
    every = pl.col(TS).is_not_null()
    return (
        contribs.lazy()
        .with_columns((pl.col(TS) // width_us).alias(BUCKET))
        .group_by(*by, KEY, BUCKET)
        .agg([partial_expr(p, every).cast(pl.Int64).alias(f"p{i}") for i, p in enumerate(plan)])
        .sort(*by, KEY, BUCKET)
        .collect()
    )


def raw_intervals(group: GroupDef, as_of_us: int, width_us: int) -> list[tuple[int, int]]:
    """(lo, hi] ranges of event time whose raw rows the bucketed evaluation needs at `as_of_us`:
    the right edge, the left edge of every bucketed window, and the whole of every raw window."""
    spans: list[tuple[int, int]] = [(as_of_us - width_us, as_of_us)]
    needs = [(f.window_us, uses_buckets(f, width_us)) for f in group.features]
    needs.append((group.lookback_us, group.lookback_us >= 2 * width_us))
    for width, bucketed in needs:
        spans.append((as_of_us - width, as_of_us - width + width_us if bucketed else as_of_us))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def bucket_range(group: GroupDef, as_of_us: int, width_us: int) -> tuple[int, int]:
    """Inclusive bucket indexes that may be interior to some window of the group."""
    longest = max(group.lookback_us, *(f.window_us for f in group.features))
    return (as_of_us - longest + 1 + width_us - 1) // width_us, (as_of_us + 1) // width_us - 1


def _bounds(width: int, width_us: int) -> tuple[pl.Expr, pl.Expr]:
    k_lo = (pl.col(AS_OF) - width + 1 + width_us - 1) // width_us
    k_hi = (pl.col(AS_OF) + 1) // width_us - 1
    return k_lo, k_hi


def _edge_mask(width: int, width_us: int) -> pl.Expr:
    k_lo, k_hi = _bounds(width, width_us)
    return window_mask(width) & ((pl.col(TS) < k_lo * width_us) | (pl.col(TS) >= (k_hi + 1) * width_us))


def _interior_mask(width: int, width_us: int) -> pl.Expr:
    k_lo, k_hi = _bounds(width, width_us)
    return (pl.col(BUCKET) >= k_lo) & (pl.col(BUCKET) <= k_hi)


def point_features_bucketed(raw: pl.DataFrame, buckets: pl.DataFrame, queries: pl.DataFrame, group: GroupDef,
                            width_us: int, lazy: bool = False) -> pl.DataFrame | pl.LazyFrame:
    """Same result as `point_features(all contributions, queries, group)`, from the raw rows in
    `raw_intervals` and the stored bucket partials (columns key_id, bucket, p0..pn)."""
    plan = bucket_plan(group, width_us)
    index = {p: f"p{i}" for i, p in enumerate(plan)}
    queries = queries.select(pl.col(KEY).cast(pl.String), pl.col(AS_OF).cast(pl.Int64)).unique()
    raw_aggs: list[pl.Expr] = []
    bucket_aggs: list[pl.Expr] = []
    combine: list[pl.Expr] = []
    for f in group.features:
        if not uses_buckets(f, width_us):
            raw_aggs.append(aggregate_expr(f, window_mask(f.window_us)))
            combine.append(pl.col(f.name))
            continue
        edge, inner = _edge_mask(f.window_us, width_us), _interior_mask(f.window_us, width_us).fill_null(False)
        for i, partial in enumerate(partials_of(f)):
            name = f"{f.name}__{i}"
            raw_aggs.append(partial_expr(partial, edge).alias(name))
            column = pl.col(index[partial]).filter(inner)
            # interior partials are each <= SUM_CAP and at most a few hundred: their plain sum fits Int64
            merged = column.max() if partial.kind == "max" else pl.min_horizontal(column.sum(), SUM_CAP)
            bucket_aggs.append(merged.alias(f"{name}_b"))
        if f.agg == "max":
            combine.append(pl.max_horizontal(f"{f.name}__0", f"{f.name}__0_b").alias(f.name))
        elif f.agg == "mean":
            count = pl.col(f"{f.name}__0") + pl.col(f"{f.name}__0_b")
            total = saturating_add(pl.col(f"{f.name}__1"), pl.col(f"{f.name}__1_b"))
            combine.append(mean_of(total, count).alias(f.name))
        else:
            combine.append(saturating_add(pl.col(f"{f.name}__0"), pl.col(f"{f.name}__0_b")).alias(f.name))
    lookback = group.lookback_us
    if lookback >= 2 * width_us:
        raw_aggs.append(pl.col(TS).filter(_edge_mask(lookback, width_us).fill_null(False)).max().alias("_last"))
        inner = _interior_mask(lookback, width_us).fill_null(False)
        bucket_aggs.append(pl.col(index[LAST_TS]).filter(inner).max().alias("_last_b"))
        combine.append(pl.max_horizontal("_last", "_last_b").alias(LAST_UPDATE))
    else:
        raw_aggs.append(pl.col(TS).filter(window_mask(lookback).fill_null(False)).max().alias(LAST_UPDATE))
        combine.append(pl.col(LAST_UPDATE))
    typed_raw = raw.lazy().select([pl.col(c).cast(t) for c, t in contribution_schema(group).items()])
    raw_part = queries.lazy().join(typed_raw, on=KEY, how="left").group_by(KEY, AS_OF).agg(raw_aggs)
    schema = {KEY: pl.String(), BUCKET: pl.Int64(), **{c: pl.Int64() for c in index.values()}}
    bucket_frame = buckets.select([pl.col(c).cast(t) for c, t in schema.items()])
    bucket_part = queries.lazy().join(bucket_frame.lazy(), on=KEY, how="left").group_by(KEY, AS_OF).agg(bucket_aggs)
    result = raw_part.join(bucket_part, on=[KEY, AS_OF], how="left").with_columns(
        [pl.col(c).fill_null(0) for c in _additive_columns(group, width_us)]
    ).with_columns(combine)
    if group.derived:
        result = result.with_columns([derived_expr(d) for d in group.derived])
    result = result.select(KEY, AS_OF, *group.feature_names, LAST_UPDATE).sort(KEY, AS_OF)
    return result if lazy else result.collect()


def _additive_columns(group: GroupDef, width_us: int) -> list[str]:
    out = []
    for f in group.features:
        if uses_buckets(f, width_us):
            for i, partial in enumerate(partials_of(f)):
                if partial.additive:
                    out += [f"{f.name}__{i}", f"{f.name}__{i}_b"]
    return out


__all__ = ["BUCKET", "Partial", "bucket_partials", "bucket_plan", "bucket_range", "partial_columns",
           "point_features_bucketed", "raw_intervals", "uses_buckets"]
