"""Hot keys: exact bucketed evaluation equals the raw definition, in pure form and through the
worker and server, including a spec registered (and backfilled) after data was applied."""

from __future__ import annotations

import random

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featureplane.config import default_registry
from featureplane.online.admission import Publisher
from featureplane.online.ofp_worker import OfpWorker
from featureplane.pipelines.buckets import BucketSpec
from featureplane.pipelines.features import TS
from featureplane.schemas.streams import TRAFFIC
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


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), width_hours=st.sampled_from([1, 2, 5]), n=st.integers(0, 250),
       batch=st.integers(7, 300), dups=st.sampled_from([0.0, 0.2]), fine_parts=st.sampled_from([None, 2, 4]))
def test_generated_sql_equals_the_plain_python_reference(pg_server, tmp_path_factory, seed, width_hours, n, batch,
                                                         dups, fine_parts):
    """Serving's generated SQL, raw and bucketed alike (every group bucketed at `width_hours`, with or
    without a fine level of 1/`fine_parts` of it), against tests/reference: random events in disorder,
    producer-retry duplicates, as-of times on and beside bucket and fine bucket edges, empty windows,
    and amounts large enough that sums leave 2^53 - 1."""
    from featureplane.online.serving import FeatureServer
    from featureplane.runtime.app import App
    from featureplane.runtime.settings import load_settings
    from tests.conftest import fresh_database

    rng = random.Random(seed)
    width = width_hours * H
    spec = BucketSpec(width, None if fine_parts is None else width // fine_parts)
    edges = [width, spec.fine_us or width]
    events = []
    for i in range(n):
        ts = T0 + rng.randrange(0, 9 * 24 * H)
        if rng.random() < 0.2:
            edge = rng.choice(edges)
            ts = ts // edge * edge + rng.choice([-1, 0, 1])  # on and next to bucket edges
        events.append(txn(i, ts, account=f"a{rng.randrange(2)}", card=f"c{rng.randrange(3)}",
                          customer=f"u{rng.randrange(2)}", merchant=f"m{rng.randrange(2)}",
                          device=None if rng.random() < 0.2 else f"d{rng.randrange(2)}",
                          amount=2**53 - 1 if rng.random() < 0.01 else rng.randrange(0, 1000),
                          channel=rng.choice(["ecom", "mobile", "card_present"])))
    rng.shuffle(events)
    db = fresh_database(pg_server)
    app = App(load_settings({"FP_HOME": str(tmp_path_factory.mktemp("home")), "FP_PG_DSN": db.dsn.reveal()}))
    app.__dict__["db"] = db
    app.init()
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "p", inject_bus_duplicates=dups)
    OfpWorker(app.db, app.bus, app.registry, batch_size=batch,
              bucketed={g.ref: spec for g in REGISTRY.all()}).run_until_idle()
    flat = [reference.flatten(e) for e in events]
    checked = 0
    server = FeatureServer(app.db, app.bus, app.registry)  # one server: a shape's text is reused across as-of times
    for _ in range(3):
        as_of = T0 + rng.randrange(0, 10 * 24 * H)
        if rng.random() < 0.5:
            edge = rng.choice(edges)
            as_of = as_of // edge * edge + rng.choice([-1, 0, 1])
        keys = [("account", f"a{rng.randrange(2)}"), ("card", f"c{rng.randrange(3)}"),
                ("customer", f"u{rng.randrange(2)}"), ("merchant", f"m{rng.randrange(2)}"),
                ("device", f"d{rng.randrange(2)}")]
        response = server.get_features(request(keys, [g.ref for g in REGISTRY.all()], as_of))
        if not n:
            assert response["error_code"] == "NOT_FOUND"
            continue
        assert "provenance" in response, response
        warned = {(w["key_id"], w["group_name"], w["group_version"]) for w in response["provenance"]["warnings"]
                  if w["code"] == "VALUE_OUT_OF_RANGE"}
        for entry in response["snapshot"]["by_key"]:
            key_id = entry["feature_key"]["key_id"]
            for group in entry["by_group"]:
                ref = group["group"]
                label = f"{ref['group_name']}@{ref['group_version']}"
                expected, _ = reference.features(flat, label, key_id, as_of)
                expected, nulled = _served_form(expected)
                assert group["features"] == expected, (label, key_id, as_of)
                assert ((key_id, ref["group_name"], ref["group_version"]) in warned) == nulled, (label, key_id)
                checked += 1
    server.close()
    assert checked or not n


