"""Profiles and versioned feature group definitions (data, packaged with the code)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
