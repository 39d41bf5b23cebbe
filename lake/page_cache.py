"""Warming a local table's files into the page cache with one sequential read.

Parquet readers fetch each column chunk with its own small reads. On a cold cache that pattern
costs far more than the bytes: a 5M-transaction dataset build spent 16 s routing the archive
cold against 10 s warm, while reading the same files once, front to back, takes under 2 s. So a
job that is about to scan most of a local table first reads its files sequentially on a
background thread, and the scan behind it finds them cached. Only local files, and only when they
fit comfortably in the memory available (a read that evicts itself would only add work).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

READ_BYTES = 8 << 20
SHARE_OF_AVAILABLE = 0.25  # warm only what fits in this share of MemAvailable


def available_bytes() -> int | None:
    """MemAvailable (Linux), or None when it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def warm(uris: Sequence[str]) -> threading.Thread | None:
    """Start reading the local files among `uris` once, in order, on a daemon thread (returned, so a
    caller or a test may join it); None when there is nothing local or it would not fit."""
    paths = [Path(u.removeprefix("file://")) for u in uris if u.startswith(("/", "file://"))]
    try:
        total = sum(p.stat().st_size for p in paths)
    except OSError:
        return None
    room = available_bytes()
    if not paths or room is None or total > room * SHARE_OF_AVAILABLE:
        return None
    thread = threading.Thread(target=_read_all, args=(paths,), name="fp-page-cache-warm", daemon=True)
    thread.start()
    return thread


def _read_all(paths: list[Path]) -> None:
    buffer = bytearray(READ_BYTES)
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as file:
                while file.readinto(buffer):
                    pass
        except OSError:  # a file compacted away under us: the scan decides what is missing
            continue


__all__ = ["available_bytes", "warm"]
