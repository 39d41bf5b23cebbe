"""The fault matrix: real `fp worker` processes killed, paused and cut off at labelled points,
compared with a crash-free run of the same seed (tests/faults in CI, bench/faults.py at scale).

Every scenario reports Jepsen-style counts with their denominators: events in, applied, lost,
duplicated; archived positions, lost, duplicated; served hashes equal to the crash-free run;
and whether the run recovered (state, archive and every hash equal).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LEASE_SECONDS = "2"  # fault runs take over a dead worker's partitions quickly


@dataclass
class Outcome:
    scenario: str
    seed: int
    events_in: int = 0
    applied: int = 0
    lost: int = 0
    duplicated: int = 0
    archived: int = 0
    archive_lost: int = 0
    archive_duplicated: int = 0
    hashes: int = 0
    hashes_equal: int = 0
    recovered: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_app(dsn: str, home: Path, env: dict[str, str] | None = None) -> Any:
    from featureplane.runtime.app import App
    from featureplane.runtime.postgres import Database
    from featureplane.runtime.secrets import Secret
    from featureplane.runtime.settings import load_settings

    home.mkdir(parents=True, exist_ok=True)
    app = App(load_settings({**os.environ, **(env or {}), "FP_HOME": str(home), "FP_PG_DSN": dsn}))
    app.__dict__["db"] = Database(Secret(dsn))
    app.init()
    return app


def publish_run(app: Any, seed: int, transactions: int) -> Any:
    """The same deterministic traffic, context and labels (with producer-retry duplicates on the
    bus and disorder) for every run of a seed; returns the plan."""
    from featureplane.runtime.simulate import SimulationPlan
    from featureplane.runtime.simulation_job import run_simulation

    run_simulation(transactions=transactions, seed=seed, out=None, publish=True, duplicates=0.05, disorder=0.1,
                   progress=False, app=app)
    return SimulationPlan(seed=seed, transactions=transactions)


def fp_env(app: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FP_")}
    return {**env, "FP_PG_DSN": app.db.dsn.reveal(), "FP_HOME": str(app.settings.home), "PYTHONPATH": str(ROOT),
            "FP_LEASE_SECONDS": LEASE_SECONDS, **extra}


def start_worker(app: Any, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "featureplane.runtime.cli", "worker", "--until-idle",
                             "--timeout", "120"], env=fp_env(app, **extra), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def run_worker(app: Any, **extra: str) -> int:
    proc = start_worker(app, **extra)
    _, err = proc.communicate(timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"worker exited {proc.returncode}: {err.decode()[-2000:]}")
    return proc.returncode


def wait_stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the process has SIGSTOPped itself (FP_PAUSE_AT)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/stat") as handle:
                if handle.read().split(") ", 1)[1].startswith("T"):
                    return
        except FileNotFoundError:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError("the worker never reached its pause point")


def state_digest(app: Any) -> tuple[str, int, int]:
    """(digest of everything the OFP applied, distinct events applied, contribution rows)."""
    digest = hashlib.sha256()
    with app.db.transaction() as conn:
        cur = conn.cursor(binary=False)
        for sql in ("""SELECT partition, "offset", ts_us, account_id, card_id, customer_id, merchant_id, device_id,
                              amount_minor, channel FROM ofp_events ORDER BY 1, 2""",
                    """SELECT g.group_name, key_id, bucket, p FROM ofp_buckets b JOIN ofp_groups g USING (group_id)
                        ORDER BY 1, 2, 3""",
                    """SELECT g.group_name, key_id, bucket, p FROM ofp_fine_buckets b JOIN ofp_groups g USING (group_id)
                        ORDER BY 1, 2, 3""",
                    "SELECT stream, partition, next_offset FROM consumer_checkpoints ORDER BY 1, 2, 3",
                    "SELECT stream, partition, \"offset\", reason_code FROM apply_failures ORDER BY 1, 2, 3"):
            for row in cur.execute(sql):
                digest.update(repr(row).encode())
        events = conn.execute("SELECT count(*) FROM ofp_event_ids").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM ofp_events").fetchone()[0]
    return digest.hexdigest(), int(events), int(rows)


def archive_positions(app: Any) -> tuple[dict[str, int], int]:
    """({stream/partition/offset: sha of value}, rows archived) over every stream's archive."""
    from featureplane.lake.archive import table_name
    from featureplane.schemas.streams import STREAMS

    seen: dict[str, int] = {}
    values: dict[str, str] = {}
    total = 0
    for stream in STREAMS:
        table = app.lake.table(table_name(stream))
        if table is None:
            continue
        data = table.to_pyarrow_dataset().to_table()
        for p, o, v in zip(data["partition"].to_pylist(), data["offset"].to_pylist(), data["value"].to_pylist(),
                           strict=True):
            key = f"{stream}/{p}/{o}"
            seen[key] = seen.get(key, 0) + 1
            values[key] = hashlib.sha256(v).hexdigest()
            total += 1
    return {k: seen[k] for k in seen}, total


def served_hashes(app: Any, plan: Any, count: int) -> list[str]:
    from featureplane.online.serving import FeatureServer
    from featureplane.runtime.simulate import request_mix

    server = FeatureServer(app.db, app.bus, app.registry)
    try:
        return [server.get_features(r)["snapshot"]["feature_snapshot_hash"] for r in request_mix(plan, count, seed=5)]
    finally:
        server.close()


