"""The one aggregation algebra: per kind a partial, a merge and a finalize; one window rule.

Every execution is generated from this module: the polars expressions of datasets and parity
(`pipelines.features`), the SQL that serving runs inside Postgres (`pipelines.serving_sql`), and the
hot-key bucket partials (`pipelines.buckets`). A rule written here is written nowhere else.

Kinds and their partials:
  count           [count]                         merge: add        finalize: count
  sum             [sum, saturating at SUM_CAP]    merge: add, cap   finalize: sum (>= SUM_CAP: out of range)
  max             [max]                           merge: max        finalize: max (null when empty)
  mean            [count, sum]                    merge: as above   finalize: float(sum) / count, null when empty
  count_distinct  [distinct]                      (exact; over buckets by its own rule, below)
  ratio (derived) finalize over two finished features: float(num) / float(den), null when den = 0

Window rule: an event at `ts` is in the window of width `w` as of `T` when `T - w < ts <= T`. Over
buckets of width b a window is its interior buckets and two edges shorter than b (`edge_spans`); with
a finer level f the edges are fine buckets and raw spans shorter than f (`split_edges`).

count_distinct over buckets. Distinct values do not add up across buckets, but occurrences do once
each knows its previous occurrence: with `prev(p)` the time of the latest earlier occurrence of p's
value under p's key, the distinct values of (lo, hi] are the occurrences p in it with prev(p) <= lo
(none counts as -infinity). For an interior bucket k the test is settled by the bucket distance
e = bucket(p) - bucket(prev(p)), except when prev(p) lies in the bucket L = k_lo - 1 that holds lo:
  distinct = sum over interior k of #{p in k : e >= k - k_lo + 2}      (stored suffix counts)
           + #{p interior : L*b <= prev(p) <= lo}                       (raw, at most one bucket)
           + #{p in the edges : prev(p) <= lo}                          (raw, at most two buckets)
A distance beyond `distinct_reach` is stored as out of reach: such a p counts in every window
that holds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from featureplane.pipelines.registry import DerivedDef, FeatureDef, Where

SUM_CAP = 2**53  # sums saturate here: amounts are >= 0, so a sum at the cap is beyond 2^53 - 1 (SPEC §4)
MAX_EXACT_INT = SUM_CAP - 1  # the largest integer RFC 8785 carries exactly
OUT_OF_RANGE = float("nan")  # what a mean or ratio of an out-of-range sum finalizes to (served null)


# -- the window rule ---------------------------------------------------------------------------
def in_window(ts_us: int, as_of_us: int, width_us: int) -> bool:
    """T - w < ts <= T."""
    return as_of_us - width_us < ts_us <= as_of_us


def window_bounds(as_of_us: int, width_us: int) -> tuple[int, int]:
    """(lo, hi] of event time a window covers."""
    return as_of_us - width_us, as_of_us


def interior_buckets(as_of_us: int, width_us: int, bucket_us: int) -> tuple[int, int]:
    """Inclusive bucket indexes wholly inside the window; bucket k covers [k*b, (k+1)*b).

    k_lo = ceil((T - w + 1) / b), k_hi = floor((T + 1) / b) - 1; every other event of the window
    lies in one of the two edges (T - w, k_lo*b) and [(k_hi+1)*b, T], each shorter than b."""
    return (as_of_us - width_us + bucket_us) // bucket_us, (as_of_us + 1) // bucket_us - 1


def edge_spans(as_of_us: int, width_us: int, bucket_us: int) -> list[tuple[int, int]]:
    """The (lo, hi] spans of the window outside its interior buckets."""
    k_lo, k_hi = interior_buckets(as_of_us, width_us, bucket_us)
    lo, hi = window_bounds(as_of_us, width_us)
    if k_lo > k_hi:
        return [(lo, hi)]
    return [(lo, k_lo * bucket_us - 1), ((k_hi + 1) * bucket_us - 1, hi)]


def split_edges(as_of_us: int, width_us: int, bucket_us: int, fine_us: int | None
                ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The edges of a bucketed window split once more at a finer width: (inclusive fine bucket ranges
    wholly inside the edges, the raw (lo, hi] spans left over: each shorter than a fine bucket, or
    than two when its edge holds no whole fine bucket). Without a fine width the edges stay raw.
    Interior, fine ranges and raw spans are disjoint and cover the window, so every mergeable partial
    is exact over the three."""
    edges = edge_spans(as_of_us, width_us, bucket_us)
    if fine_us is None:
        return [], edges
    ranges: list[tuple[int, int]] = []
    raw: list[tuple[int, int]] = []
    for lo, hi in edges:
        j_lo, j_hi = interior_buckets(hi, hi - lo, fine_us)
        if j_lo <= j_hi:
            ranges.append((j_lo, j_hi))
        raw += edge_spans(hi, hi - lo, fine_us)
    return ranges, raw


