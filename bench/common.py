"""Shared set-up for the benchmarks: a throwaway FP_HOME with its own embedded Postgres."""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def bench_app(name: str) -> Iterator[Any]:
    """An initialised App on a fresh FP_HOME; at exit its embedded Postgres stops and the home is
    deleted (a 5M run leaves gigabytes)."""
    home = Path(tempfile.mkdtemp(prefix=f"fp-bench-{name}-"))
    os.environ["FP_HOME"] = str(home)
    os.environ.pop("FP_PG_DSN", None)
    os.environ.pop("FP_PROFILE", None)
    import atexit
    import shutil

    from featureplane.runtime.app import App
    from featureplane.runtime.postgres import Database, start_embedded
    from featureplane.runtime.settings import load_settings

    atexit.register(shutil.rmtree, home, True)  # runs after the server's stop (atexit is last-in, first-out)
    settings = load_settings()
    # the server runs with the profile's settings for this workload, as `fp` starts it
    dsn = start_embedded(home / "pg", stop_at_exit=True, settings=getattr(settings.postgres, "settings", None))
    app = App(settings)
    app.__dict__["db"] = Database(dsn)
    app.init()
    yield app


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"p50_ms": round(statistics.median(ordered) * 1000, 3), "p99_ms": round(pct(0.99), 3),
            "max_ms": round(ordered[-1] * 1000, 3)}


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def emit(figures: dict[str, Any]) -> None:
    figures["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(figures, indent=2, sort_keys=True))
