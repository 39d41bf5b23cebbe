-- Scale-out: every `fp worker` process beats here once per pass. The live set (beats younger than the
-- lease) splits the partitions of every stream evenly (online/checkpoints.py: fair_share); a dead
-- process drops out when its beat ages past the lease, and its partitions go to the others.
CREATE TABLE worker_heartbeats (
    owner      text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    beat_at    timestamptz NOT NULL DEFAULT now()
);
