"""Small builders for hand-written test events and requests."""

from __future__ import annotations

import json
from typing import Any

from featureplane.pipelines.timefmt import format_ts, parse_rfc3339

PINS = {"scenario_id": "scn_t", "run_id": "run_t", "manifest_fingerprint": "mf_t", "parameter_hash": "ph_t"}
T0 = parse_rfc3339("2026-01-03T12:00:00Z")
S = 1_000_000


def txn(n: int, ts_us: int, *, account: str = "a1", card: str = "c1", merchant: str = "m1",
        device: str | None = "d1", customer: str = "u1", amount: int = 100, channel: str = "ecom",
        pins: dict[str, str] | None = None, run: str = "prun_t", event_id: str | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id or f"txn_{n}", "event_type": "transaction_event", "schema_version": "v1",
        "ts_utc": format_ts(ts_us), "context_pins": pins or PINS, "seed": 1, "platform_run_id": run,
        "payload": {
            "flow_id": f"flow_{n}", "merchant_id": f"e_merchant_{merchant}", "arrival_seq": n,
            "account_id": f"e_account_{account}", "card_id": f"e_card_{card}", "customer_id": f"e_customer_{customer}",
            "device_id": None if device is None else f"e_device_{device}", "amount_minor": amount,
            "currency": "EUR", "channel": channel,
        },
    }


def lines(events: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(e) for e in events]


def request(keys: list[tuple[str, str]], groups: list[tuple[str, str]], as_of_us: int,
            pins: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "kind": "get_features_request", "contract_version": "ofp_public_contracts_v0",
        "context_pins": pins or PINS, "as_of_time_utc": format_ts(as_of_us),
        "feature_keys": [{"key_type": t, "key_id": f"e_{t}_{i}"} for t, i in keys],
        "feature_groups": [{"group_name": n, "group_version": v} for n, v in groups],
    }


def serve(app: Any, req: dict[str, Any]) -> dict[str, Any]:
    """One get_features call on a fresh in-process server."""
    from featureplane.online.serving import FeatureServer

    server = FeatureServer(app.db, app.bus, app.registry)
    try:
        return server.get_features(req)
    finally:
        server.close()


def kill_9_repeatedly(app: Any, fp_home: Any, script: str, delays: tuple[float, ...], *, wait_lines: int = 1) -> None:
    """Run `script` (Python, on the app's database and FP_HOME) once per delay: wait until it has
    printed `wait_lines` lines, let it work for the delay, then SIGKILL it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "FP_PG_DSN": app.db.dsn.reveal(), "FP_HOME": str(fp_home), "PYTHONPATH": str(root)}
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, cwd=root)
        assert proc.stdout is not None
        for _ in range(wait_lines):
            proc.stdout.readline()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def run_fp(app: Any, fp_home: Any, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None,
           timeout: float = 180) -> tuple[int, str, str]:
    """Run the real `fp` command on the app's database and FP_HOME; (exit code, stdout, stderr)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    full_env = {**os.environ, "FP_PG_DSN": app.db.dsn.reveal(), "FP_HOME": str(fp_home), "PYTHONPATH": str(root),
                **(env or {})}
    done = subprocess.run([sys.executable, "-m", "featureplane.runtime.cli", *args], env=full_env, cwd=root,
                          input=stdin, capture_output=True, timeout=timeout)
    return done.returncode, done.stdout.decode(), done.stderr.decode()