def distinct_reach(window_us: int, bucket_us: int) -> int:
    """The largest bucket distance a count_distinct window of width `window_us` can test: farther
    previous occurrences lie before the start of every window that holds the occurrence."""
    return window_us // bucket_us + 1


def link_distance(ts_us: int, prev_us: int | None, bucket_us: int, reach: int) -> int | None:
    """Buckets from an occurrence back to its previous one; None when there is none within `reach`."""
    if prev_us is None:
        return None
    distance = ts_us // bucket_us - prev_us // bucket_us
    return distance if distance <= reach else None


# -- partials --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Partial:
    """One partial aggregate: `kind` over `field` of the rows where `where` holds."""

    kind: str  # "count" | "sum" | "max" | "distinct"
    field: str | None
    where: Where | None

    @property
    def mergeable(self) -> bool:
        return self.kind != "distinct"

    @property
    def additive(self) -> bool:
        """Merged by addition (count, sum), rather than by max."""
        return self.kind in ("count", "sum")

    def merge(self, left: int | None, right: int | None) -> int | None:
        if left is None:
            return right
        if right is None:
            return left
        if self.kind == "max":
            return max(left, right)
        if self.kind == "sum":
            return min(left + right, SUM_CAP)
        if self.kind == "count":
            return left + right
        raise ValueError("distinct partials do not merge")

    def empty(self) -> int | None:
        """The partial of no rows."""
        return None if self.kind == "max" else 0


@cache  # pure, and asked for every feature of every request served
def partials_of(feature: FeatureDef) -> tuple[Partial, ...]:
    if feature.agg == "count":
        return (Partial("count", None, feature.where),)
    if feature.agg == "sum":
        return (Partial("sum", feature.field, feature.where),)
    if feature.agg == "max":
        return (Partial("max", feature.field, feature.where),)
    if feature.agg == "mean":
        return (Partial("count", None, feature.where), Partial("sum", feature.field, feature.where))
    return (Partial("distinct", feature.field, feature.where),)


def matches(where: Where | None, row: dict) -> bool:
    if where is None:
        return True
    value = row.get(where.field)
    return value == where.value if where.op == "equal" else (value is not None and value != where.value)


# -- finalize --------------------------------------------------------------------------------
def finalize(feature: FeatureDef, values: Sequence[int | None]) -> int | float | None:
    """A feature's value from its partials (in `partials_of` order)."""
    if feature.agg in ("count", "sum", "max", "count_distinct"):
        return values[0]
    count, total = values
    if not count:
        return None
    if total is not None and total >= SUM_CAP:
        return OUT_OF_RANGE
    return float(total or 0) / float(count)


def finalize_derived(derived: DerivedDef, features: dict[str, int | float | None]) -> float | None:
    num, den = features[derived.numerator], features[derived.denominator]
    if den is None or num is None or den == 0:
        return None
    if out_of_range(num) or out_of_range(den):
        return OUT_OF_RANGE
    return float(num) / float(den)


def out_of_range(value: object) -> bool:
    """A value with no exact JSON form (SPEC §4): an integer beyond 2^53 - 1, or the NaN a mean or
    ratio takes when it is computed from such a sum."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value > MAX_EXACT_INT
    return isinstance(value, float) and value != value


def evaluate_rows(features: Sequence[FeatureDef], derived: Sequence[DerivedDef], rows: Sequence[dict],
                  as_of_us: int, ts_field: str = "ts_us") -> dict[str, int | float | None]:
    """The plain-Python execution of the algebra over one key's rows (a reference for every backend)."""
    out: dict[str, int | float | None] = {}
    for feature in features:
        values = []
        for partial in partials_of(feature):
            inside = [r for r in rows if in_window(r[ts_field], as_of_us, feature.window_us)
                      and matches(partial.where, r)]
            if partial.kind == "count":
                values.append(len(inside))
            elif partial.kind == "sum":
                values.append(min(sum(r[partial.field] for r in inside), SUM_CAP))
            elif partial.kind == "max":
                values.append(max((r[partial.field] for r in inside), default=None))
            else:
                values.append(len({r[partial.field] for r in inside if r[partial.field] is not None}))
        out[feature.name] = finalize(feature, values)
    for d in derived:
        out[d.name] = finalize_derived(d, out)
    return out
