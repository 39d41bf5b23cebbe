"""The JSON Schema contracts and the fast validators agree on the same examples."""

import copy
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from runtime.errors import RejectedEvent
from schemas.envelope import normalize_event
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


@pytest.mark.parametrize("mutate", [
    lambda e: None,
    lambda e: e.update(schema_version="v2"),
    lambda e: e.pop("seed"),
    lambda e: e.update(seed=-1),
    lambda e: e.update(event_id="has space"),
    lambda e: e["context_pins"].update(run_id=".."),
    lambda e: e.update(ts_utc="2026-01-03 12:00"),
    lambda e: e.update(extra=1),
])
def test_envelope_schema_agrees_with_validator(mutate):
    event = copy.deepcopy(txn(1, T0))
    mutate(event)
    schema_ok = validator("envelope.schema.json").is_valid(event)
    try:
        normalize_event(event)
        code_ok = True
    except RejectedEvent:
        code_ok = False
    assert schema_ok == code_ok


def test_request_and_error_examples_match_their_schemas():
    assert validator("get_features_request.schema.json").is_valid(
        request([("account", "a1")], [("txn_velocity", "1.0")], T0))
    from pipelines.snapshot import error_response

    assert validator("error_response.schema.json").is_valid(error_response("NOT_FOUND", "x", False, None))