def _served_form(expected: dict) -> tuple[dict, bool]:
    """SPEC §4 applied by hand to the reference's exact values: an integer beyond 2^53 - 1 is null,
    and so is a mean or ratio computed from such a sum. Returns (values, whether any was nulled)."""
    big = 2**53 - 1
    out = {name: None if isinstance(v, int) and v > big else v for name, v in expected.items()}
    if (expected.get("txn_amount_sum_1h_minor") or 0) > big:
        out["txn_amount_mean_1h_minor"] = None
    if max(expected.get("customer_amount_sum_1h_minor") or 0, expected.get("customer_amount_sum_7d_minor") or 0) > big:
        out["customer_amount_share_1h_of_7d"] = None
    return out, out != expected


@pytest.mark.parametrize(("spec", "most_rows"), [(BucketSpec(3600 * S), 600), (BucketSpec(3600 * S, 300 * S), 60)])
def test_hot_merchant_served_exactly_without_reading_its_window(app, spec, most_rows):
    """Of up to 6000 events in the 7-day window a request reads those of the raw 1 h window (about 36)
    and the edges: up to an hour's worth each, or five minutes' with the fine level."""
    rng = random.Random(4)
    events = [txn(i, T0 + rng.randrange(0, 7 * 24 * 3600) * S, account=f"a{i % 50}", card=f"c{i % 70}",
                  merchant="hot", amount=rng.randrange(1, 500)) for i in range(6000)]
    publisher = Publisher(app.db, app.bus)
    publisher.publish(TRAFFIC, lines(events[:3000]), "t")
    OfpWorker(app.db, app.bus, app.registry).run_until_idle()  # no buckets yet
    publisher.publish(TRAFFIC, lines(events[3000:]), "t")
    OfpWorker(app.db, app.bus, app.registry, batch_size=700,  # registers the spec with a backfill
              bucketed={("merchant_activity", "1.0"): spec}).run_until_idle()
    flat = [reference.flatten(e) for e in events]
    read_rows: list[int] = []
    for as_of in (T0 + 7 * 24 * 3600 * S, T0 + 5 * 24 * 3600 * S + 1, T0 + 36 * 3600 * S - 1):
        response = serve(app, request([("merchant", "hot")], [("merchant_activity", "1.0")], as_of))
        expected, _ = reference.features(flat, "merchant_activity@1.0", "e_merchant_hot", as_of)
        assert response["snapshot"]["by_key"][0]["by_group"][0]["features"] == expected
        read_rows.append(_rows_read(app, "merchant_activity", "e_merchant_hot", as_of, "ofp_events"))
    assert read_rows and 0 < max(read_rows) < most_rows


def _explained(app, group_name: str, key_id: str, as_of: int) -> dict:
    """The executed plan of the generated serving statement for one bucketed (group, key) (EXPLAIN ANALYZE)."""
    from featureplane.online.ofp_state import bucket_specs, register_groups
    from featureplane.pipelines.serving_sql import GroupQuery, plan_serving

    group = app.registry.get(group_name, "1.0")
    with app.db.transaction() as conn:
        ids = register_groups(conn, app.registry)
        width = bucket_specs(conn)[ids[group.ref]]
        scope = conn.execute("SELECT scope_id FROM ofp_scopes").fetchone()[0]
        plan = plan_serving([GroupQuery(group, (key_id,), width)], scope, ids, as_of)
        return conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + plan.sql, plan.params).fetchone()[0][0]["Plan"]


def _nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _rows_read(app, group_name: str, key_id: str, as_of: int, table: str) -> int:
    """Rows the generated serving statement reads from `table`."""
    plan = _explained(app, group_name, key_id, as_of)
    return sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) for n in _nodes(plan)
               if n.get("Relation Name", "").startswith(table))


