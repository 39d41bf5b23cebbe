"""The fault matrix, reduced for CI (one seed per scenario; bench/faults.py runs many): every crash,
pause and outage converges on the crash-free run — state, archive and every served hash equal,
nothing lost, nothing counted twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featureplane.runtime.faults import LABELS
from tests.conftest import fresh_database
from tests.faults import driver

SEED, TRANSACTIONS, REQUESTS = 5, 400, 25


@pytest.fixture(scope="module")
def reference(pg_server, tmp_path_factory):
    db = fresh_database(pg_server)
    app = driver.make_app(db.dsn.reveal(), tmp_path_factory.mktemp("reference") / "home")
    return driver.reference_run(app, SEED, TRANSACTIONS, REQUESTS)


def _fresh_app(pg_server, tmp_path: Path):
    return driver.make_app(fresh_database(pg_server).dsn.reveal(), tmp_path / "home")


def _assert_recovered(outcome: driver.Outcome) -> None:
    print(json.dumps(outcome.as_dict()))
    assert outcome.events_in > 0 and outcome.hashes == REQUESTS
    assert (outcome.lost, outcome.duplicated, outcome.archive_lost, outcome.archive_duplicated) == (0, 0, 0, 0), \
        outcome
    assert outcome.applied == outcome.events_in and outcome.hashes_equal == outcome.hashes, outcome
    assert outcome.recovered, outcome


@pytest.mark.parametrize("label", LABELS)
def test_kill_9_at_each_crash_point_converges(label, reference, pg_server, tmp_path):
    app = _fresh_app(pg_server, tmp_path)
    outcome = driver.crash_scenario(app, reference, SEED, TRANSACTIONS, label, REQUESTS)
    assert outcome.notes[0] == "killed"  # the crash point was really reached
    _assert_recovered(outcome)


def test_a_resumed_zombie_is_fenced(reference, pg_server, tmp_path):
    app = _fresh_app(pg_server, tmp_path)
    outcome = driver.zombie_scenario(app, reference, SEED, TRANSACTIONS, REQUESTS)
    assert "state unchanged by it: True" in outcome.notes[0]
    _assert_recovered(outcome)


def test_postgres_immediate_stop_mid_batch(reference, tmp_path):
    from featureplane.runtime.embedded_pg import EmbeddedServer
    from featureplane.runtime.migrations import migrate
    from featureplane.runtime.postgres import Database
    from featureplane.runtime.secrets import Secret

    server = EmbeddedServer(tmp_path / "pg", {"shared_buffers": "64MB"})
    try:
        dsn = server.ensure_running()
        migrate(Database(Secret(dsn)))
        app = driver.make_app(dsn, tmp_path / "home")
        outcome = driver.postgres_restart_scenario(app, server, reference, SEED, TRANSACTIONS, REQUESTS)
        assert outcome.notes[0] == "worker exit 0"  # it rode out the outage instead of exiting
        _assert_recovered(outcome)
    finally:
        server.stop()


def test_three_worker_processes_share_the_partitions_and_agree(reference, pg_server, tmp_path):
    app = _fresh_app(pg_server, tmp_path)
    outcome = driver.scale_out_scenario(app, reference, SEED, TRANSACTIONS, 3, REQUESTS)
    assert outcome.notes[0] == "exit codes [0, 0, 0]"
    _assert_recovered(outcome)
