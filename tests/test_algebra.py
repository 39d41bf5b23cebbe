"""The algebra itself: its plain-Python execution equals the brute-force reference, and merging the
partials of two disjoint row sets equals the partials of their union (what bucket merges rely on)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from featureplane.config import default_registry
from featureplane.pipelines.algebra import (
    SUM_CAP,
    edge_spans,
    evaluate_rows,
    in_window,
    interior_buckets,
    matches,
    partials_of,
    split_edges,
)
from tests import reference

REGISTRY = default_registry()
H = 3_600_000_000

rows = st.lists(st.fixed_dictionaries({
    "ts_us": st.integers(0, 9 * 24 * H), "account_id": st.sampled_from(["a0", "a1"]),
    "card_id": st.sampled_from(["c0", "c1", "c2"]), "customer_id": st.sampled_from(["u0", "u1"]),
    "merchant_id": st.sampled_from(["m0", "m1"]), "device_id": st.sampled_from([None, "d0"]),
    "amount_minor": st.one_of(st.integers(0, 1000), st.just(2**53 - 1)),
    "channel": st.sampled_from(["ecom", "mobile", "card_present"])}), max_size=60)


@settings(max_examples=150, deadline=None)
@given(rows=rows, as_of=st.integers(0, 10 * 24 * H))
def test_plain_python_execution_equals_the_reference(rows, as_of):
    for group in REGISTRY.all():
        key = rows[0][group.key_field] if rows else "a0"
        mine = [r for r in rows if r[group.key_field] == key]
        got = evaluate_rows(group.features, group.derived, mine, as_of)
        expected, _ = reference.features(rows, f"{group.group_name}@{group.group_version}", key, as_of)
        big = 2**53 - 1
        from_big_sum = {  # a mean or ratio computed from a sum beyond 2^53 - 1 finalizes to NaN
            "txn_amount_mean_1h_minor": (expected.get("txn_amount_sum_1h_minor") or 0) > big,
            "customer_amount_share_1h_of_7d": (expected.get("customer_amount_sum_7d_minor") or 0) > big}
        for name, value in expected.items():
            if isinstance(value, int) and value > big:
                assert got[name] == SUM_CAP  # saturated: served null with VALUE_OUT_OF_RANGE
            elif from_big_sum.get(name):
                assert got[name] != got[name], (group.ref, name)  # NaN
            else:
                assert got[name] == value, (group.ref, name)


@settings(max_examples=150, deadline=None)
@given(rows=rows, split=st.integers(0, 60), as_of=st.integers(0, 10 * 24 * H))
def test_merging_partials_of_disjoint_parts_equals_the_partials_of_the_whole(rows, split, as_of):
    left, right = rows[:split], rows[split:]
    for group in REGISTRY.all():
        for feature in group.features:
            for partial in partials_of(feature):
                if not partial.mergeable:
                    continue

                def value(part, partial=partial, feature=feature):
                    inside = [r for r in part if in_window(r["ts_us"], as_of, feature.window_us)
                              and matches(partial.where, r)]
                    if partial.kind == "count":
                        return len(inside)
                    if partial.kind == "sum":
                        return min(sum(r[partial.field] for r in inside), SUM_CAP)
                    return max((r[partial.field] for r in inside), default=None)

                assert partial.merge(value(left), value(right)) == value(rows)


@given(as_of=st.integers(-10 * 24 * H, 10 * 24 * H), hours=st.integers(2, 200), width=st.sampled_from([1, 2, 5]))
def test_interior_buckets_and_edges_partition_the_window(as_of, hours, width):
    bucket, window = width * H, hours * H
    if window < 2 * bucket:
        return
    k_lo, k_hi = interior_buckets(as_of, window, bucket)
    spans = edge_spans(as_of, window, bucket)
    covered = (k_hi - k_lo + 1) * bucket + sum(hi - lo for lo, hi in spans)
    assert covered == window  # the interior and the two edges cover (T - w, T] exactly, without overlap
    assert spans[0][0] == as_of - window and spans[0][1] == k_lo * bucket - 1
    assert spans[1][0] == (k_hi + 1) * bucket - 1 and spans[1][1] == as_of


@given(as_of=st.integers(-300, 300), window=st.integers(0, 200), width=st.sampled_from([4, 6, 12]),
       fine=st.sampled_from([None, 1, 2, 3]))
def test_a_window_is_its_interior_its_fine_ranges_and_its_raw_spans_each_instant_once(as_of, window, width, fine):
    """Brute force over every instant (µs as units): each one of (T - w, T] lies in exactly one piece,
    and nothing outside it lies in any."""
    if window < 2 * width:
        return
    k_lo, k_hi = interior_buckets(as_of, window, width)
    ranges, raw = split_edges(as_of, window, width, fine)
    for t in range(as_of - window - 30, as_of + 30):
        pieces = (int(k_lo <= t // width <= k_hi)
                  + sum(fine is not None and j_lo <= t // fine <= j_hi for j_lo, j_hi in ranges)
                  + sum(lo < t <= hi for lo, hi in raw))
        assert pieces == int(in_window(t, as_of, window)), t
    assert all(hi - lo < 2 * (fine or width) for lo, hi in raw)  # raw rows: less than two fine buckets each
