import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from featureplane.pipelines.errors import ConfigError
from featureplane.runtime.migrations import discover, migrate
from featureplane.runtime.secrets import Secret
from featureplane.runtime.settings import load_settings

REPO = Path(__file__).resolve().parent.parent


def test_migrate_is_idempotent_and_safe_concurrently(empty_db):
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(empty_db)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert migrate(empty_db) == []
    with empty_db.transaction() as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in discover()]


def test_secret_never_prints():
    secret = Secret("postgresql://u:hunter2@h/db")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"


def test_parity_profile_without_dsn_names_where_it_looked():
    with pytest.raises(ConfigError) as info:
        load_settings({"FP_PROFILE": "parity", "FP_HOME": "/tmp/x"})
    assert "FP_PG_DSN" in info.value.message


def test_sentinel_password_never_reaches_output_or_artifacts(tmp_path):
    sentinel = "S3ntinel-Pa55-7d1e"
    home = tmp_path / "home"
    env = {"PATH": "/usr/bin:/bin", "FP_HOME": str(home), "FP_PROFILE": "parity",
           "FP_PG_DSN": f"postgresql://fp:{sentinel}@127.0.0.1:9/fp?connect_timeout=1",
           "FP_S3_ENDPOINT_URL": "http://127.0.0.1:9", "FP_KINESIS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "AKIA" + sentinel, "AWS_SECRET_ACCESS_KEY": sentinel, "AWS_DEFAULT_REGION": "us-east-1"}
    outputs = []
    for argv in (["init"], ["health"], ["get-features", "--request", "-"]):
        proc = subprocess.run([sys.executable, "-m", "featureplane.runtime.cli", *argv], input="{}",
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, argv
        body = json.loads(proc.stdout)  # errors are JSON a program can read
        if argv == ["health"]:  # RED, naming the unreachable dependency
            assert body["status"] == "RED" and body["components"]["ofp_worker"]["error"] == "UNAVAILABLE"
        else:  # the error_response shape, retryable: a dependency is down
            assert (body["kind"], body["error_code"], body["retryable"]) == ("error_response", "UNAVAILABLE", True)
    joined = "\n".join(outputs)
    assert sentinel not in joined
    for path in home.rglob("*") if home.exists() else []:
        if path.is_file():
            assert sentinel.encode() not in path.read_bytes()
