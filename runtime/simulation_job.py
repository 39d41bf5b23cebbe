"""`fp simulate`: generate a run and push it through the same admission path as `fp publish`."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from featureplane.runtime.simulate import SimulationPlan, apply_disorder, simulate
from featureplane.schemas.streams import STREAMS, TRAFFIC

FLUSH_EVERY = 20_000


def run_simulation(
    *, transactions: int, seed: int, out: Path | None, publish: bool, duplicates: float = 0.0,
    disorder: float = 0.0, progress: bool = True, app: Any = None,
) -> dict[str, Any]:
    plan = SimulationPlan(seed=seed, transactions=transactions)
    publisher = None
    if publish:
        from featureplane.online.admission import Publisher
        from featureplane.runtime.app import App

        app = app or App()
        app.init()
        publisher = Publisher(app.db, app.bus)
    totals: dict[str, dict[str, int]] = {s: {"published": 0, "duplicates": 0, "rejected": 0,
                                             "injected_bus_duplicates": 0} for s in STREAMS}
    buffers: dict[str, list[dict[str, Any]]] = {s: [] for s in STREAMS}
    with ExitStack() as stack:
        files = {}
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            files = {s: stack.enter_context(open(out / f"{s}.jsonl", "w", encoding="utf-8")) for s in STREAMS}
        bar = stack.enter_context(Progress(
            TextColumn("simulate"), BarColumn(), TextColumn("{task.completed}/{task.total} txns"),
            TimeElapsedColumn(), disable=not progress, transient=True))
        task = bar.add_task("simulate", total=transactions)

        def flush(stream: str) -> None:
            events = apply_disorder(buffers[stream], disorder, seed + len(buffers[stream]))
            lines = [json.dumps(e, separators=(",", ":")) for e in events]
            if stream in files:
                files[stream].writelines(line + "\n" for line in lines)
            if publisher is not None:
                result = publisher.publish(stream, lines, f"simulate:seed={seed}",
                                           inject_bus_duplicates=duplicates)
                for key, value in (*result.summary().items(),
                                   ("injected_bus_duplicates", result.injected_bus_duplicates)):
                    totals[stream][key] += value
            buffers[stream] = []

        for stream, event in simulate(plan):
            buffers[stream].append(event)
            if stream == TRAFFIC:
                bar.advance(task)
            if len(buffers[stream]) >= FLUSH_EVERY:
                flush(stream)
        for stream in STREAMS:
            if buffers[stream]:
                flush(stream)
    return {"context_pins": plan.pins(), "platform_run_id": plan.run_id(), "transactions": transactions,
            "streams": totals if publish else None, "out": str(out) if out else None}
