"""`fp report`: what a run did, gathered from what the system already records.

Sources, each read once: the consumers' progress samples (lag and watermark age per partition over
time, lag counted against the admission ledger), the persisted snapshots (freshness per group and
the served values), the parity results of the audit lake, the failure ledger, and one dataset's
files. Gathering is here; drawing the page is `report_page`.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl

from featureplane.pipelines.errors import TerminalError
from featureplane.runtime.app import App
from featureplane.schemas.envelope import is_pin

MANIFEST_ID = re.compile(r"dsm_[0-9a-f]{32}", re.ASCII)
MAX_POINTS = 400  # per partition line: enough to see a run's shape, small enough for one page


@dataclass(frozen=True)
class Series:
    """One consumer's partition over the run: wall-clock seconds, records waiting, watermark age (each
    sample twice: before and after its batch)."""

    consumer: str
    stream: str
    partition: int
    seconds: list[float]
    lag: list[int]
    watermark_age_s: list[float | None]


@dataclass(frozen=True)
class Freshness:
    group: str
    fresh: int
    stale: int
    no_data: int


@dataclass(frozen=True)
class ParityRun:
    parity_run_id: str
    checked_at: str
    matched: int
    mismatched: int


@dataclass(frozen=True)
class Distribution:
    """One dataset column beside the same feature in served snapshots (nulls left out of both)."""

    column: str
    offline: list[float]
    served: list[float]


@dataclass
class ReportData:
    generated_at: str
    profile: str
    run_id: str | None
    first_sample_at: str | None = None
    progress: list[Series] = field(default_factory=list)
    snapshots: int = 0
    freshness: list[Freshness] = field(default_factory=list)
    parity: list[ParityRun] = field(default_factory=list)
    failures: list[tuple[str, str, int]] = field(default_factory=list)  # consumer, reason_code, count
    dataset_id: str | None = None
    distributions: list[Distribution] = field(default_factory=list)


def _thin(n: int) -> list[int]:
    """At most MAX_POINTS indices of n, evenly spread, the first and the last always kept."""
    if n <= MAX_POINTS:
        return list(range(n))
    step = (n - 1) / (MAX_POINTS - 1)
    return sorted({round(i * step) for i in range(MAX_POINTS)})


def progress(app: App) -> tuple[str | None, list[Series]]:
    """Lag and watermark age per (consumer, stream, partition) at each progress sample.

    Lag at time t with the checkpoint at position n = records admitted by t minus those below n: what
    was on the bus and not yet applied. Each sample gives two points at its time, the lag just before
    its batch and just after, so even a run drained in one batch shows its drain. Watermark age = t
    minus the newest event time applied."""
    with app.db.connect() as conn:
        samples = conn.execute(
            """SELECT consumer, stream, partition, extract(epoch FROM at)::float8, from_offset, next_offset,
                      event_ts_us
                 FROM consumer_progress ORDER BY consumer, stream, partition, at""").fetchall()
        admitted: dict[tuple[str, int], tuple[list[int], list[float]]] = {}
        for stream in sorted({s[1] for s in samples}):
            rows = conn.execute(
                """SELECT partition, "offset", extract(epoch FROM admitted_at)::float8 FROM admissions
                    WHERE stream = %s AND "offset" IS NOT NULL""", (stream,)).fetchall()
            by_partition: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
            for partition, offset, at in rows:
                by_partition[partition][0].append(int(offset))
                by_partition[partition][1].append(at)
            for partition, (offsets, times) in by_partition.items():
                admitted[(stream, partition)] = (sorted(offsets), sorted(times))
    if not samples:
        return None, []
    start = min(s[3] for s in samples)
    grouped: dict[tuple[str, str, int], list[tuple[Any, ...]]] = defaultdict(list)
    for sample in samples:
        grouped[(sample[0], sample[1], sample[2])].append(sample)
    series = []
    for (consumer, stream, partition), rows in grouped.items():
        offsets, times = admitted.get((stream, partition), ([], []))
        kept = [rows[i] for i in _thin(len(rows))]

        def waiting(at: float, position: int) -> int:
            return max(0, bisect_right(times, at) - bisect_left(offsets, position))  # noqa: B023

        series.append(Series(
            consumer, stream, partition,
            seconds=[r[3] - start for r in kept for _ in (0, 1)],
            lag=[waiting(r[3], int(r[4 + after])) for r in kept for after in (0, 1)],
            watermark_age_s=[None if r[6] is None else max(0.0, r[3] - r[6] / 1e6) for r in kept for _ in (0, 1)]))
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), series


def served_responses(app: App, run_id: str | None) -> list[dict[str, Any]]:
    """Every persisted snapshot response (of one run when `run_id` is given)."""
    table = app.lake.table("snapshots")
    if table is None:
        return []
    texts = table.to_pyarrow_dataset().to_table(columns=["response"]).column("response").to_pylist()
    responses = [orjson.loads(t) for t in texts]
    if run_id is not None:
        responses = [r for r in responses if r["snapshot"]["context_pins"]["run_id"] == run_id]
    return responses


def freshness(responses: list[dict[str, Any]]) -> list[Freshness]:
    """Per group version: how many served (key, group) answers were fresh, stale, or had no data."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for response in responses:
        for entry in response["provenance"]["freshness"]:
            state = "no_data" if entry["last_update_event_time"] is None else "stale" if entry["stale"] else "fresh"
            counts[f"{entry['group_name']}@{entry['group_version']}"][state] += 1
    return [Freshness(group, c["fresh"], c["stale"], c["no_data"]) for group, c in sorted(counts.items())]