def test_hot_key_edges_set_up_scans_only_on_the_weeks_they_reach(app):
    """The raw edges of a bucketed group are read per span inside a LATERAL join, whose bounds are known
    only per rescan; the spans' hull, given as parameters too, must keep every weekly partition outside
    the lookback out of the plan (before it, a year of history set up 52 index scans per request)."""
    rng = random.Random(8)
    weeks = 6
    events = [txn(i, T0 + rng.randrange(0, weeks * 7 * 24 * 3600) * S, account=f"a{i % 50}", card=f"c{i % 70}",
                  merchant="hot", amount=rng.randrange(1, 500)) for i in range(3000)]
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "t")
    OfpWorker(app.db, app.bus, app.registry, bucketed={("merchant_activity", "1.0"): 3600 * S}).run_until_idle()
    with app.db.transaction() as conn:
        stored = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'ofp_events'::regclass").fetchone()[0]
    assert stored >= weeks  # the history spans (at least) six weekly partitions
    flat = [reference.flatten(e) for e in events]
    as_of = T0 + 3 * 7 * 24 * 3600 * S + 5 * 3600 * S + 7
    response = serve(app, request([("merchant", "hot")], [("merchant_activity", "1.0")], as_of))
    expected, _ = reference.features(flat, "merchant_activity@1.0", "e_merchant_hot", as_of)
    assert response["snapshot"]["by_key"][0]["by_group"][0]["features"] == expected
    scanned = {n["Relation Name"] for n in _nodes(_explained(app, "merchant_activity", "e_merchant_hot", as_of))
               if n.get("Relation Name", "").startswith("ofp_events_")}
    assert 1 <= len(scanned) <= 2  # a 7-day lookback reaches into two weeks at most


