"""Per-partition checkpoints with leases and a fencing epoch.

A consumer claims a partition (bumping its epoch) and commits each batch with a compare-and-set
on (epoch, next_offset) in the same transaction as its state. A second or stalled worker on the
same partition fails the compare-and-set and rolls back: a batch can never be applied twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from online.bus.base import EventBus
from runtime.errors import TransientError
from runtime.postgres import Database

LEASE_SECONDS = 30


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
    return Lease(consumer, stream, partition, owner, row[0], row[1])


def advance(conn: psycopg.Connection, lease: Lease, new_offset: int) -> Lease:
    """Move the checkpoint to `new_offset` inside the caller's transaction, or raise `Fenced`."""
    cur = conn.execute(
        """UPDATE consumer_checkpoints
              SET next_offset = %s, lease_until = now() + make_interval(secs => %s), updated_at = now()
            WHERE consumer = %s AND stream = %s AND partition = %s AND epoch = %s AND next_offset = %s""",
        (new_offset, LEASE_SECONDS, lease.consumer, lease.stream, lease.partition, lease.epoch,
         lease.next_offset),
    )
    if cur.rowcount != 1:
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


BatchApplier = Callable[[Lease, list[tuple[int, int, bytes]], int], Lease]


def drain(db: Database, bus: EventBus, consumer: str, stream: str, partition: int, owner: str, batch_size: int,
          apply_batch: BatchApplier, max_batches: int | None = None) -> None:
    """Claim one partition and feed its records to `apply_batch` until caught up (or `max_batches`).

    `apply_batch(lease, records, next_offset)` applies a batch and advances the checkpoint in one
    transaction, returning the new lease. A partition someone else holds is skipped.
    """
    with db.transaction() as conn:
        lease = claim(conn, consumer, stream, partition, owner)
    if lease is None:
        return
    try:
        done = 0
        while max_batches is None or done < max_batches:
            batch = bus.read(stream, partition, lease.next_offset, batch_size)
            if batch.records:
                lease = apply_batch(lease, [(r.partition, r.offset, r.value) for r in batch.records],
                                    batch.next_offset)
                done += 1
            if batch.caught_up:
                break
    finally:
        try:
            with db.transaction() as conn:
                release(conn, lease)
        except Exception:  # releasing is best effort; the lease expires anyway
            pass
