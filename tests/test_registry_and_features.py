import json
import random

import polars as pl
import pytest

from featureplane.config import LOCK_FILE, default_registry, load_registry, read_group_files
from featureplane.pipelines.features import AS_OF, KEY, contributions, point_features, rolling_features
from featureplane.pipelines.registry import RegistryError, parse_group
from tests import reference
from tests.helpers import T0, S


def test_registry_matches_spec_catalogue():
    registry = default_registry()
    assert sorted(f"{g.group_name}@{g.group_version}" for g in registry.all()) == sorted(reference.GROUPS)
    for label, spec in reference.GROUPS.items():
        group = registry.get(*label.split("@"))
        assert group.ttl_seconds == spec["ttl"]
        expected = set(spec["features"]) | ({"customer_amount_share_1h_of_7d"} if "customer" in label else set())
        assert set(group.feature_names) == expected


def test_digest_ignores_description_but_not_logic():
    raw = read_group_files()[0]
    base = parse_group(raw).digest
    assert parse_group({**raw, "description": "reworded"}).digest == base
    changed = json.loads(json.dumps(raw))
    changed["features"][0]["window"] = "2h"
    assert parse_group(changed).digest != base


def test_changed_published_version_fails_to_load(tmp_path):
    for raw in read_group_files():
        name = f"{raw['group_name']}@{raw['group_version']}.yaml"
        if raw["group_name"] == "card_velocity":
            raw["ttl_seconds"] = 601
        (tmp_path / name).write_text(json.dumps(raw))
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path, LOCK_FILE)
    assert info.value.reason_code == "REGISTRY_DIGEST_MISMATCH"


def random_events(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        events.append({
            "ts_us": T0 + rng.randrange(-8 * 86400, 3600) * S + rng.choice([0, 1, 999_999]),
            "account_id": f"e_account_{rng.randrange(3)}", "card_id": f"e_card_{rng.randrange(4)}",
            "customer_id": f"e_customer_{rng.randrange(3)}", "merchant_id": f"e_merchant_{rng.randrange(3)}",
            "device_id": rng.choice([None, "e_device_0", "e_device_1"]), "amount_minor": rng.randrange(0, 10_000),
            "channel": rng.choice(["card_present", "ecom", "mobile"]), "event_id": f"e{i}", "partition": 0,
            "offset": i,
        })
    return events


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_point_features_agree_with_brute_force(seed):
    registry = default_registry()
    events = random_events(seed, 300)
    frame = pl.DataFrame(events)
    # as-of points on, just after and just before event times, to hit every window edge
    probes = sorted({e["ts_us"] + d for e in events[:40] for d in (0, -1, 1, 300 * S, 3600 * S)})
    for group in registry.all():
        contribs = contributions(frame, group)
        seen = {e[group.key_field] for e in events if e[group.key_field] is not None}
        keys = [*sorted(seen), f"e_{group.key_type}_unseen"]
        queries = pl.DataFrame([(k, t) for k in keys for t in probes], schema={KEY: pl.String, AS_OF: pl.Int64},
                               orient="row")
        result = point_features(contribs, queries, group)
        assert result.height == queries.height
        for row in result.iter_rows(named=True):
            expected, last = reference.features(events, f"{group.group_name}@{group.group_version}", row[KEY],
                                                row[AS_OF])
            assert {k: row[k] for k in expected} == expected
            assert row["last_update_us"] == last


def test_rolling_features_agree_with_brute_force():
    registry = default_registry()
    events = random_events(9, 250)
    frame = pl.DataFrame(events)
    for group in registry.all():
        contribs = contributions(frame, group, carry=("offset",))
        result = rolling_features(contribs, group, "offset")
        by_offset = {r["offset"]: r for r in result.iter_rows(named=True)}
        for e in events:
            key = e[group.key_field]
            if key is None:
                assert e["offset"] not in by_offset
                continue
            expected, _ = reference.features(events, f"{group.group_name}@{group.group_version}", key, e["ts_us"])
            assert {k: by_offset[e["offset"]][k] for k in expected} == expected
