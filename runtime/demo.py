"""`fp demo`: the main job end to end on the embedded default, with a readable summary."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from runtime.app import App
from runtime.simulation_job import run_simulation


def run_demo(*, transactions: int = 2000, seed: int = 7) -> int:
    console = Console()
    app = App()
    console.rule("featureplane demo")
    console.print(f"profile [bold]{app.settings.profile}[/], FP_HOME {app.settings.home}")
    applied = app.init()
    console.print(f"init: {len(applied)} migrations applied now")
    sim = run_simulation(transactions=transactions, seed=seed, out=None, publish=True,
                         duplicates=0.02, disorder=0.05, progress=True, app=app)
    table = Table(title=f"published run {sim['platform_run_id']}")
    for column in ("stream", "published", "duplicates", "rejected", "bus duplicates injected"):
        table.add_column(column)
    for stream, counts in sim["streams"].items():
        table.add_row(stream, str(counts["published"]), str(counts["duplicates"]), str(counts["rejected"]),
                      str(counts["injected_bus_duplicates"]))
    console.print(table)
    return 0
