"""Dataset builds in units of bounded size: key shards and time chunks.

A build is three steps, each a set of independent units that read and write files in a work
directory, so memory is bounded by the largest unit, not by history:

1. route: one pass over the archive at the replay basis, a batch at a time, writes each event to
   the shard of every key type that reads it (a hash of the key, `shard_of`) and, when it lies in
   the observation scope, to the time chunk of its output row; and its identity (run, event id,
   position) to the identity shard of its event id. Per identity shard, every copy of an event
   after its first position is listed (`later_copies`), and every unit leaves those out: the
   online plane's first-position rule, decided over the whole basis even when the copies differ.
2. features (`shard_values`): per (key type, shard), every group of that key type evaluated by the
   shared algebra in one pass (`key_rolling_features`: the partials the groups share are computed
   once) over the shard's events; the values of in-scope rows are written to the time chunk of their
   row, sorted by `uid`.
3. assemble (`assemble_chunk`): per time chunk, its rows joined with each key type's values of that
   chunk (both sorted by `uid`: a merge, not a hash join) and with the labels, in (time, position)
   order: one output file per chunk.

The output files depend only on the data and `CHUNK_ROWS`, never on how keys were sharded. Units
2 and 3 are plain functions of paths and values: a process pool runs them here (`run_units`), and
an engine such as Ray or Spark could run them as they are.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from featureplane.pipelines.features import TS, in_range_expr, key_contributions, key_rolling_features
from featureplane.pipelines.positions import order_keys
from featureplane.pipelines.registry import GroupDef
from featureplane.pipelines.timefmt import format_ts_expr
from featureplane.schemas.records import POSITIONED_IDENTITY, first_positions

UID = "uid"  # a build-local number of each archived record: joins its output row to its feature values
SHARD_EVENTS = 500_000  # events per key shard (the unit of feature work)
CHUNK_ROWS = 500_000  # output rows per file (the unit of assembly)
ROW_COLUMNS = ("partition", "offset", "platform_run_id", "event_id", "flow_id", TS, "account_id", "card_id",
               "customer_id", "merchant_id", "device_id", "amount_minor", "channel")
OUTPUT_BASE = ("partition", "offset", "platform_run_id", "event_id", "flow_id", "ts_utc", "account_id", "card_id",
               "customer_id", "merchant_id", "device_id", "amount_minor", "channel")


def feature_column(group: GroupDef, feature: str) -> str:
    """Dataset column of one feature: `<group>__v<version with _>__<feature>`, unique across versions."""
    return f"{group.group_name}__v{group.group_version.replace('.', '_')}__{feature}"


def shard_of(key: pl.Expr, shards: int) -> pl.Expr:
    """The key shard of an entity key. Any hash serves (a shard only decides which unit computes a
    key; no output byte depends on it); polars' is fast and fixed within one build."""
    return (key.hash(seed=0x6670) % shards).cast(pl.Int32)


def within(lo: int, hi: int) -> pl.Expr:
    """Event time in [lo, hi): the observation scope, and each time chunk of it."""
    return (pl.col(TS) >= lo) & (pl.col(TS) < hi)


def by_chunk(frame: pl.DataFrame, bounds: list[int]) -> Iterator[tuple[int, pl.DataFrame]]:
    """The in-scope rows of `frame` split by time chunk: (chunk, its rows); rows outside the scope are
    left out here (the search alone would put them in the first or last chunk)."""
    inside = frame.filter(within(bounds[0], bounds[-1]))
    cuts = pl.Series(bounds[1:-1], dtype=pl.Int64)
    chunks = inside.with_columns(cuts.search_sorted(inside[TS], side="right").cast(pl.Int32).alias("_chunk"))
    for (chunk,), part in chunks.partition_by("_chunk", as_dict=True, include_key=False).items():
        yield int(chunk), part  # type: ignore[call-overload]


def shard_count(events: int) -> int:
    return max(1, math.ceil(events / SHARD_EVENTS))


def chunk_bounds(times: pl.Series, scope_from: int, scope_to: int, rows: int = CHUNK_ROWS) -> list[int]:
    """Boundaries b0 < b1 < ... < bn of the output files, from the in-scope event times: chunk i holds
    the rows with b_i <= ts < b_(i+1), about `rows` each; the rows of one instant stay together."""
    ordered = times.sort()
    cuts = [scope_from]
    for i in range(rows, len(ordered), rows):
        if ordered[i] > cuts[-1]:
            cuts.append(int(ordered[i]))
    return [*cuts, scope_to]


@dataclass(frozen=True)
class Layout:
    """The files of one build's units."""

    root: Path

    def events(self, key_field: str, shard: int) -> Path:
        return self.root / f"events-{key_field}-{shard:05d}.arrow"

    def rows(self, chunk: int) -> Path:
        return self.root / f"rows-{chunk:05d}.arrow"

    def values(self, key_field: str, shard: int, chunk: int) -> Path:
        return self.root / f"values-{key_field}-{shard:05d}-{chunk:05d}.arrow"

    def identities(self, shard: int) -> Path:
        return self.root / f"ids-{shard:05d}.arrow"

    def values_of(self, key_field: str, chunk: int) -> list[Path]:
        return sorted(self.root.glob(f"values-{key_field}-*-{chunk:05d}.arrow"))

    def output(self, chunk: int) -> Path:
        return self.root / f"part-{chunk:05d}.parquet"


