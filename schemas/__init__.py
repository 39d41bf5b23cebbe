"""Data contracts: JSON Schemas for the boundary objects, pure validators, pandera frame models."""
