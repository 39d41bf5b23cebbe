"""A brute-force reference for SPEC §4: plain Python loops over events, no polars."""

from __future__ import annotations

from typing import Any

WINDOWS = {"5m": 300, "1h": 3600, "24h": 86400, "7d": 604800}
GROUPS: dict[str, dict[str, Any]] = {
    "txn_velocity@1.0": {"key": "account_id", "ttl": 600, "features": {
        "txn_count_5m": ("count", None, "5m"), "txn_count_1h": ("count", None, "1h"),
        "txn_count_24h": ("count", None, "24h"), "txn_amount_sum_1h_minor": ("sum", "amount_minor", "1h"),
        "txn_amount_sum_24h_minor": ("sum", "amount_minor", "24h"),
        "txn_amount_max_24h_minor": ("max", "amount_minor", "24h")}},
    "card_velocity@1.0": {"key": "card_id", "ttl": 600, "features": {
        "card_txn_count_1h": ("count", None, "1h"), "card_txn_count_24h": ("count", None, "24h"),
        "card_amount_sum_24h_minor": ("sum", "amount_minor", "24h"),
        "card_distinct_merchants_24h": ("distinct", "merchant_id", "24h"),
        "card_not_present_count_24h": ("cnp", None, "24h")}},
    "merchant_activity@1.0": {"key": "merchant_id", "ttl": 3600, "features": {
        "merchant_txn_count_1h": ("count", None, "1h"), "merchant_txn_count_24h": ("count", None, "24h"),
        "merchant_txn_count_7d": ("count", None, "7d"),
        "merchant_amount_sum_24h_minor": ("sum", "amount_minor", "24h"),
        "merchant_distinct_cards_1h": ("distinct", "card_id", "1h")}},
    "device_reuse@1.0": {"key": "device_id", "ttl": 86400, "features": {
        "device_txn_count_24h": ("count", None, "24h"),
        "device_distinct_accounts_24h": ("distinct", "account_id", "24h"),
        "device_distinct_cards_7d": ("distinct", "card_id", "7d")}},
    "customer_spend@1.0": {"key": "customer_id", "ttl": 3600, "features": {
        "customer_amount_sum_1h_minor": ("sum", "amount_minor", "1h"),
        "customer_amount_sum_7d_minor": ("sum", "amount_minor", "7d"),
        "customer_txn_count_7d": ("count", None, "7d")}},
}
GROUPS["txn_velocity@2.0"] = {"key": "account_id", "ttl": 600, "features": {
    **GROUPS["txn_velocity@1.0"]["features"], "txn_count_7d": ("count", None, "7d"),
    "txn_amount_mean_1h_minor": ("mean", "amount_minor", "1h")}}


def features(events: list[dict[str, Any]], group: str, key_id: str, as_of_us: int) -> tuple[dict, int | None]:
    """events: flattened dicts with ts_us and payload fields (already deduplicated)."""
    spec = GROUPS[group]
    mine = [e for e in events if e[spec["key"]] == key_id]
    out: dict[str, Any] = {}
    longest = 0
    for name, (agg, field, window) in spec["features"].items():
        width = WINDOWS[window] * 1_000_000
        longest = max(longest, width)
        inside = [e for e in mine if as_of_us - width < e["ts_us"] <= as_of_us]
        if agg == "count":
            out[name] = len(inside)
        elif agg == "cnp":
            out[name] = sum(1 for e in inside if e["channel"] != "card_present")
        elif agg == "sum":
            out[name] = sum(e[field] for e in inside)
        elif agg == "max":
            out[name] = max((e[field] for e in inside), default=None)
        elif agg == "mean":
            out[name] = float(sum(e[field] for e in inside)) / len(inside) if inside else None
        else:
            out[name] = len({e[field] for e in inside})
    if group == "customer_spend@1.0":
        week = out["customer_amount_sum_7d_minor"]
        out["customer_amount_share_1h_of_7d"] = None if week == 0 else float(out["customer_amount_sum_1h_minor"]) / week
    last = max((e["ts_us"] for e in mine if as_of_us - longest < e["ts_us"] <= as_of_us), default=None)
    return out, last


def flatten(event: dict[str, Any]) -> dict[str, Any]:
    from featureplane.pipelines.timefmt import parse_rfc3339

    return {**event["payload"], "ts_us": parse_rfc3339(event["ts_utc"])}
