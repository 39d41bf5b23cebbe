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