class Router:
    """Step 1: spreads batches of archived events over key shards and time chunks (Arrow files
    appended to batch by batch; one open writer per file)."""

    def __init__(self, layout: Layout, groups: Sequence[GroupDef], shards: int, bounds: list[int]) -> None:
        self.layout, self.shards, self.bounds = layout, shards, bounds
        self.columns: dict[str, list[str]] = {}  # key field -> the columns its groups read
        for group in groups:
            # what the features read, and the uid that joins them back to their row; the first-position
            # rule is decided on the identity shards
            wanted = self.columns.setdefault(group.key_field, [UID, TS, group.key_field])
            wanted += [f for f in group.fields if f not in wanted]
        self._writers: dict[Path, pa.ipc.RecordBatchFileWriter] = {}
        self.next_uid = 0

    def route(self, batch: pl.DataFrame, pins: dict[str, str]) -> None:
        """Route one batch of the basis's decodable transactions, of every run: identities are
        routed for all (a copy is skipped online whatever its pins), the rest only for these pins."""
        batch = batch.with_columns(pl.int_range(self.next_uid, self.next_uid + batch.height, dtype=pl.Int64).alias(UID))
        self.next_uid += batch.height
        ids = batch.select(UID, *POSITIONED_IDENTITY).with_columns(
            shard_of(pl.col("event_id"), self.shards).alias("_shard"))
        for (shard,), part in ids.partition_by("_shard", as_dict=True, include_key=False).items():
            self._write(self.layout.identities(int(shard)), part)  # type: ignore[arg-type]
        batch = batch.filter(*[pl.col(name) == value for name, value in sorted(pins.items())])
        for key_field, columns in self.columns.items():
            keyed = batch.filter(pl.col(key_field).is_not_null()).select(columns)
            parts = keyed.with_columns(shard_of(pl.col(key_field), self.shards).alias("_shard"))
            for (shard,), part in parts.partition_by("_shard", as_dict=True, include_key=False).items():
                self._write(self.layout.events(key_field, int(shard)), part)  # type: ignore[arg-type]
        for chunk, part in by_chunk(batch.select(UID, *ROW_COLUMNS), self.bounds):
            self._write(self.layout.rows(chunk), part)

    def _write(self, path: Path, part: pl.DataFrame) -> None:
        table = part.to_arrow()
        writer = self._writers.get(path)
        if writer is None:  # Arrow IPC, uncompressed: the cheapest to write, read back memory-mapped
            writer = self._writers[path] = pa.ipc.new_file(path, table.schema)
        writer.write_table(table)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def later_copies(layout: Layout, shard: int) -> pl.DataFrame:
    """The `uid` of every copy of an event (same run and event id) after its first position, in one
    identity shard: nothing, unless the bus carried an event twice."""
    path = layout.identities(shard)
    if not path.exists():
        return pl.DataFrame(schema={UID: pl.Int64()})
    ids = pl.read_ipc(path)
    copies = ids.filter(pl.struct("platform_run_id", "event_id").is_duplicated())  # usually none
    return copies.join(first_positions(copies), on=UID, how="anti").select(UID)


def groups_by_key(groups: Iterable[GroupDef]) -> dict[str, list[GroupDef]]:
    """The groups of each key field, in their order: a key type's groups are evaluated together."""
    by_key: dict[str, list[GroupDef]] = {}
    for group in groups:
        by_key.setdefault(group.key_field, []).append(group)
    return by_key


def key_values(events: pl.DataFrame, groups: Sequence[GroupDef]) -> pl.DataFrame:
    """`uid`, the event time and the dataset columns of every group of one key type as of each event
    (out-of-range values null), sorted by `uid`; the groups' common partials are computed once."""
    values = key_rolling_features(key_contributions(events, groups, carry=(UID,)), groups, UID, feature_column)
    names = [feature_column(g, f) for g in groups for f in g.feature_names]
    return values.with_columns([in_range_expr(n, values.schema[n]) for n in names]).sort(UID)


def without(frame: pl.DataFrame, skipped: pl.DataFrame) -> pl.DataFrame:
    """`frame` less the later copies of events (`later_copies`), of which there usually are none."""
    return frame if skipped.is_empty() else frame.join(skipped, on=UID, how="anti")


def shard_values(layout: Layout, key_field: str, shard: int, groups: list[GroupDef],
                 bounds: list[int], skipped: pl.DataFrame) -> None:
    """Step 2 for one (key type, shard): the features of every group of the key type as of every
    in-scope event of the shard, written to `layout.values(key_field, shard, chunk)` for the time
    chunk of its row (sorted by `uid`), so an assembly reads exactly its own (at 5M events, reading
    each chunk's time range out of every shard's values read half of them ten times over)."""
    path = layout.events(key_field, shard)
    if not path.exists():
        return
    events = without(pl.read_ipc(path), skipped)
    for chunk, part in by_chunk(key_values(events, groups), bounds):
        # lz4: a third of the work directory's bytes at 5M events, at no measured cost in time
        part.write_ipc(layout.values(key_field, shard, chunk), compression="lz4")


