"""Benchmarks: each script prints JSON figures (not part of the test suite)."""
