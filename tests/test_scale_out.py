"""Scale-out rule: live worker processes (heartbeats in Postgres) split every stream's partitions
evenly; a process that leaves, or whose beat ages past the lease, hands its share to the others."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from featureplane.online.checkpoints import LEASE_SECONDS, beat, fair_share, leave


@given(partitions=st.integers(1, 64), workers=st.integers(1, 12))
def test_shares_cover_every_partition_once_and_differ_by_at_most_one(partitions, workers):
    items = list(range(partitions))
    live = sorted(f"host:{1000 + w}" for w in range(workers))
    shares = [fair_share(items, live, owner) for owner in live]
    assert sorted(p for share in shares for p in share) == items  # every partition, exactly once
    sizes = [len(s) for s in shares]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) == -(-partitions // workers)


def test_a_worker_not_yet_seen_takes_everything():
    assert fair_share([0, 1, 2, 3], ["a", "b"], "c") == [0, 1, 2, 3]


def test_heartbeats_define_who_is_live(db):
    with db.transaction() as conn:
        assert beat(conn, "b:2") == ["b:2"]
        assert beat(conn, "a:1") == ["a:1", "b:2"]
        assert beat(conn, "c:3") == ["a:1", "b:2", "c:3"]
    with db.transaction() as conn:
        live = beat(conn, "a:1")
        assert [fair_share([0, 1, 2, 3], live, o) for o in live] == [[0, 3], [1], [2]]
        leave(conn, "c:3")  # a clean stop hands its share over at once
        assert beat(conn, "a:1") == ["a:1", "b:2"]
        # a dead process: its beat ages past the lease and it drops out
        conn.execute("UPDATE worker_heartbeats SET beat_at = now() - make_interval(secs => %s) WHERE owner = 'b:2'",
                     (LEASE_SECONDS + 1,))
        live = beat(conn, "a:1")
    assert live == ["a:1"] and fair_share([0, 1, 2, 3], live, "a:1") == [0, 1, 2, 3]
