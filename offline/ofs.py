"""`fp ofs build`: admit a BuildIntent into the run ledger and drive it to a terminal state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from featureplane.offline.datasets import build_dataset, publish
from featureplane.offline.intents import IntentRejected, parse_intent
from featureplane.offline.ledger import RunLedger
from featureplane.offline.parity import check_snapshots, load_stored
from featureplane.pipelines.errors import FpError, TerminalError, TransientError


def run_intent(app: Any, raw: object, progress: Callable[[int, str], None] | None = None) -> dict[str, Any]:
    """Run (or find the finished run of) one intent; returns the manifest / result JSON.

    `progress(total, step)` is told the number of steps first (step ""), then each finished step."""
    intent = parse_intent(raw, app.registry, app.bus.offset_style)
    ledger = RunLedger(app.db)
    run, _ = ledger.admit(intent)
    if run.state == "DONE":
        assert run.result is not None
        return run.result
    if run.state == "FAILED":
        raise TerminalError(run.reason_code or "RUN_FAILED", f"run {run.run_key} failed; use a new request_id")
    if run.state == "RUNNING":
        raise TransientError("RUN_IN_PROGRESS", f"run {run.run_key} is running")
    run = ledger.transition(run.run_key, "RUNNING", detail="publish retry" if run.state == "PUBLISH_PENDING" else "")
    try:
        if intent.intent_kind == "dataset_build":
            def step(name: str, total: int) -> None:
                if progress:
                    progress(total, "")  # the total grows as the build learns its units
                    progress(total, name)

            built = build_dataset(app.lake, intent, step)
        elif intent.intent_kind == "parity_rebuild":
            result = _parity_rebuild(app, intent)
            return ledger.transition(run.run_key, "DONE", result=result).result or result
        else:
            raise IntentRejected("INTENT_KIND_NOT_SUPPORTED", "forensic_rebuild is not supported in v0")
    except FpError as exc:
        ledger.transition(run.run_key, "FAILED", reason_code=exc.reason_code, detail=exc.message)
        raise
    try:
        manifest = publish(app.store, built, {"run_key": run.run_key, "request_id": intent.request_id})
    except FpError as exc:
        if exc.retryable:
            ledger.transition(run.run_key, "PUBLISH_PENDING", reason_code=exc.reason_code, detail=exc.message)
        else:
            ledger.transition(run.run_key, "FAILED", reason_code=exc.reason_code, detail=exc.message)
        raise
    except OSError as exc:
        ledger.transition(run.run_key, "PUBLISH_PENDING", reason_code="PUBLISH_FAILED", detail=type(exc).__name__)
        raise TransientError("PUBLISH_FAILED", "the dataset could not be published; run the intent again") from None
    finally:
        built.discard()  # the local files of the build; published or not, a retry builds again
    ledger.transition(run.run_key, "DONE", fingerprint=manifest["dataset_fingerprint"],
                      manifest_id=manifest["manifest_id"], result=manifest)
    return manifest


def _parity_rebuild(app: Any, intent: Any) -> dict[str, Any]:
    """Rebuild the stored snapshots served at exactly this basis and pins."""
    stored = [s for s in load_stored(app.db, app.store, run_id=intent.context_pins["run_id"])
              if s["provenance"]["input_basis"] == intent.replay_basis
              and s["provenance"]["context_pins"] == intent.context_pins]
    outcomes = check_snapshots(app.lake, app.registry, stored)
    return {"kind": "parity_rebuild_result", "request_id": intent.request_id, "checked": len(outcomes),
            "matched": sum(o.matched for o in outcomes), "mismatched": sum(not o.matched for o in outcomes),
            "mismatches": [o.__dict__ for o in outcomes if not o.matched][:20]}
