"""The object store port: put/get bytes by key, on a local directory or S3.

Keys are validated before they become paths or S3 keys: only `[A-Za-z0-9._=:-]` segments joined
by `/`, never `.` or `..`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from featureplane.pipelines.errors import TerminalError, Unavailable
from featureplane.runtime.settings import LocalObjectStore, S3ObjectStore, boto3_client

SEGMENT = re.compile(r"^[A-Za-z0-9._=:-]{1,200}$")


def check_key(key: str) -> str:
    parts = key.split("/")
    if not parts or any(p in (".", "..") or not SEGMENT.fullmatch(p) for p in parts):
        raise TerminalError("INVALID_OBJECT_KEY", f"object key {key[:200]!r} is not allowed")
    return key


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> str: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def uri(self, key: str) -> str: ...

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix` (a folder ending in '/'), sorted."""
        ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def uri(self, key: str) -> str:
        return str(self.root / check_key(key))

    def put(self, key: str, data: bytes) -> str:
        """Atomic write: a temp file in the same directory, fsynced, then renamed into place."""
        path = self.root / check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.uri(key)

    def get(self, key: str) -> bytes:
        try:
            return (self.root / check_key(key)).read_bytes()
        except FileNotFoundError:
            raise TerminalError("OBJECT_NOT_FOUND", f"no object at {key}") from None

    def exists(self, key: str) -> bool:
        return (self.root / check_key(key)).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / check_key(prefix.rstrip("/"))
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(".tmp-"))


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.uri(key)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise TerminalError("OBJECT_NOT_FOUND", f"no object at {key}") from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except self.client.exceptions.ClientError:
            return False

    def list(self, prefix: str) -> list[str]:
        root = self._key(prefix.rstrip("/")) + "/"
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in keys)


def s3_client(settings: S3ObjectStore) -> Any:
    return boto3_client("s3", settings.region, settings.endpoint_url, settings.credentials)


def open_store(settings: LocalObjectStore | S3ObjectStore) -> ObjectStore:
    if isinstance(settings, LocalObjectStore):
        return LocalStore(settings.root)
    from botocore.exceptions import BotoCoreError

    client = s3_client(settings)
    try:
        try:
            client.head_bucket(Bucket=settings.bucket)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=settings.bucket)
    except BotoCoreError as exc:
        raise Unavailable(f"s3 is unreachable ({type(exc).__name__}): check FP_S3_ENDPOINT_URL (unset for AWS) "
                          "and AWS_DEFAULT_REGION") from None
    return S3Store(client, settings.bucket, settings.prefix)
