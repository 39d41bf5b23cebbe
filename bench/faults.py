"""The fault matrix at scale: every crash point, the zombie and a Postgres restart, over many seeds,
each compared with the crash-free run of its seed. Prints JSON with Jepsen-style totals.

    python bench/faults.py --seeds 10 --transactions 1500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10, help="seeds per scenario (default 10)")
    parser.add_argument("--transactions", type=int, default=1500, help="transactions per run (default 1500)")
    parser.add_argument("--requests", type=int, default=50, help="served snapshots compared per run")
    parser.add_argument("--no-postgres-restart", action="store_true", help="skip the Postgres restart scenario")
    args = parser.parse_args()

    import tempfile

    from rich.progress import Progress

    from featureplane.runtime.embedded_pg import EmbeddedServer
    from featureplane.runtime.faults import LABELS
    from featureplane.runtime.migrations import migrate
    from featureplane.runtime.postgres import Database
    from featureplane.runtime.secrets import Secret
    from tests.faults import driver

    root = Path(tempfile.mkdtemp(prefix="fp-bench-faults-"))
    server = EmbeddedServer(root / "pg", {"shared_buffers": "256MB"})
    admin = Database(Secret(server.ensure_running()))
    counter = iter(range(1_000_000))

    def fresh() -> str:
        name = f"faults_{next(counter)}"
        with admin.connect(autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        db = admin.with_database(name)
        migrate(db)
        return db.dsn.reveal()

    scenarios = [*LABELS, "zombie", "scale_out"] + ([] if args.no_postgres_restart else ["postgres_restart"])
    outcomes = []
    started = time.perf_counter()
    try:
        with Progress() as progress:
            task = progress.add_task("fault matrix", total=args.seeds * len(scenarios))
            for seed in range(1, args.seeds + 1):
                reference = driver.reference_run(driver.make_app(fresh(), root / f"ref{seed}"), seed,
                                                 args.transactions, args.requests)
                for n, scenario in enumerate(scenarios):
                    home = root / f"s{seed}_{n}"
                    if scenario == "postgres_restart":
                        own = EmbeddedServer(root / f"pg{seed}", {"shared_buffers": "64MB"})
                        dsn = own.ensure_running()
                        migrate(Database(Secret(dsn)))
                        try:
                            outcome = driver.postgres_restart_scenario(
                                driver.make_app(dsn, home), own, reference, seed, args.transactions, args.requests)
                        finally:
                            own.stop()
                    elif scenario == "scale_out":
                        outcome = driver.scale_out_scenario(driver.make_app(fresh(), home), reference, seed,
                                                            args.transactions, 3, args.requests)
                    elif scenario == "zombie":
                        outcome = driver.zombie_scenario(driver.make_app(fresh(), home), reference, seed,
                                                         args.transactions, args.requests)
                    else:
                        outcome = driver.crash_scenario(driver.make_app(fresh(), home), reference, seed,
                                                        args.transactions, scenario, args.requests)
                    outcomes.append(outcome)
                    progress.advance(task)
    finally:
        server.stop()
    by_scenario: dict[str, dict[str, int]] = {}
    for o in outcomes:
        row = by_scenario.setdefault(o.scenario, {"runs": 0, "recovered": 0, "events_in": 0, "applied": 0,
                                                  "lost": 0, "duplicated": 0, "archive_lost": 0,
                                                  "archive_duplicated": 0, "hashes": 0, "hashes_equal": 0})
        row["runs"] += 1
        row["recovered"] += int(o.recovered)
        for key in ("events_in", "applied", "lost", "duplicated", "archive_lost", "archive_duplicated", "hashes",
                    "hashes_equal"):
            row[key] += getattr(o, key)
    totals = {key: sum(r[key] for r in by_scenario.values()) for key in next(iter(by_scenario.values()))}
    emit({"bench": "faults", "seeds": args.seeds, "transactions": args.transactions,
          "seconds": round(time.perf_counter() - started, 1), "totals": totals, "by_scenario": by_scenario,
          "failures": [o.as_dict() for o in outcomes if not o.recovered]})


if __name__ == "__main__":
    main()
