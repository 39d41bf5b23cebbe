"""Exact time buckets for hot keys: pre-aggregated partials for the interior of a window, raw
events only at its two edges.

For a window (T - w, T] and bucket width b, bucket k covers [k*b, (k+1)*b). The buckets wholly
inside the window are k_lo..k_hi with k_lo = ceil((T - w + 1) / b) and
k_hi = floor((T + 1) / b) - 1; every other event of the window lies in one of the two edges,
(T - w, k_lo*b) and [(k_hi+1)*b, T], each shorter than b. count, sum, max and mean decompose
over that split exactly (integer sums, max of maxes, mean = total sum / total count), so the
result equals `point_features` bit for bit. count_distinct decomposes by the rule in
`pipelines.algebra` over links to previous occurrences (`relink` keeps them). Windows shorter than
two buckets are computed from raw events.

A group may also keep a finer level (`BucketSpec.fine_us`): the same partials per fine bucket, so the
edges are read as fine buckets plus raw events within less than two fine buckets
(`algebra.split_edges`). A hot key's request then reads about window/width + 2 * width/fine bucket
rows and its rate x 2 * fine raw rows, instead of its rate x 2 * width.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

import polars as pl

from featureplane.pipelines.algebra import (
    Partial,
    distinct_reach,
    link_distance,
    partials_of,
    split_edges,
    window_bounds,
)
from featureplane.pipelines.features import KEY, TS, condition_expr, partial_expr
from featureplane.pipelines.registry import FeatureDef, GroupDef

BUCKET = "bucket"


@dataclass(frozen=True)
class BucketSpec:
    """How a group's hot keys are pre-aggregated: bucket width, and an optional finer level for the
    window edges (a divisor of the width)."""

    width_us: int
    fine_us: int | None = None

    def __post_init__(self) -> None:
        if self.width_us <= 0 or (self.fine_us is not None
                                  and not (0 < self.fine_us < self.width_us and self.width_us % self.fine_us == 0)):
            raise ValueError(f"a bucket width > 0 and a fine width dividing it, below it: {self}")


def uses_buckets(feature: FeatureDef, width_us: int) -> bool:
    return feature.window_us >= 2 * width_us


LAST_TS = Partial("max", TS, None)


@cache  # pure, and asked several times for every hot-key group served
def bucket_plan(group: GroupDef, width_us: int) -> tuple[Partial, ...]:
    """The distinct partials a group's buckets store (in a fixed order), always ending with the
    latest event time (for freshness)."""
    plan: list[Partial] = []
    for feature in group.features:
        if uses_buckets(feature, width_us):
            plan.extend(p for p in partials_of(feature) if p.mergeable and p not in plan)
    return (*plan, LAST_TS)


@dataclass(frozen=True)
class DistinctSlot:
    """A count_distinct partial kept over buckets: its links and suffix counts are stored per slot."""

    slot: int
    partial: Partial
    reach: int  # bucket distances beyond this are stored as out of reach (`algebra.distinct_reach`)


@cache
def distinct_plan(group: GroupDef, width_us: int) -> tuple[DistinctSlot, ...]:
    """The count_distinct partials a group's buckets keep, each reaching as far as its widest window."""
    reach: dict[Partial, int] = {}
    for feature in group.features:
        if uses_buckets(feature, width_us):
            for partial in partials_of(feature):
                if not partial.mergeable:
                    reach[partial] = max(reach.get(partial, 0), distinct_reach(feature.window_us, width_us))
    return tuple(DistinctSlot(i, partial, r) for i, (partial, r) in enumerate(reach.items()))


def distinct_slot(group: GroupDef, width_us: int, partial: Partial) -> DistinctSlot:
    return next(s for s in distinct_plan(group, width_us) if s.partial == partial)


def occurrences(contribs: pl.DataFrame, partial: Partial, by: tuple[str, ...] = ()) -> pl.DataFrame:
    """The distinct (*by, key_id, value, ts_us) at which a count_distinct partial sees a value."""
    field = partial.field
    assert field is not None
    cond = condition_expr(partial.where, pl.col(field).is_not_null()).fill_null(False)
    return (contribs.lazy().filter(cond)
            .select(*by, KEY, pl.col(field).cast(pl.String).alias("value"), TS)
            .unique().sort(*by, KEY, "value", TS).collect())


Chain = tuple[tuple, list[tuple[int, int | None, bool]]]


@dataclass
class Relinked:
    """What adding occurrences to some chains changes: the links to write (new ones, and stored ones
    whose previous occurrence changed) and the suffix-count deltas per (*chain key head, bucket)."""

    links: list[tuple]  # (*chain key, ts_us, prev_us, is_new)
    far: dict[tuple, int]
    fin: dict[tuple, list[int]]


