"""Hot keys: exact bucketed evaluation equals the raw definition, in pure form and through the
worker and server, including a spec registered (and backfilled) after data was applied."""

from __future__ import annotations

import random

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from config import default_registry
from online.admission import Publisher
from online.ofp_worker import OfpWorker
from pipelines.buckets import bucket_partials, point_features_bucketed, raw_intervals
from pipelines.features import AS_OF, KEY, LAST_UPDATE, TS, contributions, point_features
from schemas.streams import TRAFFIC
from tests import reference
from tests.helpers import T0, S, lines, request, serve, txn

H = 3600 * S
REGISTRY = default_registry()
KEY_PREFIX = {"account_id": "a", "card_id": "c", "customer_id": "u", "merchant_id": "m", "device_id": "d"}


def _frame(rng: random.Random, n: int) -> pl.DataFrame:
    rows = []
    for i in range(n):
        ts = T0 + rng.randrange(0, 9 * 24 * H)
        if rng.random() < 0.2:
            ts = ts // H * H + rng.choice([-1, 0, 1])  # on and next to bucket edges
        rows.append({"partition": 0, "offset": i, "event_id": f"e{i}", TS: ts, "account_id": f"a{rng.randrange(2)}",
                     "card_id": f"c{rng.randrange(3)}", "customer_id": f"u{rng.randrange(2)}",
                     "merchant_id": f"m{rng.randrange(2)}",
                     "device_id": None if rng.random() < 0.2 else f"d{rng.randrange(2)}",
                     "amount_minor": rng.randrange(0, 1000), "channel": rng.choice(["ecom", "mobile", "card_present"])})
    return pl.DataFrame(rows)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), width_hours=st.sampled_from([1, 2, 5]), n=st.integers(0, 400))
def test_bucketed_evaluation_equals_the_definition(seed, width_hours, n):
    rng = random.Random(seed)
    frame = _frame(rng, n)
    width = width_hours * H
    windows_with_data = dict.fromkeys((g.group_name for g in REGISTRY.all()), 0)
    for group in REGISTRY.all():
        contribs = contributions(frame, group) if n else pl.DataFrame(
            schema={KEY: pl.String(), TS: pl.Int64(), **{f: pl.Int64() if f == "amount_minor" else pl.String()
                                                          for f in group.fields}})
        buckets = bucket_partials(contribs, group, width)
        for _ in range(4):
            key = f"{KEY_PREFIX[group.key_field]}{rng.randrange(2)}"
            as_of = T0 + rng.randrange(0, 10 * 24 * H)
            if rng.random() < 0.4:
                as_of = as_of // width * width + rng.choice([-1, 0, 1])
            query = pl.DataFrame({KEY: [key], AS_OF: [as_of]})
            spans = raw_intervals(group, as_of, width)
            inside = pl.lit(False)
            for lo, hi in spans:
                inside = inside | ((pl.col(TS) > lo) & (pl.col(TS) <= hi))
            raw = contribs.filter((pl.col(KEY) == key) & inside)
            expected = point_features(contribs, query, group)
            assert point_features_bucketed(raw, buckets, query, group, width).equals(expected), group.ref
            windows_with_data[group.group_name] += expected[LAST_UPDATE][0] is not None
    if n >= 200:  # the keys asked for are keys that have events: no group is only ever tested empty
        assert all(windows_with_data[g.group_name] for g in REGISTRY.all()), windows_with_data




def test_hot_merchant_served_exactly_without_reading_its_window(app, monkeypatch):
    rng = random.Random(4)
    events = [txn(i, T0 + rng.randrange(0, 7 * 24 * 3600) * S, account=f"a{i % 50}", card=f"c{i % 70}",
                  merchant="hot", amount=rng.randrange(1, 500)) for i in range(6000)]
    publisher = Publisher(app.db, app.bus)
    publisher.publish(TRAFFIC, lines(events[:3000]), "t")
    OfpWorker(app.db, app.bus, app.registry).run_until_idle()  # no buckets yet
    publisher.publish(TRAFFIC, lines(events[3000:]), "t")
    OfpWorker(app.db, app.bus, app.registry, batch_size=700,  # registers the spec with a backfill
              bucketed={("merchant_activity", "1.0"): 3600 * S}).run_until_idle()
    flat = [reference.flatten(e) for e in events]
    read_rows: list[int] = []
    for as_of in (T0 + 7 * 24 * 3600 * S, T0 + 5 * 24 * 3600 * S + 1, T0 + 36 * 3600 * S - 1):
        response = serve(app, request([("merchant", "hot")], [("merchant_activity", "1.0")], as_of))
        expected, _ = reference.features(flat, "merchant_activity@1.0", "e_merchant_hot", as_of)
        assert response["snapshot"]["by_key"][0]["by_group"][0]["features"] == expected
        read_rows.append(_contribution_rows_read(app, "e_merchant_hot", as_of))
    assert read_rows and 0 < max(read_rows) < 600  # of up to 6000 in the 7-day window


def _contribution_rows_read(app, key_id: str, as_of: int) -> int:
    """Rows the generated serving statement reads from ofp_contributions (EXPLAIN ANALYZE)."""
    from online.ofp_state import bucket_specs, register_groups
    from pipelines.serving_sql import GroupQuery, plan_serving

    group = app.registry.get("merchant_activity", "1.0")
    with app.db.transaction() as conn:
        ids = register_groups(conn, app.registry)
        width = bucket_specs(conn)[ids[group.ref]]
        scope = conn.execute("SELECT scope_id FROM ofp_scopes").fetchone()[0]
        plan = plan_serving([GroupQuery(group, (key_id,), width)], scope, ids, as_of)
        explained = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + plan.sql, plan.params).fetchone()[0]

    def walk(node: dict) -> int:
        own = node.get("Actual Rows", 0) * node.get("Actual Loops", 1) \
            if node.get("Relation Name") == "ofp_contributions" else 0
        return own + sum(walk(child) for child in node.get("Plans", []))

    return walk(explained[0]["Plan"])
