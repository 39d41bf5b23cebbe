"""Pure core shared by the online and offline paths: no IO, only polars and plain data."""
