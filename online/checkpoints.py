"""Per-partition checkpoints with leases and a fencing epoch.

A consumer claims a partition (bumping its epoch) and commits each batch with a compare-and-set
on (epoch, next_offset) in the same transaction as its state. A second or stalled worker on the
same partition fails the compare-and-set and rolls back: a batch can never be applied twice.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg

from featureplane.online.bus.base import BusCorrupt, EventBus, ReadBatch
from featureplane.pipelines.errors import FpError, TransientError
from featureplane.runtime.postgres import Database

LEASE_SECONDS = int(os.environ.get("FP_LEASE_SECONDS", "30"))  # a dead owner's partitions free up after this
# errors that say nothing about the records: retry the same batch later, never ledger it
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (psycopg.OperationalError, psycopg.InterfaceError, TransientError)


class Fenced(TransientError):
    """Another worker owns the partition now; this worker's batch was rolled back."""

    def __init__(self, what: str) -> None:
        super().__init__("FENCED", what)


@dataclass(frozen=True)
class Lease:
    consumer: str
    stream: str
    partition: int
    owner: str
    epoch: int
    next_offset: int


def claim(conn: psycopg.Connection, consumer: str, stream: str, partition: int, owner: str) -> Lease | None:
    """Claim a partition if it is free, expired or already ours; None if someone else holds it."""
    conn.execute(
        """INSERT INTO consumer_checkpoints (consumer, stream, partition) VALUES (%s, %s, %s)
           ON CONFLICT DO NOTHING""",
        (consumer, stream, partition),
    )
    row = conn.execute(
        """UPDATE consumer_checkpoints
              SET owner = %s, epoch = epoch + 1, lease_until = now() + make_interval(secs => %s),
                  updated_at = now()
            WHERE consumer = %s AND stream = %s AND partition = %s
              AND (owner IS NULL OR owner = %s OR lease_until < now())
        RETURNING epoch, next_offset""",
        (owner, LEASE_SECONDS, consumer, stream, partition, owner),
    ).fetchone()
    if row is None:
        return None
    return Lease(consumer, stream, partition, owner, row[0], int(row[1]))  # numeric -> exact int


PROGRESS_RETENTION = timedelta(days=7)


def beat(conn: psycopg.Connection, owner: str) -> list[str]:
    """Record that worker process `owner` is alive; return every live worker, sorted. Progress samples
    past PROGRESS_RETENTION are pruned here, once per pass."""
    conn.execute(
        """INSERT INTO worker_heartbeats (owner) VALUES (%s)
           ON CONFLICT (owner) DO UPDATE SET beat_at = now()""", (owner,))
    conn.execute("DELETE FROM consumer_progress WHERE at < now() - %s", (PROGRESS_RETENTION,))
    return [r[0] for r in conn.execute(
        """SELECT owner FROM worker_heartbeats WHERE beat_at > now() - make_interval(secs => %s)
            ORDER BY owner""", (LEASE_SECONDS,))]


def leave(conn: psycopg.Connection, owner: str) -> None:
    """A worker that stops cleanly hands its share over at once instead of after the lease."""
    conn.execute("DELETE FROM worker_heartbeats WHERE owner = %s", (owner,))


def fair_share(items: list[int] | list[str], live: list[str], owner: str) -> list:
    """The items (partitions of a stream, or streams) this worker takes: item i goes to the
    (i mod n)-th live worker, so each of n workers holds floor or ceil of len/n. Leases still decide
    who may apply: a share only says who tries, so a moment of disagreement while workers join or
    leave costs a retry, never a double apply."""
    if owner not in live:
        return list(items)
    rank = live.index(owner)
    return [item for i, item in enumerate(items) if i % len(live) == rank]


