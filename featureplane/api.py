"""`FeaturePlane`: the single entry point for notebooks and services (SPEC §9)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl


class FeaturePlane:
    """The platform of one FP_HOME and profile, opened lazily; a context manager that releases what
    it opened (database connections, the embedded server handle stays running for other processes).

    >>> with FeaturePlane(home="/tmp/fp") as fp:          # doctest: +SKIP
    ...     fp.get_features(request)["kind"]
    'get_features_response'
    """

    def __init__(self, home: str | os.PathLike[str] | None = None, profile: str | None = None) -> None:
        from featureplane.runtime.app import App
        from featureplane.runtime.settings import load_settings

        env = dict(os.environ)
        if home is not None:
            env["FP_HOME"] = str(Path(home).resolve())
        if profile is not None:
            env["FP_PROFILE"] = profile
        self._app = App(load_settings(env))
        self._server: Any = None
        self._context: Any = None
        self._initialised = False

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FeaturePlane:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections this object opened; pending snapshots are flushed first."""
        if self._server is not None:
            from featureplane.online.snapshot_store import flush_outbox

            with contextlib.suppress(Exception):  # durable in the outbox; the next flush persists them
                flush_outbox(self._app.db, self._app.store, self._app.lake)
            self._server.close()
            self._server = None
        if self._context is not None:
            self._context.close()
            self._context = None

    def init(self) -> list[str]:
        """Create or migrate everything the profile needs (idempotent); returns migrations applied."""
        self._initialised = True
        return self._app.init()

    def _ready(self) -> Any:
        if not self._initialised:
            self.init()
        return self._app

    # -- serving ---------------------------------------------------------------------------
    def get_features(self, request: dict[str, Any]) -> dict[str, Any]:
        """Serve one GetFeaturesRequest: a get_features_response, or an error_response (never raises
        for a bad request or an unavailable dependency)."""
        if self._server is None:
            from featureplane.online.serving import FeatureServer

            app = self._ready()
            self._server = FeatureServer(app.db, app.bus, app.registry)
        return self._server.get_features(request)

    def snapshot(self, snapshot_hash: str) -> dict[str, Any]:
        """The persisted response with this `feature_snapshot_hash` (raises `FpError` NOT_FOUND)."""
        from featureplane.online.snapshot_store import get_snapshot

        app = self._ready()
        return get_snapshot(app.db, app.store, snapshot_hash)

    def context_resolve(self, platform_run_id: str, run_id: str, flow_id: str) -> dict[str, Any]:
        """Join-plane read: the flow's join frame with readiness, reasons and evidence (SPEC §7)."""
        if self._context is None:
            from featureplane.online.context_store import ContextReader

            self._context = ContextReader(self._ready().db)
        return self._context.resolve(platform_run_id, run_id, flow_id)

    # -- offline and analysis --------------------------------------------------------------
    def sql(self, query: str, *, allow_external: bool = False) -> pl.DataFrame:
        """One duckdb statement over the lakes (locked to them unless `allow_external`), as polars."""
        from featureplane.lake.query import run_query

        app = self._ready()
        result = run_query(app.lake, app.store, query, allow_external=allow_external)
        return pl.DataFrame(result["rows"], schema=result["columns"], orient="row")

    def build_dataset(self, intent: dict[str, Any]) -> dict[str, Any]:
        """Run a BuildIntent (dataset_build): returns the manifest."""
        from featureplane.offline.ofs import run_intent

        return run_intent(self._ready(), intent)

    def parity(self, *, run_id: str | None = None, sample: int | None = None, seed: int = 0) -> dict[str, Any]:
        """Rebuild served snapshots from the archive and compare hashes: {checked, matched, mismatched, ...}."""
        from featureplane.offline.parity import run_parity

        app = self._ready()
        return run_parity(app.db, app.store, app.lake, app.registry, run_id=run_id, sample=sample, seed=seed)

    def report(self, out: str | os.PathLike[str] | None = None, *, dataset: str | None = None,
               run_id: str | None = None) -> Path:
        """Write the HTML report (what `fp report` draws) and return its path.

        >>> with FeaturePlane(home="/tmp/fp") as fp:          # doctest: +SKIP
        ...     fp.report("run.html", run_id="run_sim_000007").name
        'run.html'
        """
        from featureplane.runtime.report_page import write_report

        where, _, _ = write_report(self._ready(), None if out is None else Path(out), dataset=dataset, run_id=run_id)
        return where

    def health(self) -> dict[str, Any]:
        """GREEN/AMBER/RED per component, counters and lag (what `fp health` prints)."""
        from featureplane.online.health import health_report

        return health_report(self._ready())

    @property
    def registry(self) -> Any:
        """The feature registry: every group version with its features and definition digest."""
        return self._app.registry
