"""`fp demo`: the main job end to end on the embedded default, with a readable summary.

simulate -> publish -> workers (OFP, archive) -> serve a batch of requests -> build a dataset
-> parity -> a duckdb query over the lakes -> the HTML report (`fp report`), and a summary table.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from featureplane.pipelines.canonical import sha256_ref
from featureplane.runtime.app import App
from featureplane.runtime.simulation_job import run_simulation


def run_demo(*, transactions: int = 2000, seed: int = 7, requests: int = 200) -> int:
    from featureplane.lake.query import run_query
    from featureplane.offline.ofs import run_intent
    from featureplane.offline.parity import run_parity
    from featureplane.online.serving import FeatureServer
    from featureplane.online.snapshot_store import flush_outbox
    from featureplane.runtime.simulate import SimulationPlan, request_mix
    from featureplane.runtime.workers import run_workers

    console = Console()
    app = App()
    console.rule("featureplane demo")
    console.print(f"profile [bold]{app.settings.profile}[/], FP_HOME {app.settings.home}")
    applied = app.init()
    console.print(f"init: {len(applied)} migrations applied now")
    figures: dict[str, object] = {}

    started = time.perf_counter()
    sim = run_simulation(transactions=transactions, seed=seed, out=None, publish=True,
                         duplicates=0.02, disorder=0.05, progress=True, app=app)
    table = Table(title=f"1. simulate + publish: run {sim['platform_run_id']}")
    for column in ("stream", "published", "duplicates", "rejected", "bus duplicates injected"):
        table.add_column(column)
    for stream, counts in sim["streams"].items():
        table.add_row(stream, str(counts["published"]), str(counts["duplicates"]), str(counts["rejected"]),
                      str(counts["injected_bus_duplicates"]))
    console.print(table)

    with console.status("2. workers: OFP state, archive, audit export"):
        work = run_workers(app, until_idle=True)
    ofp = work["ofp"]
    console.print(f"2. workers: applied [bold]{ofp['applied']}[/] transactions, {ofp['duplicates']} duplicates "
                  f"ignored, {ofp['failures']} apply failures; context plane applied {work['context']['applied']} "
                  f"({work['context']['anomalies']} anomalies); archived {work['archive']['records']} records "
                  f"in {work['archive']['commits']} Delta commits")

    plan = SimulationPlan(seed=seed, transactions=transactions)
    server = FeatureServer(app.db, app.bus, app.registry)
    try:
        responses = [server.get_features(r) for r in request_mix(plan, requests, seed=seed)]
    finally:
        server.close()
    flushed = flush_outbox(app.db, app.store, app.lake)
    ok = [r for r in responses if r["kind"] == "get_features_response"]
    stale = sum(w["code"] == "STALE_GROUP" for r in ok for w in r["provenance"]["warnings"])
    console.print(f"3. serve: {len(ok)}/{len(responses)} requests answered (4 keys x 4 groups), "
                  f"{stale} stale-group warnings, {flushed} snapshots persisted")
    if ok:
        first = ok[0]
        console.print(f"   e.g. {first['snapshot']['feature_snapshot_hash']} at "
                      f"{first['snapshot']['as_of_time_utc']}, basis {first['provenance']['input_basis']}")

    from featureplane.online.context_store import ContextReader

    reader = ContextReader(app.db)
    answers = [reader.resolve(plan.run_id(), plan.pins()["run_id"], f"flow_{seed}_{n:09d}")
               for n in range(1, transactions + 1, max(1, transactions // 100))]
    answers.append(reader.resolve(plan.run_id(), plan.pins()["run_id"], "flow_never_seen"))
    reader.close()
    ready = sum(a["readiness"] == "READY" for a in answers)
    reasons = sorted({code for a in answers for code in a.get("reason_codes", [])})
    console.print(f"3b. context: {ready}/{len(answers)} flows resolved READY to their join frame "
                  f"(reason codes seen: {reasons or 'none'})")
    figures["context_ready"] = f"{ready}/{len(answers)}"

    basis = ok[0]["provenance"]["input_basis"] if ok else None
    manifest = None
    if basis is not None:
        intent = {
            "request_id": f"demo_{seed}_{sha256_ref(basis)[7:19]}", "intent_kind": "dataset_build",
            "context_pins": plan.pins(), "replay_basis": basis,
            "feature_groups": [{"group_name": g.group_name, "group_version": g.group_version}
                               for g in app.registry.all()],
            "label_as_of_utc": "2026-01-10T00:00:00Z",
            "observation_scope": {"ts_from_utc": plan.start_utc, "ts_to_utc": "2026-02-01T00:00:00Z"},
        }
        with console.status("4. dataset build"):
            manifest = run_intent(app, intent)
        labels = manifest["label_counts"]
        console.print(f"4. dataset {manifest['manifest_id']}: [bold]{manifest['row_count']}[/] rows, "
                      f"{len(manifest['columns'])} columns, labels fraud={labels['fraud']} legit={labels['legit']} "
                      f"unlabeled={labels['unlabeled']}")

    with console.status("5. parity"):
        parity = run_parity(app.db, app.store, app.lake, app.registry, run_id=plan.pins()["run_id"])
    console.print(f"5. parity: {parity['matched']}/{parity['checked']} snapshots rebuilt from the archive "
                  f"with the same hash, {parity['mismatched']} mismatched")

    from featureplane.lake.audit import export_audit

    export_audit(app.db, app.lake)
    query = ("SELECT group_name, count(DISTINCT snapshot_hash) AS snapshots, count(*) AS feature_values "
             "FROM snapshot_features GROUP BY group_name ORDER BY group_name")
    answer = run_query(app.lake, app.store, query)
    table = Table(title="6. fp sql: " + query)
    for column in answer["columns"]:
        table.add_column(column)
    for row in answer["rows"]:
        table.add_row(*[str(v) for v in row])
    console.print(table)

    figures.update({
        "transactions_applied_now": ofp["applied"], "snapshots": len(ok), "dataset_rows":
        manifest["row_count"] if manifest else 0, "parity_matched": parity["matched"],
        "parity_checked": parity["checked"], "seconds": round(time.perf_counter() - started, 1)})
    from featureplane.runtime.report_page import write_report

    with console.status("7. report"):
        page, _, _ = write_report(app, app.settings.home / "reports" / "demo.html", run_id=plan.pins()["run_id"])
    console.print(f"7. report: {page} (open it in a browser; `fp report` draws it again at any time)")
    figures["report"] = str(page)
    summary = Table(title="featureplane demo: summary")
    summary.add_column("figure")
    summary.add_column("value")
    for name, value in figures.items():
        summary.add_row(name, str(value))
    console.print(summary)
    from featureplane.runtime.settings import EmbeddedPostgres

    if isinstance(app.settings.postgres, EmbeddedPostgres):
        console.print(f"Still running: the embedded Postgres of FP_HOME={app.settings.home} (for the next fp "
                      "commands). Stop it with `fp down`; `fp status` tells whether it runs.")
    return 0 if parity["mismatched"] == 0 and len(ok) == len(responses) else 1