@dataclass
class Reference:
    state: tuple[str, int, int]
    archive: dict[str, int]
    hashes: list[str]
    events_in: int


def reference_run(app: Any, seed: int, transactions: int, requests: int) -> Reference:
    """The crash-free run of a seed, in process."""
    from featureplane.runtime.workers import run_workers

    plan = publish_run(app, seed, transactions)
    run_workers(app, until_idle=True)
    with app.db.transaction() as conn:
        events_in = conn.execute(
            "SELECT count(*) FROM admissions WHERE event_type = 'transaction_event'").fetchone()[0]
    return Reference(state_digest(app), archive_positions(app)[0], served_hashes(app, plan, requests), int(events_in))


def compare(app: Any, plan: Any, reference: Reference, outcome: Outcome, requests: int) -> Outcome:
    state = state_digest(app)
    archive, total = archive_positions(app)
    hashes = served_hashes(app, plan, requests)
    outcome.events_in = reference.events_in
    outcome.applied = state[1]
    outcome.lost = max(0, reference.events_in - state[1])
    outcome.duplicated = max(0, state[2] - reference.state[2])
    outcome.archived = len(archive)
    outcome.archive_lost = len(set(reference.archive) - set(archive))
    outcome.archive_duplicated = total - len(archive)
    outcome.hashes = len(hashes)
    outcome.hashes_equal = sum(a == b for a, b in zip(hashes, reference.hashes, strict=True))
    outcome.recovered = (state[0] == reference.state[0] and archive.keys() == reference.archive.keys()
                         and outcome.archive_duplicated == 0 and outcome.hashes_equal == outcome.hashes)
    return outcome


def crash_scenario(app: Any, reference: Reference, seed: int, transactions: int, label: str,
                   requests: int) -> Outcome:
    """kill -9 of `fp worker` at `label`, then a restart that must converge on the crash-free run."""
    outcome = Outcome(f"kill -9 at {label}", seed)
    plan = publish_run(app, seed, transactions)
    code = run_worker(app, FP_CRASH_AT=label)
    outcome.notes.append("killed" if code == -signal.SIGKILL else "finished before the crash point")
    run_worker(app)
    return compare(app, plan, reference, outcome, requests)


def zombie_scenario(app: Any, reference: Reference, seed: int, transactions: int, requests: int) -> Outcome:
    """A worker paused (SIGSTOP) after reading a batch; its lease lapses, a second worker takes the
    partitions and finishes; the zombie resumes and must be fenced (it changes nothing)."""
    outcome = Outcome("zombie resumed after its lease was taken", seed)
    plan = publish_run(app, seed, transactions)
    zombie = start_worker(app, FP_PAUSE_AT="ofp_after_read")
    wait_stopped(zombie)
    time.sleep(float(LEASE_SECONDS) + 0.5)
    run_worker(app)
    before = state_digest(app)
    os.kill(zombie.pid, signal.SIGCONT)
    zombie.communicate(timeout=300)
    outcome.notes.append(f"zombie exit {zombie.returncode}; state unchanged by it: {state_digest(app) == before}")
    return compare(app, plan, reference, outcome, requests)


def postgres_restart_scenario(app: Any, server: Any, reference: Reference, seed: int, transactions: int,
                              requests: int) -> Outcome:
    """Postgres stopped with `-m immediate` while a worker is mid-batch, then restarted: the worker
    rides it out (transient errors) and converges."""
    from featureplane.runtime.embedded_pg import _bin, _run, _user_kwargs

    outcome = Outcome("postgres stopped -m immediate mid-batch", seed)
    plan = publish_run(app, seed, transactions)
    worker = start_worker(app, FP_PAUSE_AT="ofp_after_state_write")
    wait_stopped(worker)
    _run([_bin("pg_ctl"), "-D", str(server.data_dir), "-m", "immediate", "-w", "stop"], **_user_kwargs())
    os.kill(worker.pid, signal.SIGCONT)
    time.sleep(1.0)
    server.ensure_running()
    _, err = worker.communicate(timeout=300)
    outcome.notes.append(f"worker exit {worker.returncode}")
    if worker.returncode != 0:
        outcome.notes.append(err.decode()[-500:])
        run_worker(app)
    return compare(app, plan, reference, outcome, requests)


def scale_out_scenario(app: Any, reference: Reference, seed: int, transactions: int, processes: int,
                       requests: int) -> Outcome:
    """Several `fp worker` processes at once share every stream's partitions through their leases;
    together they must converge on exactly the single-process run."""
    outcome = Outcome(f"{processes} worker processes at once", seed)
    plan = publish_run(app, seed, transactions)
    workers = [start_worker(app) for _ in range(processes)]
    codes = [w.wait(timeout=300) for w in workers]
    outcome.notes.append(f"exit codes {codes}")
    with app.db.transaction() as conn:
        epochs = conn.execute("SELECT sum(epoch) FROM consumer_checkpoints WHERE consumer = 'ofp'").fetchone()[0]
    outcome.notes.append(f"ofp partition claims: {epochs}")
    return compare(app, plan, reference, outcome, requests)
