"""featureplane: the feature platform behind real-time fraud decisions.

One import, one object, for notebooks and services::

    from featureplane import FeaturePlane

    with FeaturePlane(home="/data/fp") as fp:          # FP_HOME / FP_PROFILE when omitted
        response = fp.get_features({
            "kind": "get_features_request", "contract_version": "ofp_public_contracts_v0",
            "context_pins": {...}, "as_of_time_utc": "2026-01-03T12:00:00Z",
            "feature_keys": [{"key_type": "account", "key_id": "e_account_7c31d9"}],
            "feature_groups": [{"group_name": "txn_velocity", "group_version": "2.0"}]})
        stored = fp.snapshot(response["snapshot"]["feature_snapshot_hash"])
        frame = fp.sql("SELECT count(*) AS n FROM archive_traffic")   # a polars DataFrame

The customer's folders (pipelines, online, offline, schemas, lake, config, runtime) install beneath
this package: `featureplane.online`, `featureplane.pipelines`, ...
"""

from __future__ import annotations

from featureplane.api import FeaturePlane

__all__ = ["FeaturePlane"]