@pytest.mark.parametrize("crowded", [0, 32])
def test_stored_links_and_suffix_counts_equal_a_rebuild_from_scratch(app, monkeypatch, crowded):
    """After batches in disorder (and a spec registered over applied data), every stored link and
    suffix count equals what a brute-force pass over all occurrences gives; with every chain read
    whole between a batch's first and last occurrence, and with each occurrence's neighbours probed."""
    from featureplane.online import distinct_state
    from featureplane.online.ofp_state import register_groups

    monkeypatch.setattr(distinct_state, "CROWDED", crowded)
    from featureplane.pipelines.algebra import link_distance
    from featureplane.pipelines.buckets import distinct_plan

    rng = random.Random(11)
    events = [txn(i, T0 + rng.randrange(0, 10 * 24 * 3600) * S, account=f"a{rng.randrange(6)}",
                  card=f"c{rng.randrange(9)}", device=f"d{rng.randrange(3)}") for i in range(1500)]
    rng.shuffle(events)
    publisher = Publisher(app.db, app.bus)
    publisher.publish(TRAFFIC, lines(events[:400]), "t")
    group = app.registry.get("device_reuse", "1.0")
    width = 2 * H
    OfpWorker(app.db, app.bus, app.registry).run_until_idle()
    publisher.publish(TRAFFIC, lines(events[400:]), "t")
    OfpWorker(app.db, app.bus, app.registry, batch_size=97, bucketed={group.ref: width}).run_until_idle()
    with app.db.transaction() as conn:
        gid = register_groups(conn, app.registry)[group.ref]
        links = {(slot, key, value, ts): prev for slot, key, value, ts, prev in conn.execute(
            "SELECT slot, key_id, value, ts_us, prev_us FROM ofp_links WHERE group_id = %s", (gid,))}
        counts = {(slot, key, bucket): (far, list(fin)) for slot, key, bucket, far, fin in conn.execute(
            "SELECT slot, key_id, bucket, far, fin FROM ofp_distinct_buckets WHERE group_id = %s", (gid,))}
    flat = [reference.flatten(e) for e in events]
    expected_links: dict = {}
    expected_counts: dict = {}
    for slot in distinct_plan(group, width):
        field = slot.partial.field
        chains: dict = {}
        for row in flat:
            if row["device_id"] is not None and row[field] is not None:
                chains.setdefault((row["device_id"], row[field]), set()).add(row[TS])
        for (key, value), times in chains.items():
            ordered = sorted(times)
            for i, ts in enumerate(ordered):
                prev = ordered[i - 1] if i else None
                distance = link_distance(ts, prev, width, slot.reach)
                expected_links[(slot.slot, key, value, ts)] = None if distance is None else prev
                cell = expected_counts.setdefault((slot.slot, key, ts // width), [0, []])
                fin = cell[1]
                if distance is None:
                    cell[0] += 1
                else:
                    fin.extend([0] * (distance - len(fin)))
                    for x in range(distance):
                        fin[x] += 1
    assert links == expected_links
    trimmed = {cell: (far, _trim(fin)) for cell, (far, fin) in counts.items() if far or any(fin)}
    assert trimmed == {cell: (far, _trim(fin)) for cell, (far, fin) in expected_counts.items()}


def _trim(values: list[int]) -> list[int]:
    while values and values[-1] == 0:
        values = values[:-1]
    return values


def test_hot_device_distinct_counts_served_exactly_from_buckets(app):
    """count_distinct over 24 h and 7 d of a device with thousands of events reads only the links at
    the window edges, not the window."""
    rng = random.Random(6)
    events = [txn(i, T0 + rng.randrange(0, 7 * 24 * 3600) * S, account=f"a{i % 700}", card=f"c{i % 900}",
                  device="hot") for i in range(6000)]
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "t")
    OfpWorker(app.db, app.bus, app.registry, batch_size=800,
              bucketed={("device_reuse", "1.0"): 3600 * S}).run_until_idle()
    flat = [reference.flatten(e) for e in events]
    for as_of in (T0 + 7 * 24 * 3600 * S, T0 + 5 * 24 * 3600 * S + 1, T0 + 36 * 3600 * S - 1):
        response = serve(app, request([("device", "hot")], [("device_reuse", "1.0")], as_of))
        expected, _ = reference.features(flat, "device_reuse@1.0", "e_device_hot", as_of)
        assert response["snapshot"]["by_key"][0]["by_group"][0]["features"] == expected
        assert 0 < _rows_read(app, "device_reuse", "e_device_hot", as_of, "ofp_links") < 600  # of up to 6000


def test_a_registered_width_cannot_change_under_servers(app):
    """A group registered for hot keys at one width is refused at another (servers hold the width they
    read), with a reason code that names the fix; the registered width itself still starts."""
    from featureplane.pipelines.errors import TerminalError

    ref = ("card_velocity", "1.0")
    OfpWorker(app.db, app.bus, app.registry, bucketed={ref: 1800 * S})
    with pytest.raises(TerminalError) as refused:
        OfpWorker(app.db, app.bus, app.registry, bucketed={ref: 900 * S})
    assert refused.value.reason_code == "BUCKET_WIDTH_CHANGED"
    assert "1800 s" in refused.value.message and "900 s" in refused.value.message
    OfpWorker(app.db, app.bus, app.registry, bucketed={ref: 1800 * S})
    with pytest.raises(TerminalError) as refused:  # a fine level is part of the registration too
        OfpWorker(app.db, app.bus, app.registry, bucketed={ref: BucketSpec(1800 * S, 300 * S)})
    assert refused.value.reason_code == "BUCKET_WIDTH_CHANGED" and "fine buckets of 300 s" in refused.value.message


@pytest.mark.parametrize("threshold", [1000, 10**9])
def test_a_drain_that_wrote_many_links_vacuums_them_at_once(app, monkeypatch, threshold):
    """Serving reads the links with index-only scans, which want pages marked all-visible: a drain that
    wrote at least SETTLE_AFTER_LINKS links VACUUMs them itself (a manual VACUUM: `last_vacuum`, which
    autovacuum never sets); one that wrote fewer leaves them to autovacuum."""
    from featureplane.online import ofp_worker

    monkeypatch.setattr(ofp_worker, "SETTLE_AFTER_LINKS", threshold)
    rng = random.Random(8)
    events = [txn(i, T0 + rng.randrange(0, 3 * 24 * 3600) * S, account=f"a{i % 300}", card=f"c{i % 400}",
                  device="hot") for i in range(1500)]
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "t")
    stats = OfpWorker(app.db, app.bus, app.registry, batch_size=500,
                      bucketed={("device_reuse", "1.0"): 3600 * S}).run_until_idle()
    assert stats.links >= 2 * 1500  # two distinct slots, one link per occurrence
    with app.db.transaction() as conn:
        vacuumed = [row[0] is not None for row in conn.execute(
            "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname LIKE 'ofp\\_links\\_%' AND n_live_tup > 0")]
    assert vacuumed and all(vacuumed) == (threshold <= stats.links)


def test_a_profile_names_a_width_or_a_width_with_a_fine_level():
    """serving.bucketed_groups values: seconds, or {width, fine} with fine a divisor below the width."""
    from featureplane.runtime.settings import _bucket_spec

    assert _bucket_spec(600) == BucketSpec(600 * S)
    assert _bucket_spec({"width": 600}) == BucketSpec(600 * S)
    assert _bucket_spec({"width": 600, "fine": 60}) == BucketSpec(600 * S, 60 * S)
    for bad in (0, -5, True, "600", 1.5, {"width": 600, "fine": 70}, {"width": 600, "fine": 600},
                {"width": 600, "fine": 0}, {"width": 600, "fine": True}, {"width": 600, "fin": 60}, {"fine": 60}):
        assert _bucket_spec(bad) is None, bad
