"""Delta Lake tables on the profile's object store (a local directory or s3://), by name.

Table names are validated like object keys. Progress markers (how far a writer got) are
stored in the custom metadata of the commit that carries the data, so the data and the
marker become visible in one atomic step: nothing else has to agree with the table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from featureplane.lake.object_store import check_key
from featureplane.runtime.settings import LocalObjectStore, S3ObjectStore

HISTORY_SCAN = 1000  # commits looked back to find the latest progress marker


@dataclass(frozen=True)
class DeltaLake:
    root_uri: str
    storage_options: dict[str, str] | None = field(default=None, repr=False)  # may hold credentials

    def uri(self, name: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{check_key(name)}"

    def table(self, name: str) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(name), storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def append(self, name: str, data: pa.Table | pa.RecordBatchReader, marker: dict[str, Any] | None = None,
               marker_key: str = "fp.progress") -> None:
        """Append rows; `marker` (JSON-able) is committed in the same Delta commit."""
        metadata = {marker_key: json.dumps(marker, sort_keys=True)} if marker is not None else None
        write_deltalake(self.uri(name), data, mode="append", storage_options=self.storage_options,
                        commit_properties=CommitProperties(custom_metadata=metadata) if metadata else None)

    def replace(self, name: str, data: pa.RecordBatchReader, marker: dict[str, Any] | None,
                marker_key: str = "fp.progress") -> None:
        """Replace a table's rows and schema in one commit (readers see the old version or the new one),
        carrying `marker` over in that commit."""
        metadata = {marker_key: json.dumps(marker, sort_keys=True)} if marker is not None else None
        write_deltalake(self.uri(name), data, mode="overwrite", schema_mode="overwrite",
                        storage_options=self.storage_options,
                        commit_properties=CommitProperties(custom_metadata=metadata) if metadata else None)

    def marker(self, name: str, marker_key: str = "fp.progress") -> tuple[int, Any] | None:
        """(version, marker) of the newest commit that carries `marker_key`, or None."""
        table = self.table(name)
        return None if table is None else marker_of(table, marker_key)

    def read(self, name: str, columns: list[str] | None = None, filter_expr: Any = None) -> pa.Table | None:
        table = self.table(name)
        if table is None:
            return None
        return table.to_pyarrow_dataset().to_table(columns=columns, filter=filter_expr)


def marker_of(table: DeltaTable, marker_key: str = "fp.progress") -> tuple[int, Any] | None:
    """(version, marker) of the newest commit of an opened table that carries `marker_key`, or None."""
    for entry in table.history(limit=HISTORY_SCAN):
        if marker_key in entry:
            return int(entry["version"]), json.loads(entry[marker_key])
    return None


def open_lake(settings: LocalObjectStore | S3ObjectStore) -> DeltaLake:
    """The Delta root beside the object store's objects: `<root>/delta`."""
    if isinstance(settings, LocalObjectStore):
        settings.root.mkdir(parents=True, exist_ok=True)
        return DeltaLake(str(settings.root / "delta"))
    prefix = f"{settings.prefix}/delta" if settings.prefix else "delta"
    options = {"AWS_REGION": settings.region, "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    if settings.endpoint_url:
        options["AWS_ENDPOINT_URL"] = settings.endpoint_url
        options["AWS_ALLOW_HTTP"] = "true" if settings.endpoint_url.startswith("http://") else "false"
    creds = settings.credentials
    for key, secret in (("AWS_ACCESS_KEY_ID", creds.access_key_id), ("AWS_SECRET_ACCESS_KEY", creds.secret_access_key),
                        ("AWS_SESSION_TOKEN", creds.session_token)):
        if secret is not None:
            options[key] = secret.reveal()
    return DeltaLake(f"s3://{settings.bucket}/{prefix}", options)
