"""Storage for the lakes: the object store (local or S3), Delta tables and the duckdb query layer."""
