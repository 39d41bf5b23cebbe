"""Deterministic, seeded fraud-like traffic with its context events and labels.

The same seed and size always give the same events, byte for byte. Shapes that matter to a
fraud feature store are all present: hot merchants (Zipf-skewed), devices shared across
accounts, card-testing bursts (many small amounts on one card across merchants within minutes),
account-takeover sprees (a new device, large amounts, short time) and label assertions whose
observed time lags the transaction, some later corrected.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from featureplane.pipelines.timefmt import format_ts, parse_rfc3339
from featureplane.schemas.streams import ARRIVAL_ENTITIES, ARRIVAL_EVENTS, FLOW_ANCHOR, LABELS, TRAFFIC

SECOND = 1_000_000
CHANNELS = ("card_present", "ecom", "mobile")


@dataclass(frozen=True)
class SimulationPlan:
    seed: int = 7
    transactions: int = 500
    start_utc: str = "2026-01-03T00:00:00Z"
    mean_gap_seconds: float = 20.0
    accounts: int | None = None  # default scales with the size
    merchants: int | None = None
    platform_run_id: str | None = None

    def pins(self) -> dict[str, str]:
        return {
            "scenario_id": "scn_fraud_sim_v1",
            "run_id": f"run_sim_{self.seed:06d}",
            "manifest_fingerprint": f"mf_sim_{self.seed:06d}",
            "parameter_hash": f"ph_{self.transactions:010d}",
        }

    def run_id(self) -> str:
        return self.platform_run_id or f"prun_sim_{self.seed:06d}"


def _envelope(plan: SimulationPlan, event_type: str, event_id: str, ts_us: int,
              payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": event_type,
        "schema_version": "v1",
        "ts_utc": format_ts(ts_us),
        "emitted_at_utc": format_ts(ts_us),
        "context_pins": plan.pins(),
        "seed": plan.seed,
        "platform_run_id": plan.run_id(),
        "payload": payload,
    }


def simulate(plan: SimulationPlan) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (stream, event) in generation order (event time mostly ascending)."""
    rng = random.Random(plan.seed)
    n = plan.transactions
    n_accounts = plan.accounts or max(10, n // 12)
    n_merchants = plan.merchants or max(5, n // 60)
    accounts = [f"e_account_{i:07x}" for i in range(n_accounts)]
    cards = {a: [f"e_card_{i:07x}{k}" for k in range(1 + (i % 3 == 0))] for i, a in enumerate(accounts)}
    n_devices = max(5, n_accounts * 3 // 4)
    devices = [f"e_device_{i:07x}" for i in range(n_devices)]
    home_device = {a: devices[rng.randrange(n_devices)] for a in accounts}  # shared: fewer devices
    merchants = [f"e_merchant_{i:05x}" for i in range(n_merchants)]
    # Zipf: hot merchants. Cumulative weights once: `choices(weights=...)` sums them on every call,
    # which made a run quadratic (merchants grow with the run); the draws are the same either way
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) ** 1.2 for rank in range(n_merchants)))
    arrival_seq = dict.fromkeys(merchants, 0)
    t = parse_rfc3339(plan.start_utc)
    emitted = 0
    serial = 0
    labels: list[tuple[int, str, str, int]] = []  # (observed_us, flow_id, label, txn_us), emitted last

    def txn(account: str, card: str, device: str | None, merchant: str, amount: int, channel: str,
            ts: int, fraud: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        nonlocal serial
        serial += 1
        flow_id = f"flow_{plan.seed}_{serial:09d}"
        seq = arrival_seq[merchant]
        arrival_seq[merchant] = seq + 1
        customer = "e_customer_" + account.removeprefix("e_account_")
        yield ARRIVAL_EVENTS, _envelope(plan, "arrival_event", f"ae_{flow_id}", ts,
                                        {"merchant_id": merchant, "arrival_seq": seq, "channel": channel})
        yield ARRIVAL_ENTITIES, _envelope(plan, "arrival_entities", f"aen_{flow_id}", ts, {
            "merchant_id": merchant, "arrival_seq": seq, "account_id": account, "card_id": card,
            "customer_id": customer, "device_id": device})
        yield TRAFFIC, _envelope(plan, "transaction_event", f"txn_{flow_id}", ts, {
            "flow_id": flow_id, "merchant_id": merchant, "arrival_seq": seq, "account_id": account,
            "card_id": card, "customer_id": customer, "device_id": device, "amount_minor": amount,
            "currency": "EUR", "channel": channel})
        yield FLOW_ANCHOR, _envelope(plan, "flow_anchor", f"fa_{flow_id}", ts,
                                     {"flow_id": flow_id, "merchant_id": merchant, "arrival_seq": seq})
        if fraud or rng.random() < 0.3:
            delay = rng.randrange(3600, 14 * 86400) * SECOND
            labels.append((ts + delay, flow_id, "fraud" if fraud else "legit", ts))
            if fraud and rng.random() < 0.2:  # an early wrong assertion, corrected later
                labels.append((ts + delay // 3, flow_id, "legit", ts))

    while emitted < n:
        t += max(1, int(rng.expovariate(1.0 / plan.mean_gap_seconds) * SECOND))
        account = accounts[rng.randrange(n_accounts)]
        roll = rng.random()
        if roll < 0.01 and n - emitted >= 8:  # card-testing burst
            card = cards[account][0]
            for _ in range(min(n - emitted, rng.randrange(5, 15))):
                t += rng.randrange(2, 40) * SECOND
                merchant = merchants[rng.randrange(n_merchants)]
                yield from txn(account, card, None, merchant, rng.randrange(50, 300), "ecom", t, True)
                emitted += 1
        elif roll < 0.015 and n - emitted >= 5:  # account takeover spree on a new device
            device = devices[rng.randrange(n_devices)]
            for _ in range(min(n - emitted, rng.randrange(3, 8))):
                t += rng.randrange(30, 300) * SECOND
                merchant = rng.choices(merchants, cum_weights=cum_weights)[0]
                card = rng.choice(cards[account])
                yield from txn(account, card, device, merchant, rng.randrange(50_000, 500_000),
                               "mobile", t, True)
                emitted += 1
        else:
            merchant = rng.choices(merchants, cum_weights=cum_weights)[0]
            channel = CHANNELS[rng.randrange(3)]
            device = None if channel == "card_present" else home_device[account]
            card = rng.choice(cards[account])
            amount = int(rng.lognormvariate(8.0, 1.1))
            yield from txn(account, card, device, merchant, amount, channel, t, False)
            emitted += 1
    labels.sort()
    for n_label, (observed, flow_id, label, txn_us) in enumerate(labels):
        yield LABELS, _envelope(plan, "label_assertion", f"lab_{n_label:09d}_{flow_id}", observed, {
            "flow_id": flow_id, "label": label, "effective_time": format_ts(txn_us),
            "observed_time": format_ts(observed)})


def apply_disorder(events: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """Move a `fraction` of events up to 64 places out of event-time order (deterministically)."""
    if fraction <= 0:
        return events
    rng = random.Random(seed ^ 0x5EED)
    out = list(events)
    for i in range(len(out)):
        if rng.random() < fraction:
            j = min(len(out) - 1, max(0, i + rng.randrange(-64, 65)))
            out[i], out[j] = out[j], out[i]
    return out


MIX_GROUPS = (("card_velocity", "1.0"), ("device_reuse", "1.0"), ("merchant_activity", "1.0"),
              ("txn_velocity", "2.0"))


def request_mix(plan: SimulationPlan, count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """`count` get_features requests over the run: 4 keys (the account, card, merchant and device,
    or customer when there is no device, of a sampled transaction) x 4 groups, as of a moment
    0-120 s after that transaction."""
    traffic = [e for stream, e in simulate(plan) if stream == TRAFFIC]
    rng = random.Random(seed)
    requests = []
    for n in range(count):
        event = traffic[rng.randrange(len(traffic))]
        p = event["payload"]
        keys = [("account", p["account_id"]), ("card", p["card_id"]), ("merchant", p["merchant_id"])]
        groups = [{"group_name": g, "group_version": v} for g, v in MIX_GROUPS]
        if p["device_id"] is not None:
            keys.append(("device", p["device_id"]))
        else:
            keys.append(("customer", p["customer_id"]))
            groups[1] = {"group_name": "customer_spend", "group_version": "1.0"}
        as_of = parse_rfc3339(event["ts_utc"]) + rng.randrange(0, 120) * SECOND
        requests.append({
            "kind": "get_features_request", "contract_version": "ofp_public_contracts_v0",
            "request_id": f"req_{seed}_{n}", "context_pins": plan.pins(), "as_of_time_utc": format_ts(as_of),
            "feature_keys": [{"key_type": t, "key_id": k} for t, k in keys], "feature_groups": groups,
        })
    return requests
