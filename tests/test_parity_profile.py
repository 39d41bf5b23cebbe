"""The parity profile's `fp init` provisions what it needs (SPEC §8: idempotent), and missing
credentials are a JSON error naming the variables, never a traceback."""

from __future__ import annotations

import json
import os
import uuid

from tests.helpers import run_fp


def _parity_env(moto_endpoint: str, bucket: str) -> dict[str, str]:
    return {"FP_PROFILE": "parity", "FP_S3_ENDPOINT_URL": moto_endpoint, "FP_KINESIS_ENDPOINT_URL": moto_endpoint,
            "FP_S3_BUCKET": bucket, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


def test_init_creates_the_bucket_and_streams_idempotently(app, fp_home, moto_endpoint):
    import boto3

    bucket = f"fp-{uuid.uuid4().hex[:12]}"
    env = _parity_env(moto_endpoint, bucket)
    for _ in range(2):
        code, out, err = run_fp(app, fp_home, "init", env=env)
        assert code == 0, err
        done = json.loads(out)
        assert done["profile"] == "parity" and done["object_store"] == f"s3://{bucket}/fp"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.head_bucket(Bucket=bucket)  # raises when missing
    kinesis = boto3.client("kinesis", endpoint_url=moto_endpoint, region_name="us-east-1")
    names = set(kinesis.list_streams()["StreamNames"])
    assert set(done["streams"]) <= names


def test_missing_credentials_name_the_variables(app, fp_home, moto_endpoint, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    env = {k: v for k, v in _parity_env(moto_endpoint, "fp-nocreds").items() if not k.startswith("AWS_")}
    env.update({"AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"})
    code, out, err = run_fp(app, fp_home, "init", env=env)
    assert code == 2 and "Traceback" not in err
    body = json.loads(out)
    assert (body["kind"], body["error_code"]) == ("error_response", "UNAVAILABLE")
    assert "AWS_ACCESS_KEY_ID" in body["message"] and "AWS_SECRET_ACCESS_KEY" in body["message"]


def _fresh_kinesis(endpoint: str) -> None:
    """Delete the streams earlier tests left on this moto server (stream names are fixed)."""
    import contextlib

    import boto3

    from featureplane.schemas.streams import STREAMS

    client = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    for stream in STREAMS:
        with contextlib.suppress(client.exceptions.ResourceNotFoundException):
            client.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


def _is_sequence_number(value: object) -> bool:
    return isinstance(value, str) and len(value) == 56 and value.isdigit()


def test_the_whole_loop_on_kinesis_and_s3_with_real_sequence_numbers(app, fp_home, realistic_moto_endpoint):
    """publish -> health sees the lag -> workers -> serve -> snapshot get -> dataset -> parity -> sql ->
    health, in the parity profile, on 56-digit Kinesis sequence numbers (SPEC §5: decimal strings)."""
    from featureplane.pipelines.snapshot import snapshot_hash
    from featureplane.runtime.simulate import SimulationPlan, request_mix
    from featureplane.schemas.streams import TRAFFIC

    _fresh_kinesis(realistic_moto_endpoint)
    env = _parity_env(realistic_moto_endpoint, f"fp-{uuid.uuid4().hex[:12]}")
    code, out, err = run_fp(app, fp_home, "init", env=env)
    assert code == 0, err
    code, out, err = run_fp(app, fp_home, "simulate", "--transactions", "150", "--seed", "21", "--quiet", env=env)
    assert code == 0, err

    code, out, err = run_fp(app, fp_home, "health", env=env)  # published, not yet consumed
    waiting = json.loads(out)["components"]["ofp_worker"]
    assert code in (1, 2) and waiting["status"] != "GREEN", waiting
    assert waiting["lag_records_total"] >= 150
    assert any(p["millis_behind_latest"] is not None and p["lag_records"] > 0 for p in waiting["partitions"].values())

    code, out, err = run_fp(app, fp_home, "worker", "--until-idle", "--timeout", "120", env=env)
    assert code == 0, err
    summary = json.loads(err.strip().splitlines()[-1])  # the worker reports on stderr
    assert all(_is_sequence_number(o) for o in summary["ofp"]["per_partition"].values())

    plan = SimulationPlan(seed=21, transactions=150)
    requests = request_mix(plan, 5, seed=1)
    request_file = fp_home / "requests.jsonl"
    request_file.write_text("".join(json.dumps(r) + "\n" for r in requests))
    code, out, err = run_fp(app, fp_home, "get-features", "--request", str(request_file), env=env)
    assert code == 0, err
    responses = [json.loads(line) for line in out.splitlines()]
    assert [r["kind"] for r in responses] == ["get_features_response"] * 5
    basis = responses[0]["provenance"]["input_basis"]
    assert basis["stream_name"] == TRAFFIC
    assert all(_is_sequence_number(o) for o in basis["watermark_basis"].values()), basis
    for response in responses:
        assert snapshot_hash(response) == response["snapshot"]["feature_snapshot_hash"]

    digest = responses[0]["snapshot"]["feature_snapshot_hash"]
    code, out, err = run_fp(app, fp_home, "snapshot", "get", digest, env=env)
    assert code == 0, err
    assert json.loads(out) == responses[0]

    intent = {"request_id": "kinesis_e2e", "intent_kind": "dataset_build", "context_pins": plan.pins(),
              "replay_basis": basis, "feature_groups": [{"group_name": "txn_velocity", "group_version": "2.0"}],
              "label_as_of_utc": "2026-01-10T00:00:00Z",
              "observation_scope": {"ts_from_utc": plan.start_utc, "ts_to_utc": "2026-02-01T00:00:00Z"}}
    code, out, err = run_fp(app, fp_home, "ofs", "build", "--intent", "-", stdin=json.dumps(intent).encode(), env=env)
    assert code == 0, err
    manifest = json.loads(out)
    summary = json.loads(err[err.index("{"):])  # the progress bar's closing summary, on stderr
    assert summary["job"] == "dataset build" and summary["rows"] == manifest["row_count"] > 0
    assert summary["rows_per_s"] > 0 and summary["peak_rss_mb"] > 0
    assert manifest["row_count"] > 0 and manifest["identity"]["replay_basis"] == basis
    assert all(_is_sequence_number(o) for o in manifest["identity"]["label_basis"]["watermark_basis"].values())

    code, out, err = run_fp(app, fp_home, "parity", env=env)
    assert code == 0, err
    parity = json.loads(out)
    assert parity["checked"] == parity["matched"] >= 5 and parity["mismatched"] == 0
    assert json.loads(err[err.index("{"):])["snapshots"] == parity["checked"]

    code, out, err = run_fp(app, fp_home, "sql", "SELECT max(length(\"offset\")) AS digits, count(*) AS n "
                                                 "FROM archive_traffic", env=env)
    assert code == 0, err
    digits, count = json.loads(out)["rows"][0]
    assert digits == 56 and count >= 150

    code, out, err = run_fp(app, fp_home, "health", env=env)
    caught_up = json.loads(out)["components"]
    assert caught_up["ofp_worker"]["lag_records_total"] == 0 and caught_up["archive"]["status"] == "GREEN"
    assert code in (0, 1), out  # AMBER is allowed: the simulation's own rejects are recent failures


def test_three_worker_processes_on_kinesis_agree_with_one(pg_server, tmp_path, realistic_moto_endpoint):
    """Scale-out on the Kinesis bus: three `fp worker` processes share every stream's shards and
    converge on exactly what one in-process worker applies from the same records."""
    from featureplane.runtime.workers import run_workers
    from tests.conftest import fresh_database
    from tests.faults import driver

    _fresh_kinesis(realistic_moto_endpoint)
    one_env = _parity_env(realistic_moto_endpoint, f"fp-{uuid.uuid4().hex[:12]}")
    many_env = _parity_env(realistic_moto_endpoint, f"fp-{uuid.uuid4().hex[:12]}")
    one = driver.make_app(fresh_database(pg_server).dsn.reveal(), tmp_path / "one", one_env)
    plan = driver.publish_run(one, 23, 300)
    many = driver.make_app(fresh_database(pg_server).dsn.reveal(), tmp_path / "many", many_env)
    run_workers(one, until_idle=True)
    workers = [driver.start_worker(many, **many_env) for _ in range(3)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [e.decode()[-500:] for _, e in outputs]
    assert driver.state_digest(many) == driver.state_digest(one)
    assert driver.archive_positions(many) == driver.archive_positions(one)
    hashes = driver.served_hashes(many, plan, 20)
    assert hashes == driver.served_hashes(one, plan, 20) and len(set(hashes)) > 1


def test_an_unreachable_endpoint_names_its_variable(app, fp_home):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**_parity_env(dead, "fp-unreachable")}
    code, out, err = run_fp(app, fp_home, "init", env=env)
    body = json.loads(out)
    assert code == 2 and "Traceback" not in err
    assert (body["error_code"], body["retryable"]) == ("UNAVAILABLE", True)
    assert "FP_KINESIS_ENDPOINT_URL" in body["message"], body
