"""Profiles and versioned feature group definitions (data, packaged with the code)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featureplane.pipelines.registry import Registry

CONFIG_DIR = Path(__file__).resolve().parent
GROUPS_DIR = CONFIG_DIR / "feature_groups"
LOCK_FILE = GROUPS_DIR / "registry.lock.json"


def read_group_files(directory: Path = GROUPS_DIR) -> list[dict]:
    import yaml

    return [yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml"))]


def load_registry(directory: Path = GROUPS_DIR, lock_file: Path | None = None) -> Registry:
    """Load every group definition and check it against the lock of published digests."""
    from featureplane.pipelines.registry import build_registry

    lock_path = lock_file or directory / "registry.lock.json"
    lock = json.loads(lock_path.read_text()) if lock_path.exists() else {}
    return build_registry(read_group_files(directory), lock)


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    return load_registry()