def advance(conn: psycopg.Connection, lease: Lease, new_offset: int) -> Lease:
    """Move the checkpoint to `new_offset` inside the caller's transaction, or raise `Fenced`.

    Moving also clears the partition's error streak and any block it has now passed, and samples the
    positions and watermark for `fp report` (at most five times a second per partition)."""
    row = conn.execute(
        """WITH moved AS (
               UPDATE consumer_checkpoints
                  SET next_offset = %(new)s, lease_until = now() + make_interval(secs => %(lease)s),
                      updated_at = now()
                WHERE consumer = %(c)s AND stream = %(s)s AND partition = %(p)s AND epoch = %(epoch)s
                  AND next_offset = %(old)s
            RETURNING 1),
           unblocked AS (
               DELETE FROM consumer_blocks WHERE consumer = %(c)s AND stream = %(s)s AND partition = %(p)s
                  AND "offset" < %(new)s AND EXISTS (SELECT 1 FROM moved)),
           healed AS (
               DELETE FROM consumer_errors WHERE consumer = %(c)s AND stream = %(s)s AND partition = %(p)s
                  AND EXISTS (SELECT 1 FROM moved)),
           sampled AS (
               INSERT INTO consumer_progress (consumer, stream, partition, from_offset, next_offset,
                                              event_ts_us)
               SELECT %(c)s, %(s)s, %(p)s, %(old)s, %(new)s,
                      (SELECT last_event_ts_us FROM consumer_counters
                        WHERE consumer = %(c)s AND stream = %(s)s AND partition = %(p)s)
                WHERE EXISTS (SELECT 1 FROM moved) AND NOT EXISTS (
                      SELECT 1 FROM consumer_progress WHERE consumer = %(c)s AND stream = %(s)s
                         AND partition = %(p)s AND at > now() - interval '200 milliseconds')
               ON CONFLICT DO NOTHING)
           SELECT count(*) FROM moved""",
        {"new": new_offset, "lease": LEASE_SECONDS, "c": lease.consumer, "s": lease.stream, "p": lease.partition,
         "epoch": lease.epoch, "old": lease.next_offset},
    ).fetchone()
    if row is None or row[0] != 1:
        raise Fenced(f"{lease.consumer} lost {lease.stream}/{lease.partition} (epoch {lease.epoch})")
    return Lease(lease.consumer, lease.stream, lease.partition, lease.owner, lease.epoch, new_offset)


def release(conn: psycopg.Connection, lease: Lease) -> None:
    conn.execute(
        """UPDATE consumer_checkpoints SET owner = NULL, lease_until = NULL
            WHERE consumer = %s AND stream = %s AND partition = %s AND epoch = %s""",
        (lease.consumer, lease.stream, lease.partition, lease.epoch),
    )


WATERMARKS_SQL = "SELECT partition, next_offset FROM consumer_checkpoints WHERE consumer = %s AND stream = %s"


def basis_from_rows(rows: list[tuple[int, int]], partitions: list[int]) -> dict[int, int]:
    """(partition, next_offset) rows -> the applied basis over `partitions` (0 where nothing was applied)."""
    found = dict(rows)
    return {p: int(found.get(p, 0)) for p in partitions}


def watermarks(conn: psycopg.Connection, consumer: str, stream: str, partitions: list[int]) -> dict[int, int]:
    """The applied basis: exclusive-next offset per partition (0 where nothing was applied)."""
    return basis_from_rows(conn.execute(WATERMARKS_SQL, (consumer, stream)).fetchall(), partitions)


