"""`fp health`: counters, per-partition lag and watermarks, GREEN/AMBER/RED from profile thresholds."""

from __future__ import annotations

import dataclasses
import json

from featureplane.online.admission import Publisher
from featureplane.online.health import health_report
from featureplane.online.serving import FeatureServer
from featureplane.runtime.workers import run_workers
from featureplane.schemas.streams import TRAFFIC
from tests.helpers import T0, S, lines, request, txn


def test_health_counts_lag_and_grades(app):
    events = [txn(i, T0 + i * S) for i in range(30)]
    Publisher(app.db, app.bus).publish(TRAFFIC, lines(events), "t")
    app.bus.append(TRAFFIC, [("x", b"{broken")])
    app.bus.append(TRAFFIC, [(events[0]["payload"]["flow_id"], json.dumps(events[0]).encode())])
    run_workers(app, until_idle=True)
    server = FeatureServer(app.db, app.bus, app.registry)
    server.get_features(request([("account", "a1")], [("txn_velocity", "1.0")], T0 + 10_000 * S))  # stale
    server.get_features(request([("account", "zz")], [("txn_velocity", "1.0")], T0 + 10 * S))  # no data
    server.close()
    report = health_report(app)
    ofp = report["components"]["ofp_worker"]
    assert (ofp["events_applied"], ofp["duplicates"], ofp["apply_failures"]) == (30, 1, 1)
    assert ofp["lag_records_total"] == 0
    assert {p: d["watermark"] for p, d in ofp["partitions"].items()} == {
        str(p): o for p, o in app.bus.end_offsets(TRAFFIC).items()}
    serving = report["components"]["serving"]
    assert (serving["snapshots_built"], serving["stale_rate"], serving["no_data_rate"]) == (2, 0.5, 0.5)
    assert report["components"]["archive"]["lag_records"][TRAFFIC] == 0
    # 1 failure in 32 records is above the profile's 1% red line
    assert ofp["status"] == "RED" and report["status"] == "RED"

    Publisher(app.db, app.bus).publish(TRAFFIC, lines([txn(100 + i, T0 + i * S) for i in range(5)]), "t")
    app.settings = dataclasses.replace(app.settings, health=dataclasses.replace(
        app.settings.health, lag_records_amber=3, lag_records_red=50, failure_rate_amber=0.5, failure_rate_red=0.9,
        stale_rate_amber=0.9, stale_rate_red=1.0))
    report = health_report(app)
    assert report["components"]["ofp_worker"]["lag_records_total"] == 5
    assert report["components"]["ofp_worker"]["status"] == "AMBER"
    assert report["components"]["archive"]["status"] == "AMBER"
