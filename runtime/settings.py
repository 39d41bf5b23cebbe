"""Typed, layered configuration: profile file < environment overrides; secrets only from the env.

One dataclass per connection kind, chosen by a `Literal` field. A missing value names every
place that was looked at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from featureplane.config import CONFIG_DIR
from featureplane.pipelines.buckets import BucketSpec
from featureplane.pipelines.errors import ConfigError
from featureplane.runtime.secrets import Secret

PROFILE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True)
class EmbeddedPostgres:
    kind: Literal["embedded"]
    data_dir: Path
    settings: dict[str, str] = field(default_factory=dict)  # server settings chosen for this workload


@dataclass(frozen=True)
class DsnPostgres:
    kind: Literal["dsn"]
    dsn: Secret


@dataclass(frozen=True)
class LocalObjectStore:
    kind: Literal["local"]
    root: Path


@dataclass(frozen=True)
class AwsCredentials:
    access_key_id: Secret | None
    secret_access_key: Secret | None
    session_token: Secret | None


def _ambient_aws_credentials() -> bool:
    """Whether boto3 finds credentials of its own (profile, container or instance role)."""
    import boto3

    return boto3.session.Session().get_credentials() is not None


def boto3_client(service: str, region: str, endpoint_url: str | None, credentials: AwsCredentials) -> Any:
    """A boto3 client from explicit settings; the only place credentials are revealed to boto3."""
    import boto3  # heavy; only adapters that talk to AWS call this

    def reveal(secret: Secret | None) -> str | None:
        return secret.reveal() if secret else None

    if credentials.access_key_id is None and not _ambient_aws_credentials():
        raise ConfigError(
            "UNAVAILABLE",
            f"no AWS credentials for {service}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
            "AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE / an instance role")
    return boto3.client(
        service, region_name=region, endpoint_url=endpoint_url,
        aws_access_key_id=reveal(credentials.access_key_id),
        aws_secret_access_key=reveal(credentials.secret_access_key),
        aws_session_token=reveal(credentials.session_token),
    )


@dataclass(frozen=True)
class S3ObjectStore:
    kind: Literal["s3"]
    bucket: str
    prefix: str
    region: str
    endpoint_url: str | None
    credentials: AwsCredentials


@dataclass(frozen=True)
class EmbeddedBus:
    kind: Literal["embedded"]
    root: Path
    partitions: int


@dataclass(frozen=True)
class KinesisBus:
    kind: Literal["kinesis"]
    partitions: int
    region: str
    endpoint_url: str | None
    credentials: AwsCredentials


@dataclass(frozen=True)
class HealthThresholds:
    lag_records_amber: int = 10_000
    lag_records_red: int = 100_000
    watermark_age_seconds_amber: int = 300
    watermark_age_seconds_red: int = 1_800
    failure_rate_amber: float = 0.001
    failure_rate_red: float = 0.01
    stale_rate_amber: float = 0.5
    stale_rate_red: float = 0.9
    join_miss_rate_amber: float = 0.05
    join_miss_rate_red: float = 0.2


@dataclass(frozen=True)
class Settings:
    profile: str
    home: Path
    postgres: EmbeddedPostgres | DsnPostgres
    object_store: LocalObjectStore | S3ObjectStore
    bus: EmbeddedBus | KinesisBus
    batch_size: int = 5000
    health: HealthThresholds = field(default_factory=HealthThresholds)
    bucketed_groups: dict[tuple[str, str], BucketSpec] = field(default_factory=dict)  # (name, version) -> spec
    retention_us: int | None = None  # online state older than this (behind the applied watermark) is dropped


def _env_secret(name: str, env: dict[str, str]) -> Secret | None:
    value = env.get(name)
    return Secret(value) if value else None


def _aws_credentials(env: dict[str, str]) -> AwsCredentials:
    return AwsCredentials(
        access_key_id=_env_secret("AWS_ACCESS_KEY_ID", env),
        secret_access_key=_env_secret("AWS_SECRET_ACCESS_KEY", env),
        session_token=_env_secret("AWS_SESSION_TOKEN", env),
    )


def _require(section: dict[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise ConfigError("CONFIG_MISSING", f"'{key}' is missing from {where}")
    return section[key]


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read FP_PROFILE's YAML and apply environment overrides (FP_HOME, FP_PG_DSN, endpoints)."""
    env = dict(os.environ if env is None else env)
    profile = env.get("FP_PROFILE", "local")
    if not profile or not set(profile) <= PROFILE_NAME_CHARS:
        raise ConfigError("CONFIG_INVALID", "FP_PROFILE must be lower-case letters, digits, '_' or '-'")
    path = CONFIG_DIR / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError("CONFIG_MISSING", f"profile '{profile}' not found (looked at {path})")
    raw = yaml.safe_load(path.read_text()) or {}
    where = f"profile file {path}"
    home = Path(env.get("FP_HOME", "./.fp")).resolve()

    pg = _require(raw, "postgres", where)
    dsn = env.get("FP_PG_DSN")
    postgres: EmbeddedPostgres | DsnPostgres
    if dsn:
        postgres = DsnPostgres("dsn", Secret(dsn))
    elif pg.get("kind") == "embedded":
        postgres = EmbeddedPostgres("embedded", home / "pg",
                                    {str(k): str(v) for k, v in (pg.get("settings") or {}).items()})
    else:
        dsn_env = pg.get("dsn_env", "FP_PG_DSN")
        raise ConfigError(
            "CONFIG_MISSING",
            f"profile '{profile}' needs a Postgres DSN: looked at environment variable {dsn_env}",
        )

    store_raw = _require(raw, "object_store", where)
    object_store: LocalObjectStore | S3ObjectStore
    if store_raw.get("kind") == "local":
        object_store = LocalObjectStore("local", Path(store_raw.get("root") or home / "lake"))
    elif store_raw.get("kind") == "s3":
        bucket = env.get(store_raw.get("bucket_env", "FP_S3_BUCKET")) or store_raw.get("bucket")
        if not bucket:
            raise ConfigError("CONFIG_MISSING", f"no S3 bucket: looked at FP_S3_BUCKET and {where}")
        object_store = S3ObjectStore(
            "s3",
            bucket=bucket,
            prefix=str(store_raw.get("prefix", "")).strip("/"),
            region=env.get("AWS_DEFAULT_REGION", store_raw.get("region", "us-east-1")),
            endpoint_url=env.get(store_raw.get("endpoint_url_env", "FP_S3_ENDPOINT_URL")),
            credentials=_aws_credentials(env),
        )
    else:
        raise ConfigError("CONFIG_INVALID", f"object_store.kind must be 'local' or 's3' in {where}")

    bus_raw = _require(raw, "bus", where)
    partitions = int(bus_raw.get("partitions", 4))
    if not 1 <= partitions <= 256:
        raise ConfigError("CONFIG_INVALID", f"bus.partitions must be 1..256 in {where}")
    bus: EmbeddedBus | KinesisBus
    if bus_raw.get("kind") == "embedded":
        bus = EmbeddedBus("embedded", home / "bus", partitions)
    elif bus_raw.get("kind") == "kinesis":
        bus = KinesisBus(
            "kinesis",
            partitions=partitions,
            region=env.get("AWS_DEFAULT_REGION", bus_raw.get("region", "us-east-1")),
            endpoint_url=env.get(bus_raw.get("endpoint_url_env", "FP_KINESIS_ENDPOINT_URL")),
            credentials=_aws_credentials(env),
        )
    else:
        raise ConfigError("CONFIG_INVALID", f"bus.kind must be 'embedded' or 'kinesis' in {where}")

    health = HealthThresholds(**(raw.get("health") or {}))
    batch_size = int((raw.get("worker") or {}).get("batch_size", 5000))
    bucketed: dict[tuple[str, str], BucketSpec] = {}
    for ref, value in ((raw.get("serving") or {}).get("bucketed_groups") or {}).items():
        name, _, version = str(ref).partition("@")
        spec = _bucket_spec(value)
        if not version or spec is None:
            raise ConfigError("CONFIG_INVALID", "serving.bucketed_groups takes name@version: seconds, or name@version: "
                                                f"{{width: seconds, fine: seconds dividing it}} in {where}")
        bucketed[(name, version)] = spec
    days = (raw.get("worker") or {}).get("retention_days")
    if days is not None and (not isinstance(days, int) or days < 7):
        raise ConfigError("CONFIG_INVALID", f"worker.retention_days must be a whole number of days >= 7 in {where}")
    return Settings(profile, home, postgres, object_store, bus, batch_size, health, bucketed,
                    None if days is None else days * 86_400_000_000)


def _bucket_spec(value: object) -> BucketSpec | None:
    """A profile's bucket spec: a width in seconds, or {width: s, fine: s}; None when malformed."""
    width, fine = (value.get("width"), value.get("fine")) if isinstance(value, dict) else (value, None)
    if not isinstance(width, int) or isinstance(width, bool) or (
            fine is not None and (not isinstance(fine, int) or isinstance(fine, bool))):
        return None
    if isinstance(value, dict) and set(value) - {"width", "fine"}:
        return None
    try:
        return BucketSpec(width * 1_000_000, None if fine is None else fine * 1_000_000)
    except ValueError:
        return None