def relink(chains: Iterable[Chain], width_us: int, reach: int) -> Relinked:
    """Relink chains of occurrences of one value under one key.

    Each chain is (chain key, [(ts_us, stored prev_us, is_new), ...]) in time order: every new
    occurrence and, for each, the nearest stored one on either side within reach (stored ones between
    them may be left out). A new occurrence's previous one is its predecessor in the list, when
    within reach. A stored one changes only when its predecessor in the list is new and within
    reach: a stored predecessor, listed or not, is the one it already has; after a new one out of
    reach, its previous occurrence is out of reach or unchanged, whatever lies between. The buckets
    are keyed by the chain key without its value (the last element)."""
    out = Relinked([], {}, {})
    distances: dict[tuple, dict[int, int]] = {}  # per bucket: net links per distance within reach

    def count(head: tuple, ts: int, prev: int | None, sign: int) -> None:
        bucket = (*head, ts // width_us)
        distance = link_distance(ts, prev, width_us, reach)
        if distance is None:
            out.far[bucket] = out.far.get(bucket, 0) + sign
        else:
            tally = distances.setdefault(bucket, {})
            tally[distance] = tally.get(distance, 0) + sign

    for chain, items in chains:
        head = chain[:-1]
        for i, (ts, stored, new) in enumerate(items):
            if not new and (i == 0 or not items[i - 1][2]):
                continue
            prev = items[i - 1][0] if i else None
            if link_distance(ts, prev, width_us, reach) is None:
                if not new:
                    continue
                prev = None
            if not new and prev == stored:
                continue
            out.links.append((*chain, ts, prev, new))
            if not new:
                count(head, ts, stored, -1)
            count(head, ts, prev, +1)
    for bucket, tally in distances.items():  # suffix sums once per bucket: fin[x - 1] = links at distance >= x
        fin = [0] * max(tally)
        running = 0
        for x in range(len(fin), 0, -1):
            running += tally.get(x, 0)
            fin[x - 1] = running
        out.fin[bucket] = fin
    return out


def partial_columns(group: GroupDef, width_us: int) -> list[str]:
    return [f"p{i}" for i in range(len(bucket_plan(group, width_us)))]


def describe_plan(plan: tuple[Partial, ...]) -> str:
    def one(p: Partial) -> str:
        condition = "" if p.where is None else f" if {p.where.field} {p.where.op} {p.where.value}"
        return f"{p.kind}({p.field or '*'}{condition})"

    return ";".join(one(p) for p in plan)


def bucket_partials(contribs: pl.DataFrame, group: GroupDef, width_us: int,
                    by: tuple[str, ...] = (), at_us: int | None = None) -> pl.DataFrame:
    """Partials per (*by, key_id, bucket) of a set of contributions: columns *by, key_id, bucket, p0..pn.
    The plan is that of `width_us`; the buckets are `at_us` wide (the fine level), `width_us` by default."""
    plan = bucket_plan(group, width_us)
    every = pl.col(TS).is_not_null()
    return (
        contribs.lazy()
        .with_columns((pl.col(TS) // (at_us or width_us)).alias(BUCKET))
        .group_by(*by, KEY, BUCKET)
        .agg([partial_expr(p, every).cast(pl.Int64).alias(f"p{i}") for i, p in enumerate(plan)])
        .sort(*by, KEY, BUCKET)
        .collect()
    )


def raw_intervals(group: GroupDef, as_of_us: int, spec: BucketSpec) -> list[tuple[int, int]]:
    """(lo, hi] ranges of event time whose raw rows the bucketed evaluation needs at `as_of_us`: what
    the edges of every bucketed window leave raw (`algebra.split_edges`) and the whole of every raw
    window, merged where they touch."""
    spans: list[tuple[int, int]] = []
    for window, bucketed in _event_windows(group, spec.width_us):
        spans += split_edges(as_of_us, window, spec.width_us, spec.fine_us)[1] if bucketed \
            else [window_bounds(as_of_us, window)]
    return merge_spans(spans)


def fine_ranges(group: GroupDef, as_of_us: int, spec: BucketSpec) -> list[tuple[int, int]]:
    """Inclusive fine bucket ranges the bucketed windows' edges read at `as_of_us`, merged."""
    ranges: list[tuple[int, int]] = []
    for window, bucketed in _event_windows(group, spec.width_us):
        if bucketed:
            ranges += split_edges(as_of_us, window, spec.width_us, spec.fine_us)[0]
    return [(lo + 1, hi) for lo, hi in merge_spans([(lo - 1, hi) for lo, hi in ranges])]


def _event_windows(group: GroupDef, width_us: int) -> list[tuple[int, bool]]:
    """(window, over buckets?) of every window read from events and bucket partials: each feature's but
    the bucketed count_distincts' (those read their links), and the lookback (the last update time)."""
    windows = [(f.window_us, uses_buckets(f, width_us)) for f in group.features
               if f.agg != "count_distinct" or not uses_buckets(f, width_us)]
    return [*windows, (group.lookback_us, group.lookback_us >= 2 * width_us)]


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(lo, hi] spans, sorted, with those that overlap or touch made one."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


__all__ = ["BUCKET", "BucketSpec", "DistinctSlot", "Partial", "Relinked", "bucket_partials", "bucket_plan",
           "distinct_plan", "fine_ranges", "merge_spans", "occurrences", "partial_columns", "raw_intervals", "relink",
           "uses_buckets"]