def by_uid(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` sorted by `uid` and flagged so: joins of two such frames merge instead of hashing."""
    if not frame[UID].is_sorted():
        frame = frame.sort(UID)
    return frame.with_columns(pl.col(UID).set_sorted())


FLOW_HASH = "_flow_hash"


def _flow_hash() -> pl.Expr:
    return pl.struct("platform_run_id", "flow_id").hash(seed=0x666C6F77).alias(FLOW_HASH)


def label_index(labels: pl.DataFrame) -> pl.DataFrame:
    """The latest labels sorted by a 64-bit hash of their flow, so a chunk finds its own by a sorted
    search (`labels_of`) in time that follows the chunk, not every label of the build (a hash join
    with every label per chunk took half a second a chunk at 5M transactions)."""
    return labels.with_columns(_flow_hash()).sort(FLOW_HASH)


def labels_of(rows: pl.DataFrame, index: pl.DataFrame) -> pl.DataFrame:
    """The labels (`label_index`) whose flow hash is that of a row's flow: every label of the rows'
    flows, and rarely another whose hash collides (the caller's join on the flow itself leaves it out)."""
    hashes = index[FLOW_HASH]
    wanted = rows.select(_flow_hash()).to_series()
    found = pl.select(pl.int_ranges(hashes.search_sorted(wanted, side="left"),
                                    hashes.search_sorted(wanted, side="right"), dtype=pl.UInt32).alias("i"))
    at = found.to_series().explode().drop_nulls().unique()
    return index[at].drop(FLOW_HASH)


def assemble_chunk(layout: Layout, chunk: int, groups: list[GroupDef],
                   labels: pl.DataFrame, events_schema: dict[str, pl.DataType], skipped: pl.DataFrame,
                   ) -> dict[str, Any]:
    """Step 3 for one time chunk: its rows, their feature values and labels (`labels`: a
    `label_index`), in (time, position) order, written to `layout.output(chunk)`; returns its row and
    label counts."""
    path = layout.rows(chunk)
    empty = pl.DataFrame(schema=events_schema).with_columns(pl.lit(0, pl.Int64).alias(UID))
    rows = by_uid(without(pl.read_ipc(path), skipped) if path.exists() else empty.select(UID, *ROW_COLUMNS))
    for key_field, members in groups_by_key(groups).items():
        files = layout.values_of(key_field, chunk)
        values = (pl.concat([pl.read_ipc(f) for f in files]).drop(TS) if files
                  else key_values(empty, members).drop(TS))  # no events of its key type: its typed columns
        rows = rows.join(by_uid(values), on=UID, how="left")
    features = [feature_column(g, f) for g in groups for f in g.feature_names]
    rows = rows.join(labels_of(rows, labels), on=["platform_run_id", "flow_id"], how="left")
    rows = rows.with_columns(format_ts_expr(pl.col(TS)).alias("ts_utc"),
                             format_ts_expr(pl.col("label_observed_us")).alias("label_observed_time_utc"))
    out = (rows.sort(TS, "partition", *order_keys(frame=rows))
           .select(*OUTPUT_BASE, *features, "label", "label_observed_time_utc"))
    del rows  # the unsorted copy is not held while the file is encoded
    out.write_parquet(layout.output(chunk), compression="zstd", compression_level=3, statistics=True,
                      row_group_size=250_000)
    counts = dict(out.group_by("label").len().iter_rows())
    return {"rows": out.height, "fraud": counts.get("fraud", 0), "legit": counts.get("legit", 0),
            "unlabeled": counts.get(None, 0), "schema": {n: str(t) for n, t in out.schema.items()}}


UNITS_IN_FLIGHT = 2  # units run at once in one process (below)


def run_units(function: Callable[..., Any], units: Iterable[tuple[Any, ...]], jobs: int,
              done: Callable[[], None] = lambda: None) -> list[Any]:
    """Run `function(*unit)` for every unit, in order of the results; in a pool of `jobs` processes
    (spawned: a fork of a process running polars' thread pool may hang) when jobs > 1. Otherwise in
    this process, `UNITS_IN_FLIGHT` at a time on threads: polars releases the GIL, so one unit's
    single-threaded stretches (Parquet encoding, sliding windows) overlap another's work (at 5M
    transactions on 2 cores: 49 s -> 40 s, peak RSS 1.66 -> 1.91 GB)."""
    units = list(units)
    if jobs > 1 and len(units) > 1:
        pool: Executor = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=UNITS_IN_FLIGHT)
    with pool:
        futures = [pool.submit(function, *unit) for unit in units]
        results = []
        try:
            for future in futures:
                results.append(future.result())
                done()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the units not started never start; the running ones finish
            raise
        return results
