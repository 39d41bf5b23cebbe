"""Context store benchmark (issue: join plane). Prints JSON.

- apply: context events/s (arrival events, arrival entities, flow anchors of a simulated run).
- resolve: p50/p99 of resolving flow ids (in-process API).

    python bench/context.py [--transactions 200000] [--resolves 3000]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_app, emit, percentiles, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--resolves", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=29)
    args = parser.parse_args()

    from featureplane.online.context_store import ContextReader, ContextStats, ContextWorker
    from featureplane.runtime.simulate import SimulationPlan
    from featureplane.runtime.simulation_job import run_simulation
    from featureplane.schemas.streams import CONTEXT_STREAMS

    figures: dict = {"transactions": args.transactions}
    with bench_app("context") as app:
        run_simulation(transactions=args.transactions, seed=args.seed, out=None, publish=True, progress=False,
                       app=app)
        events = sum(sum((app.bus.end_offsets(s) or {}).values()) for s in CONTEXT_STREAMS)
        worker = ContextWorker(app.db, app.bus, batch_size=app.settings.batch_size)
        apply_s, stats = timed(lambda: worker.run_until_idle(ContextStats()))
        figures["apply"] = {"events": events, "seconds": round(apply_s, 2), "events_per_s": round(events / apply_s),
                            "anomalies": stats.anomalies, "failures": stats.failures}
        plan = SimulationPlan(seed=args.seed, transactions=args.transactions)
        reader = ContextReader(app.db)
        rng = random.Random(1)
        samples = []
        ready = 0
        for _ in range(args.resolves):
            flow = f"flow_{args.seed}_{rng.randrange(1, args.transactions + 1):09d}"
            elapsed, answer = timed(lambda f=flow: reader.resolve(plan.run_id(), plan.pins()["run_id"], f))
            samples.append(elapsed)
            ready += answer["readiness"] == "READY"
        figures["resolve"] = {**percentiles(samples), "requests": args.resolves, "ready": ready}
    emit(figures)


if __name__ == "__main__":
    main()
