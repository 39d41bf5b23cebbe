"""The installed distribution and its one entry point, `featureplane.FeaturePlane` (SPEC §9)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl

from featureplane import FeaturePlane
from featureplane.runtime.simulate import SimulationPlan, request_mix, simulate
from featureplane.runtime.simulation_job import run_simulation
from featureplane.runtime.workers import run_workers

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_has_one_top_level_package(tmp_path):
    import shutil

    source = tmp_path / "src"  # built from a copy: a test never writes into the repository
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", ".fp", "build", "*.egg-info",
                                                                 "__pycache__", ".hypothesis", ".ruff_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("featureplane-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"featureplane"}
    for inside in ("featureplane/online/serving.py", "featureplane/runtime/sql/0010_ofp_events.sql",
                   "featureplane/config/feature_groups/registry.lock.json", "featureplane/pipelines/algebra.py",
                   "featureplane/schemas/contracts/envelope.schema.json"):
        assert inside in names


def test_feature_plane_serves_fetches_queries_builds_and_proves(app, fp_home, monkeypatch):
    monkeypatch.setenv("FP_PG_DSN", app.db.dsn.reveal())
    plan = SimulationPlan(seed=4, transactions=300)
    run_simulation(transactions=300, seed=4, out=None, publish=True, progress=False, app=app)
    run_workers(app, until_idle=True)
    requests = request_mix(plan, 5, seed=1)
    with FeaturePlane(home=fp_home) as fp:
        responses = [fp.get_features(r) for r in requests]
        assert [r["kind"] for r in responses] == ["get_features_response"] * 5
        bad = fp.get_features({"kind": "get_features_request"})
        assert (bad["kind"], bad["error_code"]) == ("error_response", "INVALID_REQUEST")
    with FeaturePlane(home=fp_home) as fp:  # the first one flushed its snapshots on close
        digest = responses[0]["snapshot"]["feature_snapshot_hash"]
        assert fp.snapshot(digest) == responses[0]
        frame = fp.sql("SELECT count(*) AS n FROM snapshots")
        assert isinstance(frame, pl.DataFrame) and frame["n"][0] == len({r["snapshot"]["feature_snapshot_hash"]
                                                                            for r in responses})
        summary = fp.parity()
        assert (summary["checked"], summary["mismatched"]) == (frame["n"][0], 0)
        flow = next(e for s, e in simulate(plan) if s == "fp.bus.context.flow_anchor.fraud.v1")
        answer = fp.context_resolve(flow["platform_run_id"], flow["context_pins"]["run_id"],
                                    flow["payload"]["flow_id"])
        assert answer["readiness"] == "READY"
        assert fp.health()["status"] in ("GREEN", "AMBER")
        page = fp.report(fp_home / "r.html", run_id=plan.pins()["run_id"])
        text = page.read_text(encoding="utf-8")
        assert page == fp_home / "r.html" and 'data-plot="parity"' in text and 'data-plot="freshness"' in text
