"""Offline feature plane: build intents, run ledger, archive replay, datasets + manifests, parity."""
