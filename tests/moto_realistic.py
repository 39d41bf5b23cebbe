"""moto's server with Kinesis sequence numbers as real Kinesis writes them: 56 decimal digits,
far above 2^63, different per shard, with gaps between consecutive records.

moto numbers records 1, 2, 3, which hides every bug of a position stored as a 64-bit integer or a
JSON number. Run as `python -m tests.moto_realistic -H 127.0.0.1 -p PORT` (the arguments of
`moto.server`).
"""

from __future__ import annotations

import sys

# the shape of a real sequence number (shardId-000000000000 of a stream created in 2024)
REAL_BASE = 49590338271490256608559692538361571095921575989136588898
SHARD_SPACING = 10**40  # each shard's numbers start apart, as they do on Kinesis
GAP = 2**66 + 12_345  # consecutive records of a shard differ by far more than one


def patch_sequence_numbers() -> None:
    from moto.kinesis.models import Record, Shard

    def put_record(self: Shard, partition_key: str, data: str, explicit_hash_key: str) -> str:
        if self.records:
            sequence_number = self.get_max_sequence_number() + GAP
        else:
            sequence_number = REAL_BASE + self._shard_id * SHARD_SPACING
        self.records[sequence_number] = Record(partition_key, data, sequence_number, explicit_hash_key)
        return str(sequence_number)

    Shard.put_record = put_record  # type: ignore[method-assign]


if __name__ == "__main__":
    assert len(str(REAL_BASE)) == 56
    patch_sequence_numbers()
    from moto.server import main

    main(sys.argv[1:])
