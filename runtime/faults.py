"""Labelled crash points for the fault matrix (tests/faults, bench/faults.py).

`FP_CRASH_AT=<label>[:<n>]` makes the process SIGKILL itself the n-th time (default 1st) it passes
`crash_point(label)`: a real kill -9 at an exact place, not a simulated exception.
`FP_PAUSE_AT=<label>` makes it SIGSTOP itself there once (a zombie, resumed later with SIGCONT).
Unset (always, outside fault runs) a crash point costs a comparison and a dict lookup.
"""

from __future__ import annotations

import os
import signal
from typing import Any

LABELS = (
    "ofp_after_read",           # batch decoded, nothing written
    "ofp_after_state_write",    # contributions and buckets written, checkpoint not yet moved
    "ofp_before_commit",        # checkpoint moved in the open transaction, COMMIT not sent
    "ofp_commit_unknown",       # COMMIT sent, reply never read: the outcome is unknown to the worker
    "ofp_after_commit",         # committed, before the next batch
    "archive_after_files",      # Delta data files written, the commit not yet made
    "archive_after_commit",     # Delta commit made, before the next batch
)

_pause = os.environ.get("FP_PAUSE_AT", "")  # SIGSTOP here once: a zombie to resume with SIGCONT
_spec = os.environ.get("FP_CRASH_AT", "")
_label, _, _nth = _spec.partition(":")
_remaining = {_label: int(_nth or "1")} if _label else {}


def crash_point(label: str) -> None:
    """SIGKILL this process here when FP_CRASH_AT names `label` (on its n-th pass); SIGSTOP it
    (once) when FP_PAUSE_AT names it."""
    global _pause
    if label == _pause:
        _pause = ""
        os.kill(os.getpid(), signal.SIGSTOP)
    if label in _remaining:
        _remaining[label] -= 1
        if _remaining[label] == 0:
            os.kill(os.getpid(), signal.SIGKILL)


def commit_or_crash(conn: Any, label: str) -> None:
    """COMMIT `conn`; at `label`, send COMMIT and die before reading the reply (outcome unknown)."""
    if label in _remaining and _remaining[label] == 1:
        conn.pgconn.send_query(b"COMMIT")
        conn.pgconn.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    crash_point(label)
    conn.commit()
