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

from functools import cache

import polars as pl

from featureplane.pipelines.algebra import Partial, edge_spans, partials_of, window_bounds
from featureplane.pipelines.features import (
    KEY,
    TS,
    partial_expr,
)
from featureplane.pipelines.registry import FeatureDef, GroupDef

BUCKET = "bucket"


def uses_buckets(feature: FeatureDef, width_us: int) -> bool:
    return feature.agg != "count_distinct" and feature.window_us >= 2 * width_us


LAST_TS = Partial("max", TS, None)


@cache  # pure, and asked several times for every hot-key group served
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
    """(lo, hi] ranges of event time whose raw rows the bucketed evaluation needs at `as_of_us`: the
    two edges (`algebra.edge_spans`) of every bucketed window and the whole of every raw window,
    merged where they touch."""
    needs = [(f.window_us, uses_buckets(f, width_us)) for f in group.features]
    needs.append((group.lookback_us, group.lookback_us >= 2 * width_us))
    spans: list[tuple[int, int]] = []
    for width, bucketed in needs:
        spans += edge_spans(as_of_us, width, width_us) if bucketed else [window_bounds(as_of_us, width)]
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


__all__ = ["BUCKET", "Partial", "bucket_partials", "bucket_plan", "partial_columns", "raw_intervals",
           "uses_buckets"]