def record_failures(conn: psycopg.Connection, consumer: str, stream: str,
                    failures: list[tuple[int, int, str | None, str, str]]) -> None:
    """Ledger (partition, offset, event_id, reason_code, detail) rows; a redelivery is a no-op."""
    if not failures:
        return
    conn.cursor().executemany(
        """INSERT INTO apply_failures (consumer, stream, partition, "offset", event_id, reason_code, detail)
           VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
        [(consumer, stream, p, o, e, code, detail[:1000]) for p, o, e, code, detail in failures],
    )


def bump_counters(conn: psycopg.Connection, consumer: str, stream: str, partition: int, *, applied: int,
                  duplicates: int, failures: int, last_ts_us: int | None) -> None:
    conn.execute(
        """INSERT INTO consumer_counters AS c (consumer, stream, partition, applied, duplicates, failures,
                                              last_event_ts_us)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (consumer, stream, partition) DO UPDATE SET
               applied = c.applied + EXCLUDED.applied,
               duplicates = c.duplicates + EXCLUDED.duplicates,
               failures = c.failures + EXCLUDED.failures,
               last_event_ts_us = GREATEST(c.last_event_ts_us, EXCLUDED.last_event_ts_us)""",
        (consumer, stream, partition, applied, duplicates, failures, last_ts_us),
    )


Records = list[tuple[int, int, bytes]]
# (lease, records, next_offset[, prepared]) -> the lease advanced past them; `prepared` is what the
# drain's `prepare` made of exactly these records ahead of time, when it did
BatchApplier = Callable[..., Lease]


def record_block(db: Database, consumer: str, exc: BusCorrupt) -> None:
    """Note that `consumer` cannot pass a corrupt record of a partition (health shows it RED)."""
    with db.transaction() as conn:
        conn.execute(
            """INSERT INTO consumer_blocks (consumer, stream, partition, "offset", reason_code, byte_start, byte_end,
                                            detail)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (consumer, stream, partition) DO UPDATE SET "offset" = EXCLUDED."offset",
                   reason_code = EXCLUDED.reason_code, byte_start = EXCLUDED.byte_start,
                   byte_end = EXCLUDED.byte_end, detail = EXCLUDED.detail""",
            (consumer, exc.stream, exc.partition, exc.offset, exc.reason_code, exc.byte_start, exc.byte_end,
             exc.message[:1000]),
        )


def clear_blocks(conn: psycopg.Connection, consumer: str, stream: str, partition: int, below: int) -> None:
    conn.execute(
        """DELETE FROM consumer_blocks WHERE consumer = %s AND stream = %s AND partition = %s AND "offset" < %s""",
        (consumer, stream, partition, below),
    )


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(reason_code, detail) of an exception, safe to store: never its message text, which may
    carry data or connection details; the type, reason code and SQLSTATE say what happened."""
    if isinstance(exc, FpError):
        return exc.reason_code, f"{type(exc).__name__}: {exc.reason_code}"
    sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(exc, "sqlstate", None)
    suffix = f" (SQLSTATE {sqlstate})" if sqlstate else ""
    code = "STORAGE_REJECTED" if isinstance(exc, psycopg.Error) else "APPLY_ERROR"
    return code, f"{type(exc).__name__}{suffix}"


def record_error(db: Database, consumer: str, stream: str, partition: int, exc: BaseException) -> None:
    """Count an error in a row for the partition (a crash loop shows in health); best effort."""
    code, detail = describe_error(exc)
    try:
        with db.transaction() as conn:
            conn.execute(
                """INSERT INTO consumer_errors (consumer, stream, partition, reason_code, detail)
                   VALUES (%s, %s, %s, %s, %s)
                   ON CONFLICT (consumer, stream, partition) DO UPDATE SET
                       reason_code = EXCLUDED.reason_code, detail = EXCLUDED.detail,
                       in_a_row = consumer_errors.in_a_row + 1, last_at = now()""",
                (consumer, stream, partition, code, detail),
            )
    except Exception:  # the database itself may be what failed; health then reports it unreachable
        pass


def _ledger_poison(db: Database, lease: Lease, record: tuple[int, int, bytes], next_offset: int,
                   exc: BaseException) -> Lease:
    """One record that cannot be applied: to the failure ledger at its position; the partition moves on."""
    code, detail = describe_error(exc)
    partition, offset, _ = record
    with db.transaction() as conn:
        record_failures(conn, lease.consumer, lease.stream, [(partition, offset, None, code, detail)])
        bump_counters(conn, lease.consumer, lease.stream, partition, applied=0, duplicates=0, failures=1,
                      last_ts_us=None)
        return advance(conn, lease, next_offset)


def _prepared(prepare: Callable[[Records], Any] | None, records: Records) -> Any:
    """`prepare(records)`, or None (the applier then does the work itself) when there is no
    `prepare` or it failed: whatever is wrong with the records is then found where it is ledgered."""
    if prepare is None or not records:
        return None
    try:
        return prepare(records)
    except Exception:
        return None


def apply_isolating(db: Database, lease: Lease, records: Records, next_offset: int,
                    apply_batch: BatchApplier, prepared: Any = None) -> Lease:
    """Apply a batch; if it fails for a reason that lies in its records, split it until the records
    that cannot be applied stand alone, ledger those, and apply everything else. Transient errors
    (connection lost, fenced) propagate: the batch is retried as a whole later. `prepared` (what was
    made of the whole batch ahead of time) goes to the first attempt only."""
    try:
        if prepared is not None:
            return apply_batch(lease, records, next_offset, prepared)
        return apply_batch(lease, records, next_offset)
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:
        if len(records) == 1:
            return _ledger_poison(db, lease, records[0], next_offset, exc)
    middle = len(records) // 2
    lease = apply_isolating(db, lease, records[:middle], records[middle][1], apply_batch)
    return apply_isolating(db, lease, records[middle:], next_offset, apply_batch)


def drain(db: Database, bus: EventBus, consumer: str, stream: str, partition: int, owner: str, batch_size: int,
          apply_batch: BatchApplier, max_batches: int | None = None,
          prepare: Callable[[Records], Any] | None = None) -> bool:
    """Claim one partition and feed its records to `apply_batch` until caught up (or `max_batches`).

    `apply_batch(lease, records, next_offset)` applies a batch and advances the checkpoint in one
    transaction, returning the new lease. Returns True when the partition was caught up, False when
    it was held by another owner, blocked by a corrupt record, or hit a transient error (recorded
    for health; the next pass retries). No record ever stops the partition: see `apply_isolating`.

    With `prepare` (pure work on a batch's records, such as decoding), the next batch is read and
    prepared on a thread while this one is applied, which mostly waits for Postgres; its result
    reaches `apply_batch` as a fourth argument. Nothing of a batch is applied before its turn.
    """
    try:
        with db.transaction() as conn:
            lease = claim(conn, consumer, stream, partition, owner)
    except TRANSIENT_ERRORS as exc:
        record_error(db, consumer, stream, partition, exc)
        return False
    if lease is None:
        return False

    def fetch(offset: int) -> tuple[int, ReadBatch, Records, Any]:
        batch = bus.read(stream, partition, offset, batch_size)
        records = batch.triples()
        return offset, batch, records, _prepared(prepare, records)

    caught_up = False
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fp-{consumer}-read-ahead") as reader:
            ahead: Future | None = None
            done = 0
            while max_batches is None or done < max_batches:
                fetched = ahead.result() if ahead is not None else None
                ahead = None
                if fetched is None or fetched[0] != lease.next_offset:
                    fetched = fetch(lease.next_offset)
                _, batch, records, prepared = fetched
                more = max_batches is None or done + 1 < max_batches
                if prepare is not None and len(batch) and not batch.caught_up and more:
                    ahead = reader.submit(fetch, batch.next_offset)
                if len(batch):
                    lease = apply_isolating(db, lease, records, batch.next_offset, apply_batch, prepared)
                    done += 1
                if batch.caught_up:
                    caught_up = True
                    break
    except BusCorrupt as exc:
        record_block(db, consumer, exc)
    except Fenced:
        pass  # another worker owns the partition now; nothing of this batch was committed
    except TRANSIENT_ERRORS as exc:
        record_error(db, consumer, stream, partition, exc)
    finally:
        try:
            with db.transaction() as conn:
                release(conn, lease)
        except Exception:  # releasing is best effort; the lease expires anyway
            pass
    return caught_up
