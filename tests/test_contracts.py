"""The JSON Schema contracts and the fast validators agree on the same examples."""

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from featureplane.pipelines.errors import RejectedEvent
from featureplane.schemas.envelope import normalize_event
from tests.helpers import T0, request, txn

CONTRACTS = Path(__file__).resolve().parent.parent / "schemas" / "contracts"


def validator(name: str) -> Draft202012Validator:
    schemas = {p.name: json.loads(p.read_text()) for p in CONTRACTS.glob("*.schema.json")}
    registry = Registry().with_resources(
        (f"featureplane/{n}", Resource.from_contents(s)) for n, s in schemas.items())
    return Draft202012Validator(schemas[name], registry=registry)


def test_schemas_are_valid_json_schema():
    for path in CONTRACTS.glob("*.schema.json"):
        Draft202012Validator.check_schema(json.loads(path.read_text()))


@pytest.mark.parametrize(("mutate", "valid"), [
    (lambda e: None, True),
    (lambda e: e.update(schema_version="v2"), False),
    (lambda e: e.pop("seed"), False),
    (lambda e: e.update(seed=-1), False),
    (lambda e: e.update(seed=2**63), False),
    (lambda e: e.update(seed=2**63 - 1), True),
    (lambda e: e.update(event_id="has space"), False),
    (lambda e: e["context_pins"].update(run_id=".."), False),
    (lambda e: e.update(ts_utc="2026-01-03 12:00"), False),
    (lambda e: e.update(extra=1), False),
    (lambda e: e["payload"].update(card_id="4111111111111111"), False),
    (lambda e: e["payload"].update(amount_minor=-5), False),
    (lambda e: e["payload"].update(amount_minor=2**53), False),
    (lambda e: e["payload"].update(amount_minor=2**53 - 1), True),
    (lambda e: e["payload"].update(channel="atm"), False),
    (lambda e: e["payload"].update(device_id=None), True),
    (lambda e: e["payload"].pop("currency"), False),
    (lambda e: e["payload"].update(unknown_field="kept"), True),
    (lambda e: e.update(event_type="flow_anchor"), True),  # its fields are there; the rest are kept
    (lambda e: e.update(event_type="arrival_event"), True),
    (lambda e: e.update(event_type="label_assertion", payload={
        "flow_id": "f1", "label": "fraud", "effective_time": "2026-01-01T00:00:00Z",
        "observed_time": e["ts_utc"]}), True),
    (lambda e: e.update(event_type="label_assertion", payload={"flow_id": "f1", "label": "maybe",
                                                               "effective_time": "x", "observed_time": e["ts_utc"]}),
     False),
])
def test_envelope_schema_agrees_with_validator(mutate, valid):
    event = copy.deepcopy(txn(1, T0))
    mutate(event)
    schema_ok = validator("envelope.schema.json").is_valid(event)
    try:
        normalize_event(event)
        code_ok = True
    except RejectedEvent:
        code_ok = False
    assert (schema_ok, code_ok) == (valid, valid)


def test_request_and_error_examples_match_their_schemas():
    assert validator("get_features_request.schema.json").is_valid(
        request([("account", "a1")], [("txn_velocity", "1.0")], T0))
    from featureplane.pipelines.snapshot import error_response

    assert validator("error_response.schema.json").is_valid(error_response("NOT_FOUND", "x", False, None))


def test_served_response_matches_the_response_schema(app):
    from featureplane.online.admission import Publisher
    from featureplane.online.ofp_worker import OfpWorker
    from featureplane.online.serving import FeatureServer
    from tests.helpers import S, lines

    Publisher(app.db, app.bus).publish("fp.bus.traffic.fraud.v1", lines([txn(i, T0 + i * S) for i in range(5)]), "t")
    OfpWorker(app.db, app.bus, app.registry).run_until_idle()
    server = FeatureServer(app.db, app.bus, app.registry)
    response = server.get_features(request([("account", "a1"), ("device", "zz")],
                                           [("txn_velocity", "2.0"), ("device_reuse", "1.0")], T0 + 9 * S))
    server.close()
    assert response["kind"] == "get_features_response"
    check = validator("get_features_response.schema.json")
    assert check.is_valid(response), list(check.iter_errors(response))[:1]
    broken = copy.deepcopy(response)
    broken["snapshot"]["feature_snapshot_hash"] = "sha256:xyz"
    assert not check.is_valid(broken)


BASIS = {"stream_name": "fp.bus.traffic.fraud.v1", "watermark_basis": {"0": 10, "1": 3}}


def _intent() -> dict:
    return {"request_id": "r1", "intent_kind": "dataset_build",
            "context_pins": {"scenario_id": "s", "run_id": "r", "manifest_fingerprint": "m", "parameter_hash": "p"},
            "replay_basis": copy.deepcopy(BASIS), "feature_groups": [{"group_name": "txn_velocity",
                                                                       "group_version": "1.0"}],
            "label_as_of_utc": "2026-01-10T00:00:00Z",
            "observation_scope": {"ts_from_utc": "2026-01-03T00:00:00Z", "ts_to_utc": "2026-01-04T00:00:00Z"}}


@pytest.mark.parametrize(("mutate", "valid"), [
    (lambda i: None, True),
    (lambda i: i.pop("observation_scope"), False),
    (lambda i: i.pop("label_as_of_utc"), False),
    (lambda i: i.update(intent_kind="train"), False),
    (lambda i: i.update(request_id="a/b"), False),
    (lambda i: i.update(request_id="r1\n"), False),
    (lambda i: i["replay_basis"]["watermark_basis"].update({"0": -1}), False),
    (lambda i: i["replay_basis"].update(stream_name="fp.bus.labels.v1"), False),
    (lambda i: i.update(replay_basis={"stream_name": "fp.bus.traffic.fraud.v1", "watermark_basis": {}}), False),
    (lambda i: i.update(label_as_of_utc="yesterday"), False),
    (lambda i: i.update(surprise=True), False),
    (lambda i: i.update(intent_kind="parity_rebuild") or i.pop("observation_scope"), True),
])
def test_build_intent_schema_agrees_with_parse_intent(mutate, valid):
    from featureplane.config import default_registry
    from featureplane.offline.intents import IntentRejected, parse_intent

    intent = _intent()
    mutate(intent)
    schema_ok = validator("build_intent.schema.json").is_valid(intent)
    try:
        parse_intent(intent, default_registry())
        code_ok = True
    except IntentRejected:
        code_ok = False
    assert (schema_ok, code_ok) == (valid, valid)