def parity_runs(app: App, run_id: str | None) -> list[ParityRun]:
    table = app.lake.table("audit/parity_results")
    if table is None:
        return []
    frame = pl.from_arrow(table.to_pyarrow_dataset().to_table(
        columns=["parity_run_id", "checked_at_utc", "matched", "run_id"]))
    assert isinstance(frame, pl.DataFrame)
    if run_id is not None:
        frame = frame.filter(pl.col("run_id") == run_id)
    runs = (frame.group_by("parity_run_id", "checked_at_utc")
            .agg(pl.col("matched").sum().alias("matched"), (~pl.col("matched")).sum().alias("mismatched"))
            .sort("checked_at_utc", "parity_run_id"))
    return [ParityRun(*row) for row in runs.iter_rows()]


def failures(app: App) -> list[tuple[str, str, int]]:
    with app.db.connect() as conn:
        rows = conn.execute("""SELECT consumer, reason_code, count(*) FROM apply_failures
                                GROUP BY consumer, reason_code ORDER BY consumer, reason_code""").fetchall()
    return [(c, r, int(n)) for c, r, n in rows]


def latest_dataset(app: App) -> str | None:
    with app.db.connect() as conn:
        row = conn.execute(
            """SELECT manifest_id FROM ofs_runs WHERE intent_kind = 'dataset_build' AND state = 'DONE'
                  AND manifest_id IS NOT NULL ORDER BY updated_at DESC, run_key LIMIT 1""").fetchone()
    return None if row is None else row[0]


def distributions(app: App, manifest_id: str, responses: list[dict[str, Any]]) -> list[Distribution]:
    """Each feature column of a dataset next to the values served for the same group version and feature
    (served snapshots of the dataset's run only, so the two describe the same traffic)."""
    from featureplane.offline.datasets import feature_column, manifest_key

    key = manifest_key(manifest_id)
    if not app.store.exists(key):
        raise TerminalError("NOT_FOUND", f"no dataset manifest {manifest_id}")
    manifest = orjson.loads(app.store.get(key))
    run_id = manifest["identity"]["context_pins"]["run_id"]
    columns = {feature_column(g, f): (g.group_name, g.group_version, f)
               for g in app.registry.all() for f in g.feature_names}
    present = [c["name"] for c in manifest["columns"] if c["name"] in columns]
    offline = pl.concat([pl.read_parquet(app.store.get(f["key"]), columns=present) for f in manifest["files"]])
    served: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for response in responses:
        if response["snapshot"]["context_pins"]["run_id"] != run_id:
            continue
        for entry in response["snapshot"]["by_key"]:
            for group in entry["by_group"]:
                ref = group["group"]
                for name, value in group["features"].items():
                    if value is not None:
                        served[(ref["group_name"], ref["group_version"], name)].append(float(value))
    return [Distribution(column, offline.get_column(column).drop_nulls().cast(pl.Float64).to_list(),
                         served.get(columns[column], [])) for column in present]


def gather(app: App, *, dataset: str | None = None, run_id: str | None = None) -> ReportData:
    """Everything the page draws. `dataset` (a manifest id) defaults to the newest dataset built."""
    if dataset is not None and not MANIFEST_ID.fullmatch(dataset):
        raise TerminalError("INVALID_REQUEST", "--dataset must be a manifest id: dsm_ and 32 hex digits")
    if run_id is not None and not is_pin(run_id):
        raise TerminalError("INVALID_REQUEST", "--run-id must be 1-128 of A-Z a-z 0-9 . _ -")
    data = ReportData(generated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                      profile=app.settings.profile, run_id=run_id)
    data.first_sample_at, data.progress = progress(app)
    responses = served_responses(app, run_id)
    data.snapshots = len(responses)
    data.freshness = freshness(responses)
    data.parity = parity_runs(app, run_id)
    data.failures = failures(app)
    data.dataset_id = dataset or latest_dataset(app)
    if data.dataset_id is not None:
        data.distributions = distributions(app, data.dataset_id, responses)
    return data
